"""Multi-node runs (``run --mpi``): the rank split, the launcher's environment, and real ``mpirun -n 2`` jobs.

The real runs use Open MPI's ``mpirun`` on this one host (two "nodes" side by side, each bound to its own
CPUs by mpirun) and mpi4py (the test extra); ``.ci/run`` installs Debian's ``openmpi-bin``. Without them
these tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT, run_cli

from shmhpc.data import DataInfo, RowFiller
from shmhpc.mpi import MpiEnv, detect_env, node_rows

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONPATH": str(ROOT)}


# -- pure logic ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"}, MpiEnv(1, 4, "mpirun (Open MPI)")),
        ({"PMIX_RANK": "2", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "7"}, MpiEnv(2, 3, "srun --mpi=pmix")),
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, MpiEnv(0, 2, "mpiexec (PMI)")),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}, MpiEnv(1, 2, "srun (no MPI plugin)")),
        ({"SLURM_JOB_ID": "7"}, None),
        ({}, None),
    ],
)
def test_rank_and_size_come_from_the_launchers_environment(env, want):
    assert detect_env(env) == want


@pytest.mark.parametrize(("n_rows", "size", "align"), [(1_000_003, 2, 1024), (10, 3, 1), (4096, 4, 1024), (7, 7, 4)])
def test_node_slices_cover_every_row_once(n_rows, size, align):
    slices = [node_rows(n_rows, size, r, align) for r in range(size)]
    assert slices[0][0] == 0 and slices[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:])) and all(lo < hi for lo, hi in slices)
    if all((hi - lo) >= align for lo, hi in slices):
        assert all(lo % align == 0 for lo, _ in slices)


@pytest.mark.parametrize("cut", [1, 1_048_576, 1_500_007, 3_000_000])
def test_a_nodes_slice_generates_exactly_its_rows_of_the_whole(cut):
    info = DataInfo("generate", (3_145_856,), "float32", "normal", 5, None, 0)
    whole = np.empty(info.shape, dtype="float32")
    RowFiller(whole, info).fill(0, info.n_rows)
    parts = []
    for lo, hi in ((0, cut), (cut, info.n_rows)):
        part = info.node_slice(lo, hi)
        arr = np.empty(part.shape, dtype="float32")
        RowFiller(arr, part).fill(0, part.n_rows)
        parts.append(arr)
    assert np.array_equal(np.concatenate(parts), whole)


def test_a_file_slice_is_read_from_its_offset(tmp_path):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    from shmhpc.data import describe_data
    from shmhpc.spec import DataSpec

    info = describe_data(DataSpec(source="npy", path=str(tmp_path / "x.npy")))
    part = info.node_slice(7, 20)
    arr = np.empty(part.shape)
    RowFiller(arr, part).fill(0, part.n_rows)
    assert np.array_equal(arr, x[7:])


def test_mpi_without_a_launcher_is_a_one_line_error(tmp_path):
    (tmp_path / "j.yaml").write_text("name: j\ndata: {size: 1000}\nworkers: 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM_"))}
    out = subprocess.run(
        [sys.executable, "-m", "shmhpc", "run", "j.yaml", "--mpi"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "run --mpi: this process was not started by an MPI launcher; use mpirun -n N" in out.stderr


# -- real mpirun -------------------------------------------------------------------------------------------


def _mpirun_ready() -> str | None:
    if shutil.which("mpirun") is None:
        return "no mpirun here (apt install openmpi-bin)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'shmhpc[mpi]')"
    return None


@pytest.fixture(scope="module")
def mpirun() -> list[str]:
    reason = _mpirun_ready()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} — under CI this must not skip: .ci/run installs Open MPI")
        pytest.skip(reason)
    return ["mpirun", "--oversubscribe", "-n", "2"]


SPEC = "name: {name}\ndata: {{size: 4_000_000, seed: 0}}\nworkers: {workers}\nchunks_per_worker: 2\nrepeats: 3\n"


def _launch(mpirun: list[str], tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*mpirun, sys.executable, "-m", "shmhpc", "run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **MPI_ENV},
        timeout=timeout,
    )


@pytest.mark.parametrize("accumulate", ["float64", "native"])
def test_two_nodes_give_the_single_nodes_value_bit_for_bit(mpirun, tmp_path, accumulate, no_leak):
    """2 ranks × 1 worker × 2 chunks cut where 1 node × 2 workers × 2 chunks does: the same chunk states,
    folded in the same order."""
    (tmp_path / "j.yaml").write_text(SPEC.format(name="j", workers=1) + f"accumulate: {accumulate}\n")
    out = _launch(mpirun, tmp_path, "j.yaml", "--mpi", "-q", "--report", "two.json")
    assert out.returncode == 0, out.stdout + out.stderr
    one = run_cli("run", "j.yaml", "-q", "--set", "workers=2", "--report", "one.json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two, single = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "one.json"))
    assert two["status"] == "ok" and two["result"]["verified"] is True
    assert two["result"]["value"] == single["result"]["value"]  # exactly
    assert two["mpi"]["size"] == 2 and two["mpi"]["launcher"] == "mpirun (Open MPI)"
    assert two["mpi"]["library"].startswith("Open MPI")
    nodes = two["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1] and [n["status"] for n in nodes] == ["ok", "ok"]
    assert nodes[0]["rows"][0] == 0 and nodes[0]["rows"][1] == nodes[1]["rows"][0] and nodes[1]["rows"][1] == 4_000_000
    assert all(n["result"]["verified"] for n in nodes)
    assert [w["mpi_rank"] for w in two["workers"]] == [0, 1]
    assert len(two["timings"]["repeat_s"]) == 3 and two["timings"]["combine_s"] >= 0
    assert two["data"]["shape"] == [4_000_000]
    assert "mpi: 2 ranks on" in out.stdout and "mpi rank 1 on" in out.stdout
    placed = two["placement"]["partitions"]  # every node's partitions, in global rows
    assert [p["mpi_rank"] for p in placed] == [0, 1] and placed[1]["start"] == nodes[1]["rows"][0]
    cmp = run_cli("compare", "one.json", "two.json", cwd=tmp_path)  # 1 node against 2: a legitimate comparison
    assert cmp.returncode == 0, cmp.stderr
    assert "[compact nodes=1]" in cmp.stdout and "[compact nodes=2]" in cmp.stdout
    assert cmp.stdout.count("pages: first-touch:") == 3 and "mpi rank 1 on " in cmp.stdout


def test_a_failing_rank_fails_the_job_naming_it(mpirun, tmp_path, no_leak):
    """A kernel that raises on rank 1 only: the job ends promptly, rank 0's report names rank 1 and the cause."""
    (tmp_path / "k.py").write_text(
        "import os\n"
        "def boom(chunk):\n"
        "    if os.environ.get('OMPI_COMM_WORLD_RANK') == '1':\n"
        "        raise ValueError('boom on rank 1')\n"
        "    return float(chunk.sum())\n"
    )
    (tmp_path / "j.yaml").write_text(SPEC.format(name="j", workers=1) + "kernel: k:boom\n")
    out = _launch(mpirun, tmp_path, "j.yaml", "--mpi", "-q", "--report", "r.json", timeout=60)
    assert out.returncode != 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["status"] == "failed" and rep["error"].startswith("rank 1 ("), rep["error"]
    assert "ValueError: boom on rank 1" in rep["error"]
    assert [n["status"] for n in rep["nodes"]] == ["failed", "failed"]
    assert "error: rank 1 (" in out.stderr


