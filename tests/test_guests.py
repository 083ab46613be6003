"""Kernels are guests: they get read-only data, their output is fenced off and bounded, what they
hand back is bounded, and every way they fail is reported as what it was."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import TWO, load_json, run_cli, small_spec, start_cli

GUESTS = """
import ctypes, os, sys
import numpy as np

def writer(chunk):
    chunk[:] = 0
    return 0.0

def sneaky_writer(chunk):
    # Around NumPy's read-only flag: straight to the memory.
    ctypes.memset(chunk.ctypes.data, 0, chunk.nbytes)
    return 0.0

def chatty(chunk):
    for i in range(20000):
        print("chatty line", i)
    os.write(1, b"raw line to fd 1\\n")
    return float(np.sum(chunk, dtype=np.float64))

def huge_state(chunk):
    return np.zeros(25_000_000)

def many_values(chunk):
    return np.zeros(200_000)

def huge_int(chunk):
    return 10**400

def ctrl_c(chunk):
    raise KeyboardInterrupt

def exits(chunk):
    sys.exit(3)

def hard_exit(chunk):
    os._exit(0)

def eof(chunk):
    raise EOFError("the kernel's own EOFError")

def mover(chunk):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0) | set(range(os.cpu_count()))))
    return float(np.sum(chunk, dtype=np.float64))
"""


def _spec(tmp_path, kernel: str, **fields):
    (tmp_path / "guests.py").write_text(GUESTS)
    return small_spec(tmp_path, kernel=f"guests:{kernel}", **fields)


def _failed(tmp_path, kernel: str, **fields) -> tuple[str, dict]:
    out = run_cli("run", str(_spec(tmp_path, kernel, **fields)), "-q", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed"
    assert out.stderr.count(rep["error"]) == 1, "the error is printed once"
    assert rep["error"] not in out.stdout
    return rep["error"], rep


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_a_kernel_writing_its_chunk_fails_naming_itself(tmp_path, start_method, no_leak):
    error, _ = _failed(tmp_path, "writer", start_method=start_method)
    assert "failed during repeat 0, chunk rows" in error
    assert "ValueError: assignment destination is read-only" in error and "kernels get read-only chunks" in error


def test_a_native_write_around_numpy_faults_and_is_never_verified(tmp_path, no_leak):
    error, rep = _failed(tmp_path, "sneaky_writer")
    assert "was killed by SIGSEGV (a write to the read-only shared array" in error
    assert "during repeat 0, chunk rows" in error
    assert rep.get("result") is None  # nothing was "verified" on altered data


def test_worker_output_never_reaches_stdout_and_is_bounded(tmp_path, no_leak):
    out = run_cli("run", str(_spec(tmp_path, "chatty", repeats=1, warmup=0)), "--json", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout)  # stdout is the report and nothing else
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
    lines = out.stderr.splitlines()
    assert any(line.startswith("[worker 0] chatty line 0") for line in lines)
    # each worker, and the reference run in the launcher ("[verify]"), cut at 64 KiB
    assert sum("more output dropped" in line for line in lines) == (3 if TWO else 2)
    assert any(line.startswith("[verify] chatty line 0") for line in lines)
    assert len(out.stderr) < 3 * 70_000 + 10_000  # not 20,000 lines per chunk
    assert "raw line to fd 1" in out.stderr and "raw line to fd 1" not in out.stdout


def test_a_huge_partial_state_is_a_clear_error(tmp_path, no_leak):
    error, _ = _failed(tmp_path, "huge_state")
    assert "StateTooLarge: kernel 'guests:huge_state' returned a partial state of 200.0 MB for one chunk" in error
    assert os.path.getsize(tmp_path / "reports" / "t.json") < 200_000


def test_a_result_with_too_many_values_is_a_clear_error(tmp_path, no_leak):
    error, _ = _failed(tmp_path, "many_values")
    assert error.startswith("kernel 'guests:many_values' returned 200,000 values; a result holds at most 100,000")
    assert os.path.getsize(tmp_path / "reports" / "t.json") < 200_000


def test_an_integer_beyond_float64_is_a_clear_error(tmp_path, no_leak):
    error, _ = _failed(tmp_path, "huge_int")
    assert error.startswith("kernel 'guests:huge_int' returned an integer of about 401 digits")


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("ctrl_c", "KeyboardInterrupt (raised by the worker's own code: workers ignore Ctrl-C"),
        ("exits", "SystemExit: 3 (the kernel called sys.exit)"),
        ("eof", "EOFError: the kernel's own EOFError"),
        ("hard_exit", "exited (status 0) without answering: its kernel ended the process"),
    ],
)
def test_every_way_a_kernel_ends_is_named(tmp_path, kernel, expected, no_leak):
    error, _ = _failed(tmp_path, kernel)
    assert expected in error, error
    assert "during repeat 0" in error


@pytest.mark.skipif(not TWO, reason="needs 2 usable CPUs to move a pinned worker")
def test_a_pinned_worker_moved_by_its_kernel_is_warned_about(tmp_path, no_leak):
    out = run_cli("run", str(_spec(tmp_path, "mover", workers=1, pinning="compact")), "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    (w,) = rep["workers"]
    assert w["cpus_moved_to"] != w["cpus_requested"] and len(w["cpus_moved_to"]) > 1
    assert any("was pinned to CPUs 0 but its kernel moved it to" in x for x in rep["warnings"])
    assert "its kernel moved it to" in out.stdout


def _wait_for(pred, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (got := pred()) is not None:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_killed_fork_server_is_named_and_its_workers_killed(tmp_path, no_leak):
    """The fork server relays its children's exit statuses; killed, it must not read as 'exit status 255'."""
    import psutil

    spec = small_spec(tmp_path, kernel="bad_kernels:slow", start_method="forkserver", repeats=200)
    proc = start_cli("run", str(spec), "-q", cwd=tmp_path)
    try:
        launcher = psutil.Process(proc.pid)

        def server():
            kids = [c for c in launcher.children() if "forkserver" in " ".join(c.cmdline())]
            return kids[0] if kids and kids[0].children() else None

        fs = _wait_for(server)
        workers = fs.children()
        time.sleep(0.5)  # into the repeats
        fs.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    rep = load_json(tmp_path / "reports" / "t.json")
    assert f"the fork server (pid {fs.pid}) that started the workers died (killed?)" in rep["error"], rep["error"]
    assert "status 255" not in rep["error"]
    assert psutil.wait_procs(workers, timeout=5)[1] == []  # none left running


def test_a_run_with_stdout_closed_still_verifies(tmp_path, no_leak):
    """`shmhpc run … >&-` (a cron line, a closed pipe): fencing kernel output must not need a stdout."""
    import subprocess
    import sys

    spec = small_spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SHMHPC_SYSFS_ROOT"}
    out = subprocess.run(
        ["sh", "-c", 'exec "$0" -m shmhpc run "$1" -q >&-', sys.executable, str(spec)],
        cwd=tmp_path,
        env=env,
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
