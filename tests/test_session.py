"""The run session (segment + pinned pool of one prepared job) as a library user drives it."""

from __future__ import annotations

import json
import subprocess
import sys
from multiprocessing import forkserver

import numpy as np
import pytest
from conftest import ROOT, our_segments

from shmhpc import RunSession, prepare, read_topology, run_job, spec_from_dict


def _prep(**fields):
    spec = spec_from_dict(
        {"name": "s", "data": {"size": 300_000, "dtype": "float32"}, "workers": 1, "repeats": 2, **fields}
    )
    return prepare(spec, read_topology())


def test_a_session_loads_runs_rounds_and_combines(no_leak):
    prep = _prep(accumulate="float64")
    with RunSession(prep) as s:
        name = s.segment.name
        assert name in our_segments()
        hello = s.start()
        assert [h["cpus_observed"] for h in hello] == [list(w.cpus) for w in prep.plan.workers]
        loads = s.load()
        assert all(ld["seconds"] >= 0 for ld in loads)
        wall, replies = s.round(0)
        value = prep.kernel.finalize(s.combine(replies))
        with s.array() as arr:
            assert value == pytest.approx(float(np.sum(arr, dtype=np.float64)), rel=1e-12)
        assert wall > 0 and s.start_s > 0
    assert name not in our_segments(), "leaving the block unlinks the segment"
    assert s.pool is None and s.segment is None and s.teardown_s is not None


def test_an_error_inside_the_block_still_tears_down(no_leak):
    seen: dict = {}

    def caller_code() -> None:
        with RunSession(_prep()) as s:
            s.start()
            seen.update(pids=[h["pid"] for h in s.hello], name=s.segment.name)
            raise ZeroDivisionError("the caller's own code failed mid-session")

    with pytest.raises(ZeroDivisionError):
        caller_code()
    assert seen["name"] not in our_segments()
    assert not any(_alive(p) for p in seen["pids"])


def test_work_needs_started_workers(no_leak):
    with RunSession(_prep()) as s, pytest.raises(RuntimeError, match=r"call start\(\)"):
        s.round(0)


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_pool_is_a_context_manager(no_leak):
    with RunSession(_prep()) as s:
        s.start()
        pids = [h["pid"] for h in s.hello]
        assert all(_alive(p) for p in pids)
        with s.pool as pool:
            pass
        assert pool.procs == [] and not any(_alive(p) for p in pids), "leaving the block stops the workers"


def test_run_job_leaves_the_forkserver_preload_as_it_found_it(tmp_path, no_leak):
    mine = ["json"]
    forkserver.set_forkserver_preload(mine)
    try:
        spec = spec_from_dict({"name": "p", "data": {"size": 100_000}, "workers": 1, "repeats": 1})
        rep = run_job(spec, read_topology(), write=False)
        assert rep["status"] == "ok", rep["error"]
        assert forkserver._forkserver._preload_modules == mine
    finally:
        forkserver.set_forkserver_preload(["__main__"])


def test_plan_and_validate_never_load_the_pool_or_shared_memory():
    code = (
        "import sys, json; from shmhpc.cli import main; "
        f"main(['plan', {str(ROOT / 'jobs' / 'sum-pinned.yaml')!r}]); "
        f"main(['validate', {str(ROOT / 'jobs' / 'histogram.yaml')!r}]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('shmhpc'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "shmhpc.placement" in loaded and "shmhpc.planning" in loaded
    for module in ("shmhpc.pool", "shmhpc.shm", "shmhpc.runner", "shmhpc.session", "shmhpc.signals"):
        assert module not in loaded, module
