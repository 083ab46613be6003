"""End-to-end runs through the CLI, as a user runs them: real processes, real /dev/shm, real pinning."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import JOBS, ROOT, TWO, USABLE, load_json, run_cli, run_in_pty, small_spec


def run_ok(spec: Path, *extra: str) -> dict:
    out = run_cli("run", str(spec), *extra, cwd=spec.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    rep = load_json(spec.parent / "reports" / f"{spec.stem}.json")
    assert rep["status"] == "ok"
    return rep


# -- the examples in jobs/ --------------------------------------------------------------

EXAMPLES = sorted(JOBS.glob("*.yaml"))


@pytest.mark.parametrize("job", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_job_runs(job, tmp_path, no_leak):
    """Each file in jobs/ runs here (smaller data, same everything else) and verifies."""
    from shmhpc.spec import load_spec

    spec = load_spec(job)
    shrink = ["data.shape=[4000, 50]"] if spec.data.shape else ["data.size=400000"]
    out = run_cli(
        "run", str(job), "--set", shrink[0], "--set", "repeats=2", "--report", str(tmp_path / "r.json"), cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rep = load_json(tmp_path / "r.json")
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
    assert len(rep["timings"]["repeat_s"]) == 2
    assert f"{spec.name}: ok" in out.stdout


def test_seed_job_report_is_complete(tmp_path, no_leak):
    """The default job: every report section the docs promise, with real values."""
    out = run_cli("run", str(JOBS / "sum-pinned.yaml"), "--report", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rep = load_json(tmp_path / "r.json")
    assert rep["version"] == 1 and rep["status"] == "ok" and rep["error"] is None
    assert rep["job"]["name"] == "sum-pinned" and rep["job"]["data"]["size"] == 20_000_000
    host = rep["host"]
    for key in ("hostname", "cpu_model", "kernel", "python", "numpy", "shmhpc", "env"):
        assert key in host
    assert rep["topology"]["usable"] == USABLE
    assert rep["data"]["nbytes"] == 80_000_000
    ranks = [w["rank"] for w in rep["workers"]]
    assert ranks == list(range(len(ranks)))
    for w in rep["workers"]:
        assert w["pid"] > 0 and w["pid"] != os.getpid()
        assert w["cpus_observed"] == w["cpus_requested"], "a pinned worker must run where it was asked to"
        assert set(w["cpus_ran_on"]) <= set(w["cpus_requested"])
        assert w["threads"]["env"]["OMP_NUM_THREADS"] == "1"
        assert isinstance(w["threads"]["threadpool_info"], list)
        assert len(w["repeat_s"]) == 5 and all(s > 0 for s in w["repeat_s"])
        assert [len(c) for c in w["chunk_s"]] == [len(w["chunks"])] * 5
    # chunks tile the array exactly once
    bounds = sorted(tuple(c) for w in rep["workers"] for c in w["chunks"])
    assert bounds[0][0] == 0 and bounds[-1][1] == 20_000_000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    t = rep["timings"]
    for key in ("pool_start_s", "load_s", "teardown_s", "verify_s", "total_s"):
        assert t[key] > 0
    assert len(t["repeat_s"]) == 5 and len(t["warmup_s"]) == 1
    assert t["repeat"]["median"] == sorted(t["repeat_s"])[2]
    bw = rep["bandwidth"]
    assert bw["bytes_per_repeat"] == 80_000_000
    assert bw["gbps_per_repeat"] == pytest.approx([80_000_000 / s / 1e9 for s in t["repeat_s"]])
    res = rep["result"]
    assert res["kernel"] == "sum" and res["verified"] is True and res["count_ok"] is True
    assert abs(res["value"] - res["reference"]) == pytest.approx(res["abs_error"], abs=1e-12)
    assert res["abs_error"] <= res["tolerance"]
    # page placement was actually queried in the workers
    parts = rep["pages"]["partitions"]
    assert parts and all(sum(p["sampled_pages_by_node"].values()) > 0 for p in parts)
    # human summary
    assert "sum-pinned: ok" in out.stdout and "verified" in out.stdout and "GB/s" in out.stdout


def test_unpinned_workers_may_run_anywhere(tmp_path, no_leak):
    rep = run_ok(small_spec(tmp_path, pinning="none"))
    assert rep["plan"]["pinned"] is False
    for w in rep["workers"]:
        assert w["cpus_observed"] == USABLE


@pytest.mark.skipif(not TWO, reason="needs 2 usable CPUs")
def test_explicit_pinning_is_observed_inside_workers(tmp_path, no_leak):
    a, b = USABLE[0], USABLE[1]
    rep = run_ok(small_spec(tmp_path, pinning=f"[[{b}], [{a}]]"))
    assert [w["cpus_observed"] for w in rep["workers"]] == [[b], [a]]
    assert [w["cpus_ran_on"] for w in rep["workers"]] == [[b], [a]]


def test_allowed_cpus_narrows_the_plan(tmp_path, no_leak):
    cpu = USABLE[-1]
    rep = run_ok(small_spec(tmp_path, workers=1), "--allowed-cpus", str(cpu))
    assert rep["workers"][0]["cpus_observed"] == [cpu]
    assert rep["topology"]["usable"] == [cpu] and rep["topology"]["usable_source"] == "override"


@pytest.mark.parametrize("method", ["auto", "fork", "forkserver", "spawn"])
def test_every_start_method(method, tmp_path, no_leak):
    rep = run_ok(small_spec(tmp_path, start_method=method, kernel="var"))
    assert rep["job"]["start_method"] == method
    assert rep["pool"]["start_method"] in ((method,) if method != "auto" else ("fork", "forkserver"))
    assert rep["result"]["verified"] is True


@pytest.mark.slow
def test_generated_data_does_not_depend_on_worker_count(tmp_path, no_leak):
    refs = {}
    for n in (1, 2, 3):
        (tmp_path / str(n)).mkdir()
        spec = small_spec(tmp_path / str(n), workers=n, oversubscribe="true", kernel="max", chunks_per_worker=3)
        rep = run_ok(spec)
        refs[n] = (rep["result"]["value"], rep["result"]["reference"])
    assert refs[1] == refs[2] == refs[3]


def test_two_d_array_is_split_by_rows(tmp_path, no_leak):
    rep = run_ok(small_spec(tmp_path, data="{shape: [1001, 37], dtype: float64, distribution: uniform}", kernel="std"))
    rows = sorted(tuple(w["rows"]) for w in rep["workers"])
    assert rows[0][0] == 0 and rows[-1][1] == 1001
    assert rep["data"]["shape"] == [1001, 37]
    assert 0.28 < rep["result"]["value"] < 0.30  # std of U[0,1) is 0.2887


@pytest.mark.parametrize("kernel", ["sum", "mean", "min", "max", "var", "std", "norm2"])
def test_builtin_kernels_on_an_npy_file(kernel, tmp_path, no_leak):
    rng = np.random.default_rng(5)
    arr = (rng.standard_normal(123_457) * 3 + 1).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    rep = run_ok(small_spec(tmp_path, data="{source: npy, path: x.npy}", kernel=kernel, accumulate="native"))
    a64 = arr.astype(np.float64)
    expected = {
        "sum": math.fsum(a64),
        "mean": math.fsum(a64) / a64.size,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "var": float(np.var(a64)),
        "std": float(np.std(a64)),
        "norm2": math.sqrt(math.fsum(a64 * a64)),
    }[kernel]
    assert rep["result"]["reference"] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert rep["result"]["value"] == pytest.approx(expected, rel=1e-4)
    assert rep["data"]["source"] == "npy"


def test_raw_file_with_offset(tmp_path, no_leak):
    arr = np.arange(50_000, dtype=np.int64)
    (tmp_path / "x.raw").write_bytes(b"HEADER!!" + arr.tobytes())
    rep = run_ok(small_spec(tmp_path, data="{source: raw, path: x.raw, dtype: int64, size: 50000, offset_bytes: 8}"))
    assert rep["result"]["value"] == 50_000 * 49_999 // 2


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("{source: npy, path: missing.npy}", "data.path: 'missing.npy' does not exist"),
        ("{source: npy, path: notnpy.npy}", "is not a readable .npy file"),
        ("{source: npy, path: x.npy, dtype: float64}", "data.dtype: spec says float64 but"),
        ("{source: npy, path: trunc.npy}", "is truncated"),
        ("{source: raw, path: x.npy, dtype: float32, size: 99999999}", "needs"),
    ],
)
def test_bad_data_files_fail_before_workers_start(data, needle, tmp_path, no_leak):
    np.save(tmp_path / "x.npy", np.ones(1000, np.float32))
    (tmp_path / "notnpy.npy").write_text("hello, not numpy")
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:500])
    out = run_cli("run", str(small_spec(tmp_path, data=data)), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed" and "workers" not in rep


def test_worker_exception_fails_fast_with_the_cause(tmp_path, no_leak):
    t0 = time.monotonic()
    out = run_cli("run", str(small_spec(tmp_path, kernel="bad_kernels:boom")), cwd=tmp_path)
    assert time.monotonic() - t0 < 30
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "failed during repeat 0, chunk rows" in out.stderr and "ValueError: boom from the kernel" in out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed" and "boom from the kernel" in rep["error"]
    assert "Traceback" in rep["error_detail"]  # the worker's traceback is kept in the report


def test_worker_killed_by_a_signal_is_named(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path, kernel="bad_kernels:die")), cwd=tmp_path)
    assert out.returncode == 1
    assert re.search(r"worker \d+ \(pid \d+\) was killed by SIGKILL during repeat 0, chunk rows \d+-\d+", out.stderr)
    assert load_json(tmp_path / "reports" / "t.json")["status"] == "failed"


@pytest.mark.slow
def test_hung_worker_hits_timeout(tmp_path, no_leak):
    t0 = time.monotonic()
    out = run_cli("run", str(small_spec(tmp_path, kernel="bad_kernels:sleepy", timeout_s=1.5)), cwd=tmp_path)
    assert time.monotonic() - t0 < 20
    assert out.returncode == 1
    assert "no answer within timeout_s=1.5 from worker 0 during repeat 0, chunk rows 0-" in out.stderr


def test_failed_verification_exits_1_and_reports(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path, kernel="bad_kernels:inconsistent")), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "verification failed" in out.stderr
    rep = load_json(tmp_path / "reports" / "t.json")
    assert rep["status"] == "failed" and rep["result"]["verified"] is False


def test_bad_kernel_path_is_bad_input(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path, kernel="no_such_module:f")), cwd=tmp_path)
    assert out.returncode == 2
    assert "error: kernel:" in out.stderr and "Traceback" not in out.stderr


def test_progress_plain_lines_without_a_tty(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path)), cwd=tmp_path)
    assert out.returncode == 0
    for needle in ("pool start:", "load:", "warmup 1/1", "repeat 1/3", "repeat 3/3"):
        assert needle in out.stderr
    assert "\r" not in out.stderr
    quiet = run_cli("run", str(small_spec(tmp_path)), "-q", "--force", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_progress_bar_on_a_tty(tmp_path, no_leak):
    rc, text = run_in_pty(["run", str(small_spec(tmp_path))], cwd=tmp_path)
    assert rc == 0
    assert "\rrepeats [" in text and "repeat 3/3" in text  # the live status line


def test_no_resource_tracker_noise(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path)), "-q", cwd=tmp_path)
    assert out.returncode == 0
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr


def test_python_api(tmp_path, no_leak):
    """The few names a user imports run a job without the CLI."""
    import shmhpc

    spec = shmhpc.load_spec(small_spec(tmp_path), ["kernel=mean"])
    rep = shmhpc.run_job(spec, shmhpc.read_topology(), write=False)
    assert rep["status"] == "ok" and rep["result"]["verified"] is True


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "shmhpc"
    if not exe.exists():
        pytest.skip("shmhpc console script not installed next to this interpreter (not a pip install)")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("shmhpc ")


def test_readme_quick_start_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(quick) == 2, "the quick start is exactly two commands"
    assert quick[0].endswith("python -m shmhpc run jobs/sum-pinned.yaml")
    assert quick[1].endswith("python -m pytest")
    assert quick[1] in ci.splitlines(), ".ci/run must call the README's test command verbatim"


@pytest.mark.slow
def test_file_data_is_not_copied_by_the_launcher(tmp_path, no_leak):
    """A 160 MB .npy goes straight into shared memory: the launcher's own peak RSS stays far below it."""
    arr = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(40_000_000,))
    arr[:] = 1.0
    arr.flush()
    del arr
    rep = run_ok(small_spec(tmp_path, data="{source: npy, path: big.npy}", repeats=1, verify="false"))
    mem = rep["memory"]
    assert mem["array_bytes"] == 160_000_000
    assert mem["launcher_peak_rss_bytes_before_verify"] < 0.6 * mem["array_bytes"]
    assert rep["result"]["value"] == 40_000_000
