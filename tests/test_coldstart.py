"""Cold start: ``start_method: auto`` forks the workers straight from a single-threaded launcher and
falls back to a fork server (saying why) when the launcher has other threads; forked workers get the
thread pools the spec asks for, die with their launcher and leave nothing running; generated data is
the same bit for bit whoever draws it. Behaviour is asserted here, never speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import TWO, load_json, run_cli, small_spec

from shmhpc.data import GEN_BLOCK, DataInfo, RowFiller, fill_rows
from shmhpc.pool import choose_start_method, launcher_threads
from shmhpc.threads import THREAD_VARS


def _env(**extra: str) -> dict[str, str]:
    """The environment of a launcher whose user set no thread variables (CI machines sometimes do)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and k != "SHMHPC_SYSFS_ROOT"}
    env.update(extra)
    return env


def _run(spec: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "shmhpc", "run", str(spec), "-q", *extra],
        cwd=spec.parent,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return load_json(spec.parent / "reports" / f"{spec.stem}.json")


# -- which start method, and why ---------------------------------------------------------------


def test_auto_forks_from_a_single_threaded_launcher(tmp_path, no_leak):
    rep = _run(small_spec(tmp_path, start_method="auto"))
    pool = rep["pool"]
    assert (pool["start_method"], pool["start_method_asked"], pool["launcher_threads"]) == ("fork", "auto", 1)
    assert "1 thread" in pool["start_method_reason"]
    assert rep["job"]["start_method"] == "auto"
    assert not [w for w in rep["warnings"] if "fork" in w]
    # The launcher imported numpy with one BLAS thread for itself only: its environment is the user's.
    assert not set(rep["host"]["env"]) & set(THREAD_VARS)