SLOW_KERNEL = "import time\ndef slow(chunk):\n    time.sleep(0.2)\n    return float(chunk.sum())\n"


@contextlib.contextmanager
def _slow_job(mpirun: list[str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen, list[psutil.Process]]]:
    """A 2-rank job of 100 slow repeats, started and some seconds into its repeats: (mpirun, its two ranks)."""
    (tmp_path / "k.py").write_text(SLOW_KERNEL)
    spec = SPEC.format(name="j", workers=1).replace("repeats: 3", "repeats: 100") + "kernel: k:slow\n"
    (tmp_path / "j.yaml").write_text(spec)
    proc = subprocess.Popen(
        [*mpirun, sys.executable, "-m", "shmhpc", "run", "j.yaml", "--mpi", "-q", "--report", "r.json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **MPI_ENV},
    )
    try:
        deadline = time.monotonic() + 60
        ranks: list[psutil.Process] = []
        while time.monotonic() < deadline and len(ranks) < 2:
            ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--mpi" in " ".join(p.cmdline())]
            time.sleep(0.1)
        assert len(ranks) == 2, "both ranks started"
        time.sleep(3.0)  # into the repeats
        yield proc, ranks
    finally:
        proc.kill()
        proc.wait()


def test_a_stop_signal_to_every_rank_ends_in_one_interrupted_report(mpirun, tmp_path, no_leak):
    """As Slurm's time-limit warning reaches every task: each rank finishes its round, they stop together, and
    rank 0 writes one `interrupted` report for the job."""
    with _slow_job(mpirun, tmp_path) as (proc, ranks):
        t0 = time.monotonic()
        for p in ranks:
            p.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["status"] == "interrupted" and "SIGUSR1" in rep["error"], rep.get("error")
    assert [n["status"] for n in rep["nodes"]] == ["interrupted", "interrupted"]
    assert 0 < len(rep["timings"]["repeat_s"]) < 100 and took < 10, (took, err)


def test_tasks_that_started_as_mpi_singletons_are_refused(mpirun, tmp_path, no_leak):
    """What srun without --mpi=pmix does to Open MPI 5: the launcher says 2 tasks, MPI sees 1 each."""
    (tmp_path / "j.yaml").write_text(SPEC.format(name="j", workers=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM_"))}
    env.update(MPI_ENV)
    env.update({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})  # an srun task, no MPI plugin
    out = subprocess.run(
        [sys.executable, "-m", "shmhpc", "run", "j.yaml", "--mpi", "-q", "--report", "r.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "srun (no MPI plugin) started 2 tasks, but this one is rank 0 of 1 in MPI" in out.stderr
    assert "srun --mpi=pmix" in out.stderr


def test_a_rank_killed_mid_run_ends_the_job_within_seconds_and_leaves_no_segment(mpirun, tmp_path, no_leak):
    """SIGKILL to rank 1's launcher mid-run: mpirun ends the job, the survivors stop, and every segment goes —
    the killed launcher's too (its workers remove it when they find their launcher dead)."""
    with _slow_job(mpirun, tmp_path) as (proc, ranks):
        victim = next(p for p in ranks if p.environ().get("OMPI_COMM_WORLD_RANK") == "1")
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    assert proc.returncode != 0 and took < 15, (took, err)
    assert "signal 9" in err or "Killed" in err, err  # mpirun names the rank that died
    report = tmp_path / "r.json"
    if report.exists() and report.stat().st_size:  # rank 0 writes one unless mpirun's SIGKILL came first
        rep = json.loads(report.read_text())
        assert rep["status"] in ("interrupted", "failed") and "no word from rank 1" in rep["error"], rep["error"]
    time.sleep(1.0)  # the orphaned workers notice, remove the segment and exit


def test_a_npy_file_is_read_by_offset_each_node_its_slice(mpirun, tmp_path, no_leak):
    x = np.random.default_rng(3).standard_normal((300_001, 3))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "j.yaml").write_text(
        "name: f\ndata: {source: npy, path: x.npy}\nworkers: 1\nchunks_per_worker: 2\nrepeats: 2\nkernel: max\n"
    )
    out = _launch(mpirun, tmp_path, "j.yaml", "--mpi", "-q", "--report", "r.json")
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["result"]["value"] == float(x.max()) and rep["result"]["verified"] is True
    assert rep["result"]["reference"] == float(x.max()), "max: the nodes' references combine"
    lo, hi = rep["nodes"][1]["rows"]
    assert rep["nodes"][1]["result"]["value"] == float(x[lo:hi].max()), "node 1 reduced exactly its rows"
    assert all(n["topology"]["usable"] and n["host_info"]["hostname"] for n in rep["nodes"])
