"""Every way a run can end leaves nothing behind: faults, signals, dead launchers, full /dev/shm.

These tests really do it: kill workers and launchers with signals, fill a tmpfs, run 200 jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import TWO, load_json, mounted_tmpfs, our_segments, run_cli, small_spec, start_cli

from shmhpc.errors import signal_name
from shmhpc.signals import STOP_SIGNALS

SHM = Path("/dev/shm")


def _start(spec: Path, *extra: str) -> subprocess.Popen:
    """``shmhpc run SPEC`` in the background; its stderr (the progress lines) goes to ``_stderr``'s file."""
    return start_cli("run", str(spec), *extra, cwd=spec.parent, stderr=spec.parent / "stderr.log")


def _stderr(spec_dir: Path) -> str:
    log = spec_dir / "stderr.log"
    return log.read_text() if log.is_file() else ""


def _wait_for(pred, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _segments_of(pid: int) -> list[str]:
    return [n for n in our_segments() if f"-p{pid}-" in n]


def _workers_of(launcher: int) -> list[psutil.Process]:
    """Worker processes of a launcher (under forkserver they are the forkserver's children)."""
    out = []
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "forkserver" in cmd and child.ppid() == launcher:
                continue  # the fork server itself
            if "resource_tracker" in cmd:
                continue
            out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def _first_report_repeat(proc: subprocess.Popen, spec_dir: Path) -> None:
    """Wait until the run (started by ``_start``) has finished its first repeat: its progress line says so."""
    _wait_for(lambda: "] repeat 1/" in _stderr(spec_dir) or proc.poll() is not None, what="the first repeat")
    assert proc.poll() is None, f"the run ended before its first repeat: {_stderr(spec_dir)}"


def _exited(p: psutil.Process) -> bool:
    """Gone, or a zombie that only waits for its parent (the fork server, or init) to reap it."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- faults in workers -------------------------------------------------------------------------


def test_worker_sigkilled_from_outside_mid_run(tmp_path, no_leak):
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=100, chunks_per_worker=2)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        workers = _workers_of(proc.pid)
        victim = workers[-1]
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    err = _stderr(tmp_path)
    assert proc.returncode == 1, err
    assert elapsed < 10, f"the run took {elapsed:.1f} s to notice a dead worker"
    assert f"(pid {victim.pid}) was killed by SIGKILL during repeat" in err
    assert "chunk rows" in err
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed" and "SIGKILL" in rep["error"]
    # the other workers were stopped too (the launcher is reaped: watch the workers seen during the run)
    assert {w["pid"] for w in rep["workers"]} <= {p.pid for p in workers}
    _wait_for(lambda: all(_exited(p) for p in workers), 10, "the other workers to exit")


# -- signals to the launcher ---------------------------------------------------------------------


# Every named one, and the real-time range by its ends and one inside (33 runs of the same path otherwise).
SIGNALS_TRIED = [s for s in STOP_SIGNALS if s < signal.SIGRTMIN] + [
    signal.SIGRTMIN,
    signal.SIGRTMIN + 3,
    signal.SIGRTMAX,
]


def test_every_catchable_terminating_signal_is_a_stop_signal():
    """signal(7): all whose default is Term or Core, minus the uncatchable, the ones Python ignores and the faults."""
    default_ignore_or_stop = {"SIGCHLD", "SIGCONT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGWINCH", "SIGSTOP"}
    uncatchable, python_ignores = {"SIGKILL", "SIGSTOP"}, {"SIGPIPE", "SIGXFSZ"}
    faults = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGSYS", "SIGTRAP"}
    left_out = default_ignore_or_stop | uncatchable | python_ignores | faults
    expected = {int(s) for s in signal.valid_signals() if signal_name(int(s)) not in left_out}
    assert set(STOP_SIGNALS) == expected
    assert signal_name(signal.SIGRTMIN + 3) == "SIGRTMIN+3"


@pytest.mark.parametrize("sig", SIGNALS_TRIED, ids=signal_name)
def test_signal_stops_between_repeats_and_reports_what_finished(sig, tmp_path, no_leak):
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=100, chunks_per_worker=1)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    err = _stderr(tmp_path)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "interrupted" and rep["error"] == f"interrupted by {signal_name(sig)}"
    done = rep["timings"]["repeat_s"]
    assert 0 < len(done) < 100, "the repeats that finished are kept"
    assert rep["timings"]["repeat"]["median"] > 0
    assert len(rep["bandwidth"]["gbps_per_repeat"]) == len(done) and rep["bandwidth"]["gbps"]["median"] > 0
    assert all(len(w["repeat_s"]) == len(done) for w in rep["workers"])
    assert not _segments_of(proc.pid)


@pytest.mark.parametrize("start_method", ["auto", "forkserver", "spawn", "fork"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_to_every_process_of_the_run_is_a_clean_stop(sig, start_method, tmp_path, no_leak):
    """Slurm's slurmstepd sends scancel's TERM and the time-limit USR1 to every process of the step,
    the forkserver and the workers included: only the launcher may act on them."""
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=100, start_method=start_method)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        assert len(family) >= 3, "the launcher and its workers (and for forkserver, the server)"
        for pid in family:
            os.kill(pid, sig)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    err = _stderr(tmp_path)
    rep = load_json(tmp_path / "reports" / "t.json")
    assert (rep["status"], rep["error"]) == ("interrupted", f"interrupted by {sig.name}"), err
    assert proc.returncode == 128 + sig


@pytest.mark.slow
def test_second_signal_stops_a_long_repeat_at_once(tmp_path, no_leak):
    started = tmp_path / "started"
    (tmp_path / "k.py").write_text(
        f"import pathlib, time\ndef forever(chunk):\n    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(60)\n    return 0.0\n"
    )
    spec = small_spec(tmp_path, kernel="k:forever", repeats=3)
    proc = _start(spec)
    try:
        _wait_for(lambda: started.exists() or proc.poll() is not None, what="the kernel to start")
        assert proc.poll() is None, _stderr(tmp_path)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Not a condition to poll: nothing outside the launcher shows it has counted the first signal, and two
        # sent back to back may be counted as one (Python runs a signal's handler once for all that are pending).
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert elapsed < 10
    assert load_json(tmp_path / "reports" / "t.json")["status"] == "interrupted"


# -- a launcher that dies without cleaning up ------------------------------------------------------


# -- stuck workers ------------------------------------------------------------------------------


def test_a_stopped_worker_without_timeout_is_said_with_its_state(tmp_path, no_leak):
    """No timeout_s: the run goes on, but says on the terminal and in the report which worker is stuck, and how."""
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=50, stall_warning_s=1)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        worker = _workers_of(proc.pid)[0]
        worker.suspend()  # SIGSTOP
        _wait_for(lambda: "has finished no chunk for" in _stderr(tmp_path), timeout=30, what="the stall warning")
        line = next(x for x in _stderr(tmp_path).splitlines() if "has finished no chunk for" in x)
        assert f"(pid {worker.pid})" in line and "it is stopped" in line and f"kill -CONT {worker.pid}" in line
        assert proc.poll() is None  # not a failure: no timeout_s
        worker.resume()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "interrupted"
    assert any("has finished no chunk for" in w and "it is stopped" in w for w in rep["warnings"])


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_quick_ctrl_cs_with_a_stopped_worker_end_bounded_and_name_it(tmp_path, start_method, no_leak):
    """A stopped worker cannot answer 'stop': teardown kills it, names it, and nothing hangs at exit."""
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=50, start_method=start_method)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        worker = _workers_of(proc.pid)[0]
        worker.suspend()
        t0 = time.monotonic()
        for _ in range(4):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, _stderr(tmp_path)
    assert took < 15
    assert _segments_of(proc.pid) == []
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "interrupted"
    assert any(f"(pid {worker.pid}, stopped) did not stop within" in w and "was killed" in w for w in rep["warnings"])
    assert _exited(worker)


@pytest.mark.slow
def test_sigkilled_launcher_leftovers_are_found_and_cleaned(tmp_path, no_leak):
    spec = small_spec(tmp_path, kernel="bad_kernels:slow", repeats=100)
    proc = _start(spec)
    try:
        _first_report_repeat(proc, tmp_path)
        left = _segments_of(proc.pid)
        workers = _workers_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert left, "the run had a segment"
    assert set(left) <= our_segments(), "SIGKILL leaves the segment behind: nothing can run in-process"
    # orphaned workers notice their launcher is gone and exit (only this run's: other processes on the
    # machine may have "shmhpc" in their command line, a local Slurm's daemons among them)
    assert workers, "the run had workers"
    _wait_for(lambda: not any(w.is_running() for w in workers), 20, "orphaned workers to exit")

    dry = run_cli("clean", "--dry-run")
    assert dry.returncode == 0
    assert all(name in dry.stdout for name in left) and "would remove" in dry.stdout
    assert set(left) <= our_segments(), "--dry-run removes nothing"
    real = run_cli("clean")
    assert real.returncode == 0 and "removed" in real.stdout
    assert not (set(left) & our_segments())


def _fake_segment(pid: int, uid: int | None = None, size: int = 4096) -> Path:
    uid = os.getuid() if uid is None else uid
    path = SHM / f"shmhpc-u{uid}-p{pid}-j0-{os.urandom(8).hex()}"
    path.write_bytes(b"\0" * size)
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_never_touches_live_or_foreign_segments(no_leak):
    dead = _fake_segment(_dead_pid())
    live = _fake_segment(os.getpid())
    foreign = _fake_segment(_dead_pid(), uid=os.getuid() + 4242)
    other = SHM / f"not-ours-{os.urandom(4).hex()}"
    other.write_bytes(b"x")
    try:
        out = run_cli("clean")
        assert out.returncode == 0
        assert not dead.exists()
        assert live.exists(), "a live owner's segment is never removed"
        assert foreign.exists(), "another user's segment is never removed"
        assert other.exists()
    finally:
        for p in (dead, live, foreign, other):
            p.unlink(missing_ok=True)


def test_run_sweeps_dead_leftovers_at_start_and_says_so(tmp_path, no_leak):
    stale = _fake_segment(_dead_pid(), size=1 << 20)
    out = run_cli("run", str(small_spec(tmp_path)), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not stale.exists()
    assert f"removed stale segment {stale.name}" in out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert any(stale.name in w for w in rep["warnings"])


# -- resources -----------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """An 8 MiB tmpfs standing in for a too-small /dev/shm (Docker's default is 64 MB)."""
    with mounted_tmpfs(tmp_path / "shm", "size=8m,mode=1777") as mnt:
        yield mnt


def test_array_larger_than_shm_fails_before_allocating(tmp_path, small_tmpfs, no_leak):
    spec = small_spec(tmp_path, data="{size: 4000000, dtype: float32}")  # 16 MB > 8 MiB
    out = run_cli("run", str(spec), cwd=tmp_path, env={"SHMHPC_SHM_DIR": str(small_tmpfs)})
    assert out.returncode == 1, out.stderr
    assert "the array needs 0.016 GB but" in out.stderr and "GB free" in out.stderr
    assert "--shm-size" in out.stderr and "SIGBUS" not in out.stderr
    assert os.listdir(small_tmpfs) == []
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed" and "GB free" in rep["error"]


def test_shm_filled_after_the_check_is_an_error_not_sigbus(tmp_path, small_tmpfs, no_leak, monkeypatch):
    """If the space goes away between the check and the first touch, the owners' reservation fails cleanly."""
    import shmhpc
    from shmhpc import session

    monkeypatch.setenv("SHMHPC_SHM_DIR", str(small_tmpfs))
    monkeypatch.setattr(session, "check_fits", lambda nbytes, d: None)  # as if another job took the space
    spec = shmhpc.load_spec(small_spec(tmp_path, data="{size: 4000000, dtype: float32}", start_method="spawn"))
    rep = shmhpc.run_job(spec, shmhpc.read_topology(), write=False)
    assert rep["status"] == "failed"
    assert "cannot reserve" in rep["error"] and "full" in rep["error"]
    assert rep["exit_code"] == 1
    assert os.listdir(small_tmpfs) == []


# -- many runs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_200_back_to_back_runs_leak_nothing(tmp_path, no_leak):
    import shmhpc

    spec = shmhpc.load_spec(
        small_spec(tmp_path, data="{size: 20000, dtype: float32}", repeats=1, warmup=0, workers=2 if TWO else 1)
    )
    topo = shmhpc.read_topology()
    me = psutil.Process()

    def one() -> None:
        rep = shmhpc.run_job(spec, topo, write=False)
        assert rep["status"] == "ok", rep["error"]

    for _ in range(10):  # warm up: forkserver, imports, caches
        one()
    fds0, rss0 = me.num_fds(), me.memory_info().rss
    for _ in range(190):
        one()
    fds1, rss1 = me.num_fds(), me.memory_info().rss
    assert not _segments_of(os.getpid())
    assert fds1 <= fds0, f"open files grew from {fds0} to {fds1}"
    assert rss1 - rss0 < 16 << 20, f"launcher memory grew by {(rss1 - rss0) >> 20} MiB over 190 runs"
    assert not me.children(recursive=True) or all(
        "forkserver" in " ".join(c.cmdline()) or "resource_tracker" in " ".join(c.cmdline())
        for c in me.children(recursive=True)
    ), "no worker outlives its run"


EARLY_SIGNAL = """
import os, signal, sys
from shmhpc import cli, threads
real = threads.import_numpy_single_threaded
def importing_numpy():
    os.kill(os.getpid(), signal.SIGUSR1)  # e.g. Slurm's time-limit warning while Python is still loading
    real()
threads.import_numpy_single_threaded = importing_numpy
sys.exit(cli.main(["run", sys.argv[1], "-q"]))
"""


def test_a_signal_while_the_launcher_is_still_loading_is_a_clean_stop(tmp_path, no_leak):
    """The CLI installs its stop handlers before its imports: a signal during them is an `interrupted` run."""
    spec = small_spec(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", EARLY_SIGNAL, str(spec)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr
    report = load_json(tmp_path / "reports" / "t.json")
    assert report["status"] == "interrupted" and "SIGUSR1" in report["error"]
    assert not report.get("workers") and not report.get("segment")  # nothing was started
