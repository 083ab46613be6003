"""Every file shmhpc writes follows one rule (shmhpc/outputs.py): checked before any work, only
regular files replaced (never devices, FIFOs, sockets, links), atomic, umask-following, and a
result that cannot be saved is a failed run that still hands its data over."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mounted_tmpfs, run_cli, small_spec

from shmhpc.outputs import OutputError, check_output, write_text

# -- the rule, as a function ------------------------------------------------------------------------


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _socket(p: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()
    return p


def _link_to_file(p: Path) -> Path:
    (p.parent / "precious.txt").write_text("keep me\n")
    p.symlink_to(p.parent / "precious.txt")
    return p


def _dangling_link(p: Path) -> Path:
    p.symlink_to(p.parent / "nowhere.json")
    return p


def _directory(p: Path) -> Path:
    p.mkdir()
    return p


NOT_REGULAR = {
    "character device": lambda p: Path("/dev/null"),
    "FIFO": _fifo,
    "socket": _socket,
    "symbolic link": _link_to_file,
    "dangling symbolic link": _dangling_link,
    "directory": _directory,
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_only_regular_files_are_ever_replaced(tmp_path, kind, overwrite):
    target = NOT_REGULAR[kind](tmp_path / "out.json")
    before = os.lstat(target)
    with pytest.raises(OutputError) as err:
        check_output(target, what="report", overwrite=overwrite)
    (msg,) = err.value.messages
    assert msg.startswith("report: ") and "not a regular file" in msg and "\n" not in msg
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    if kind == "symbolic link":
        assert (tmp_path / "precious.txt").read_text() == "keep me\n"


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    old = tmp_path / "r.json"
    old.write_text("old")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_output(old, what="report")
    out = check_output(old, what="report", overwrite=True)
    assert write_text(out, "new") == old and old.read_text() == "new"


def test_parents_are_created_only_on_purpose(tmp_path):
    target = tmp_path / "a" / "b" / "plot.png"
    with pytest.raises(OutputError, match=r"the folder .* does not exist; create it first"):
        check_output(target, what="-o")
    assert not (tmp_path / "a").exists()
    check_output(target, what="report", make_parents=True)
    assert (tmp_path / "a" / "b").is_dir()


def test_a_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for make_parents in (False, True):
        with pytest.raises(OutputError, match="is not a folder"):
            check_output(tmp_path / "file" / "sub" / "r.json", what="report", make_parents=make_parents)


def test_a_name_that_turns_into_a_fifo_while_running_is_not_replaced(tmp_path):
    target = tmp_path / "r.json"
    out = check_output(target, what="report", overwrite=True)
    os.mkfifo(target)  # appeared between the check and the write
    with pytest.raises(OutputError, match="became a FIFO"):
        write_text(out, "{}")
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_a_file_written_by_someone_else_meanwhile_is_kept(tmp_path):
    target = tmp_path / "r.json"
    out = check_output(target, what="report")
    target.write_text("theirs")
    written = write_text(out, "ours")
    assert target.read_text() == "theirs" and written == tmp_path / f"r.{os.getpid()}.json"
    assert written.read_text() == "ours"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        p = write_text(check_output(tmp_path / "r.json", what="report"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~umask


# -- through the commands -----------------------------------------------------------------------------


def _no_run_started(out: subprocess.CompletedProcess) -> bool:
    return "starting" not in out.stderr and "loading" not in out.stderr


def test_run_report_dev_null_force_is_refused_before_any_work(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    before = os.stat("/dev/null")
    out = run_cli("run", str(spec), "--report", "/dev/null", "--force", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "error: report: '/dev/null' is a character device, not a regular file" in out.stderr
    assert _no_run_started(out) and "Traceback" not in out.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.parametrize("kind", ["FIFO", "symbolic link", "socket"])
def test_run_report_onto_special_files_is_refused_with_force(tmp_path, kind, no_leak):
    spec = small_spec(tmp_path)
    target = NOT_REGULAR[kind](tmp_path / "r.json")
    out = run_cli("run", str(spec), "--report", str(target), "--force", cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and f"is a {kind}, not a regular file" in out.stderr, out.stderr
    assert _no_run_started(out)
    assert not (tmp_path / "reports").exists()


def test_run_report_under_a_file_is_refused(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    (tmp_path / "blocker").write_text("")
    out = run_cli("run", str(spec), "--report", str(tmp_path / "blocker" / "r.json"), cwd=tmp_path)
    assert out.returncode == 2 and "is not a folder" in out.stderr and _no_run_started(out), out.stderr


def test_run_report_on_a_read_only_mount_is_refused_before_any_work(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        out = run_cli("run", str(spec), "--report", str(ro / "r.json"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "error: report: cannot write in" in out.stderr and "Read-only file system" in out.stderr
    assert _no_run_started(out)


def _fill(mnt: Path) -> None:
    """Fill a tmpfs to the last byte (the directory stays listable)."""
    with open(mnt / "ballast", "wb", buffering=0) as f:
        for block in (65536, 1):
            try:
                while f.write(b"\0" * block):
                    pass
            except OSError:
                pass


def test_a_report_that_cannot_be_saved_fails_the_run_and_goes_to_stderr(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    with mounted_tmpfs(tmp_path / "full", "size=256k") as full:
        _fill(full)
        out = run_cli("run", str(spec), "--report", str(full / "r.json"), cwd=tmp_path)
        assert sorted(p.name for p in full.iterdir()) == ["ballast"]
    assert out.returncode == 1, out.stderr
    assert "report: NOT SAVED" in out.stdout and "No space left on device" in out.stdout
    _, _, tail = out.stderr.partition("the report could not be saved; here it is:\n")
    rep = json.loads(tail[: tail.index("\n}\n") + 2])
    assert rep["status"] == "failed" and rep["exit_code"] == 1 and rep["report_path"] is None
    assert "No space left on device" in rep["report_error"]
    assert rep["result"]["verified"] is True  # the numbers are all there
    assert out.stderr.count("No space left on device") >= 2  # in the JSON and on the error line


def test_report_dash_is_stdout(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    out = run_cli("run", str(spec), "--report", "-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
    assert "repeat: median" in out.stderr  # the summary went to stderr
    assert not (tmp_path / "reports").exists() and not (tmp_path / "-").exists()


@pytest.mark.parametrize("umask", ["022", "077"])
def test_run_reports_follow_the_umask(tmp_path, umask, no_leak):
    spec = small_spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SHMHPC_SYSFS_ROOT"}
    subprocess.run(
        ["sh", "-c", f'umask {umask} && exec "$0" -m shmhpc run "$1" -q', sys.executable, str(spec)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    mode = stat.S_IMODE(os.stat(tmp_path / "reports" / "t.json").st_mode)
    assert mode == 0o666 & ~int(umask, 8)


def test_sweep_out_checked_before_any_run(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = run_cli("sweep", str(spec), "--vary", "repeats=1,2", "--out", str(tmp_path / "afile"), cwd=tmp_path)
    assert out.returncode == 2 and "error: --out: " in out.stderr and "is a file, not a folder" in out.stderr
    assert "Traceback" not in out.stderr and "[sweep" not in out.stderr
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        out = run_cli("sweep", str(spec), "--vary", "repeats=1,2", "--out", str(ro / "s"), cwd=tmp_path)
    assert out.returncode == 2 and "Read-only file system" in out.stderr and "Traceback" not in out.stderr


def test_sweep_on_a_full_filesystem_fails_and_lists_nothing_unwritten(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    with mounted_tmpfs(tmp_path / "full", "size=256k") as full:
        (full / "s").mkdir()
        _fill(full)
        out = run_cli("sweep", str(spec), "--vary", "repeats=1,2", "--out", str(full / "s"), cwd=tmp_path)
        left = sorted(p.name for p in (full / "s").iterdir())
    assert out.returncode == 1, out.stderr
    assert "error: --out: could not write the summary" in out.stderr and "Traceback" not in out.stderr
    summary = json.loads(out.stderr[out.stderr.index("{") :])
    assert [r["report"] for r in summary["runs"]] == [None, None]
    assert all(r["status"] == "failed" and "No space left" in r["reason"] for r in summary["runs"])
    assert left == []


def test_plot_output_folder_must_exist_and_special_files_are_refused(tmp_path):
    pytest.importorskip("matplotlib")
    spec = small_spec(tmp_path)
    assert run_cli("run", str(spec), "-q", cwd=tmp_path).returncode == 0
    rep = str(tmp_path / "reports" / "t.json")
    out = run_cli("plot", rep, "-o", str(tmp_path / "missing" / "p.png"), cwd=tmp_path)
    assert out.returncode == 2 and "the folder" in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "missing").exists()
    fifo = _fifo(tmp_path / "p.png")
    out = run_cli("plot", rep, "-o", str(fifo), cwd=tmp_path, timeout=30)
    assert out.returncode == 2 and "is a FIFO, not a regular file" in out.stderr
    fifo.unlink()
    assert run_cli("plot", rep, "-o", str(tmp_path / "p.png"), cwd=tmp_path).returncode == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_slurm_render_output_dir_never_writes_through_a_link(tmp_path):
    spec = small_spec(tmp_path)
    out_dir = tmp_path / "scripts"
    out_dir.mkdir()
    (tmp_path / "precious").write_text("keep\n")
    (out_dir / "t-pinned.sbatch").symlink_to(tmp_path / "precious")
    out = run_cli("slurm", "render", str(spec), "--cpus-per-task", "2", "-o", str(out_dir), cwd=tmp_path)
    assert out.returncode == 2 and "is a symbolic link, not a regular file" in out.stderr, out.stderr
    assert (tmp_path / "precious").read_text() == "keep\n"


def test_the_current_folder_is_a_folder_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output(".", what="slurm.log_dir", folder=True).path == Path(".")
    with pytest.raises(OutputError, match="is not a file name"):
        check_output(".", what="report")
