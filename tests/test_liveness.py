"""The stale-segment sweep judges liveness by the launcher's lock, not by whether it can see the owner's pid.

A launcher in another PID namespace (a container sharing /dev/shm) has a pid the sweep cannot see; these
tests make one (a segment named after a pid that does not exist here, locked by a live process), run a real
``shmhpc clean`` from a new PID namespace while a run is in progress, and check what is left alone and listed.
Each runs in its own directory under /dev/shm (a tmpfs, like the real thing), out of other sweeps' way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import run_cli, small_spec, start_cli

from shmhpc import shm
from shmhpc.shm import check_segments, find_stale

INVISIBLE = 2**22 - 1  # the largest pid Linux allows, in use nowhere here: like a container launcher's pid
# holds LOCK_SH on argv[1] until its stdin closes
HOLD = (
    "import fcntl, os, sys\n"
    "fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_SH)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def shm_dir():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = Path(tempfile.mkdtemp(prefix="test-liveness-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fake(d: Path, pid: int, size: int = 4096) -> Path:
    path = d / f"shmhpc-u{os.getuid()}-p{pid}-j0-{os.urandom(8).hex()}"
    path.write_bytes(b"\0" * size)
    return path


def _clean(d: Path, *extra: str) -> str:
    out = run_cli("clean", "--shm-dir", str(d), *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _left_line(stdout: str, path: Path) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(f"left alone: {path} ")]
    assert len(lines) == 1, stdout
    return lines[0]


def test_a_locked_segment_is_in_use_whatever_its_pid(shm_dir):
    """The container case: the pid in the name is nobody here, but a live process holds the lock."""
    assert not psutil.pid_exists(INVISIBLE)
    seg = _fake(shm_dir, INVISIBLE)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(seg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        for extra in (("--dry-run",), ()):
            out = _clean(shm_dir, *extra)
            assert seg.exists(), "a locked segment is never removed"
            assert "in use" in _left_line(out, seg)
            assert "no stale shmhpc segments" in out
    finally:
        holder.communicate(b"", timeout=30)
    # the holder is gone: nobody holds the lock and pid INVISIBLE is not running here
    out = _clean(shm_dir)
    assert not seg.exists()
    assert f"removed {seg} " in out and "left alone" not in out


def test_a_young_empty_unlocked_segment_with_invisible_owner_is_left_alone_and_listed(shm_dir, monkeypatch):
    """Its creator (in another namespace) may be between open and flock: leave it, say why; once old, stale."""
    seg = _fake(shm_dir, INVISIBLE, size=0)
    out = _clean(shm_dir)
    assert seg.exists()
    assert f"owner pid {INVISIBLE} may still be creating it" in _left_line(out, seg)
    monkeypatch.setattr(shm, "CREATING_GRACE_S", 0.0)
    assert [s.path for s in find_stale(str(shm_dir))] == [str(seg)]


def test_an_unlocked_segment_of_a_running_owner_is_left_alone_and_listed(shm_dir):
    """A launcher of an older shmhpc takes no lock: its visible, running pid keeps the segment."""
    seg = _fake(shm_dir, os.getpid())
    out = _clean(shm_dir, "--dry-run")
    assert seg.exists()
    assert f"owner pid {os.getpid()} is running" in _left_line(out, seg)


def test_a_dead_owners_unlocked_segment_is_stale(shm_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    seg = _fake(shm_dir, int(dead.stdout))
    [check] = check_segments(str(shm_dir))
    assert check.path == str(seg) and check.stale and "nobody holds its lock" in check.reason


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


def test_clean_never_removes_a_running_launchers_segment_even_from_another_pid_namespace(tmp_path, shm_dir):
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=100, chunks_per_worker=1)
    proc = start_cli("run", str(spec), cwd=tmp_path, env={"SHMHPC_SHM_DIR": str(shm_dir)}, stderr=tmp_path / "err")
    try:
        deadline = time.monotonic() + 60
        while not [p for p in shm_dir.iterdir() if p.stat().st_size] and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no segment"
            time.sleep(0.05)
        [seg] = list(shm_dir.iterdir())
        assert f"-p{proc.pid}-" in seg.name
        assert "in use" in _left_line(_clean(shm_dir), seg)
        if _unshare_works():  # as in a container: the launcher's pid does not exist there
            clean = [sys.executable, "-m", "shmhpc", "clean", "--shm-dir", str(shm_dir)]
            out = subprocess.run(
                ["unshare", "--pid", "--fork", "--mount-proc", *clean], capture_output=True, text=True, timeout=120
            )
            assert out.returncode == 0, out.stderr
            assert "in use" in _left_line(out.stdout, seg)
        assert seg.exists() and proc.poll() is None, (tmp_path / "err").read_text()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, (tmp_path / "err").read_text()
    assert not list(shm_dir.iterdir()), "the run unlinked its segment"