def test_auto_uses_a_fork_server_when_the_launcher_has_another_thread(tmp_path, no_leak):
    spec = small_spec(tmp_path, start_method="auto")
    launcher = textwrap.dedent(
        f"""
        import sys, threading
        from shmhpc.cli import main
        done = threading.Event()
        threading.Thread(target=done.wait, name="holder", daemon=True).start()
        code = main(["run", {str(spec)!r}, "-q"])
        done.set()
        sys.exit(code)
        """
    )
    out = subprocess.run([sys.executable, "-c", launcher], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    pool = rep["pool"]
    assert pool["start_method"] == "forkserver" and pool["launcher_threads"] >= 2
    assert "'holder'" in pool["start_method_reason"] and "fork server" in pool["start_method_reason"]
    assert rep["result"]["verified"] is True


def test_an_explicit_start_method_is_kept_and_said(tmp_path, no_leak):
    rep = _run(small_spec(tmp_path, start_method="forkserver"))
    assert rep["pool"]["start_method"] == "forkserver"
    assert rep["pool"]["start_method_reason"] == "start_method: forkserver in the spec"


def test_choose_start_method_reasons():
    assert choose_start_method("auto", 1)[0] == "fork"
    method, why = choose_start_method("auto", 3)
    assert method == "forkserver" and "3 threads" in why and "native code" in why
    method, why = choose_start_method("auto", None)
    assert method == "forkserver" and "cannot be counted" in why
    assert choose_start_method("spawn", 1) == ("spawn", "start_method: spawn in the spec")
    assert launcher_threads("/nonexistent/status") is None
    assert (launcher_threads() or 0) >= 1


# -- forked workers: thread pools, and nothing left running ------------------------------------


def test_forked_workers_get_the_thread_pools_the_spec_asks_for(tmp_path, no_leak):
    """The launcher's BLAS pool has one thread; a forked worker raises its own to the spec's count."""
    rep = _run(small_spec(tmp_path, start_method="auto", workers=1, threads_per_worker=2, oversubscribe="true"))
    assert rep["pool"]["start_method"] == "fork"
    (worker,) = rep["workers"]
    threads = worker["threads"]
    assert threads["requested"] == 2
    assert all(threads["env"][k] == "2" for k in THREAD_VARS)
    pools = threads["threadpool_info"]
    assert pools, "numpy's BLAS is seen in the worker"
    assert all(p["num_threads"] == 2 for p in pools), pools


@contextlib.contextmanager
def _in_first_repeat(tmp_path: Path, spec: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``shmhpc run spec`` started, yielded once it logs its first repeat (or ends); killed on the way out."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmhpc", "run", str(spec)], cwd=tmp_path, env=_env(), stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while "] repeat 1/" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc, log
    finally:
        proc.kill()


@pytest.mark.skipif(not TWO, reason="needs 2 usable CPUs")
def test_forked_workers_leave_nothing_running(tmp_path, no_leak):
    """Under fork the launcher's children are its workers only (no fork server, no resource tracker),
    and all of them are gone when it exits."""
    spec = small_spec(tmp_path, start_method="auto", kernel="bad_kernels:slow", repeats=2)
    with _in_first_repeat(tmp_path, spec) as (proc, log):
        kids = psutil.Process(proc.pid).children(recursive=True)
        cmdlines = [" ".join(k.cmdline()) for k in kids]
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert len(kids) == 2 and not [c for c in cmdlines if "forkserver" in c or "resource_tracker" in c], cmdlines
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_forked_workers_of_a_killed_launcher_exit(tmp_path, no_leak):
    """A forked worker holds copies of the launcher's pipe ends unless it closes them: then a launcher
    killed by SIGKILL would leave its workers waiting for ever."""
    spec = small_spec(tmp_path, start_method="auto", kernel="bad_kernels:slow", repeats=100)
    with _in_first_repeat(tmp_path, spec) as (proc, log):
        workers = psutil.Process(proc.pid).children()
        assert workers and proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"orphaned forked workers still running: {[p.pid for p in alive]}"
    cleaned = run_cli("clean")  # the killed launcher's segment: what `clean` is for
    assert cleaned.returncode == 0 and f"-p{proc.pid}-" in cleaned.stdout


# -- generated data: the same bit for bit -----------------------------------------------------

SIZE = 2 * GEN_BLOCK + 123_457  # blocks cut by worker and chunk boundaries alike
HASHES = """
import hashlib, sys
from shmhpc.threads import import_numpy_single_threaded
import_numpy_single_threaded()
from shmhpc import RunSession, prepare, read_topology, spec_from_dict
topo = read_topology()
for method, workers, chunks in [("auto", 1, 1), ("auto", 2, 3), ("forkserver", 2, 1), ("forkserver", 3, 2)]:
    spec = spec_from_dict({{"name": "h", "data": {{"size": {size}, "dtype": "float32", "seed": 7}},
                           "workers": workers, "oversubscribe": True, "chunks_per_worker": chunks,
                           "start_method": method}})
    with RunSession(prepare(spec, topo)) as s:
        s.start()
        s.load()
        used = s.start_info["start_method"]
        with s.array() as a:
            print(method, used, workers, chunks, hashlib.sha256(a.tobytes()).hexdigest(), flush=True)
"""


def _reference(size: int, seed: int) -> np.ndarray:
    """The documented rule, drawn in one process: block b from SeedSequence(seed, spawn_key=(b,))."""
    blocks = []
    for b in range(-(-size // GEN_BLOCK)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed).spawn(b + 1)[b]))
        blocks.append(rng.standard_normal(min(GEN_BLOCK, size - b * GEN_BLOCK), dtype=np.float32))
    return np.concatenate(blocks)


def test_generated_data_is_identical_under_fork_and_forkserver_and_any_worker_count(tmp_path, no_leak):
    out = subprocess.run(
        [sys.executable, "-c", HASHES.format(size=SIZE)], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines()]
    assert [ln[1] for ln in lines] == ["fork", "fork", "forkserver", "forkserver"]
    expected = hashlib.sha256(_reference(SIZE, 7).tobytes()).hexdigest()
    assert {ln[4] for ln in lines} == {expected}


def _info(size: int, seed: int = 7, distribution: str = "normal") -> DataInfo:
    return DataInfo("generate", (size,), "float32", distribution, seed, None, 0)


@pytest.mark.parametrize("cuts", [[0, SIZE], [0, 1000, GEN_BLOCK + 5, GEN_BLOCK + 6, 2 * GEN_BLOCK, SIZE]])
def test_a_row_filler_draws_each_block_once_however_the_rows_are_chunked(cuts, monkeypatch):
    from shmhpc import data

    info = _info(SIZE)
    whole = np.empty(SIZE, dtype=np.float32)
    fill_rows(whole, info, 0, SIZE)
    drawn: list[int] = []
    real = data._draw
    monkeypatch.setattr(data, "_draw", lambda info, b, out: (drawn.append(b), real(info, b, out)))
    chunked = np.empty(SIZE, dtype=np.float32)
    filler = RowFiller(chunked, info)
    for a, b in zip(cuts, cuts[1:]):
        filler.fill(a, b)
    assert np.array_equal(whole.view(np.uint32), chunked.view(np.uint32))
    assert drawn == [0, 1, 2], "a block cut by a chunk boundary is drawn once, not once per chunk"


def test_row_filler_keeps_uniform_data_and_two_d_rows_too():
    info = DataInfo("generate", (3001, 700), "float64", "uniform", 11, None, 0)
    whole = np.empty(info.shape, dtype=np.float64)
    fill_rows(whole, info, 0, 3001)
    chunked = np.empty(info.shape, dtype=np.float64)
    filler = RowFiller(chunked, info)
    for a, b in ((0, 7), (7, 1500), (1500, 3001)):
        filler.fill(a, b)
    assert np.array_equal(whole, chunked)
    assert 0.0 <= whole.min() and whole.max() < 1.0
