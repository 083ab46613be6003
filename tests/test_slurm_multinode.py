"""`shmhpc slurm submit --template multinode` on a real 2-node Slurm: `srun --mpi=pmix` and `run --mpi`.

The module starts its own Slurm beside the main one (tests/slurm/local-slurm.sh with two emulated nodes
n1 and n2 on this host, on other ports), submits the template, and stops it again. Needs root (Debian's
slurm-wlm, munge, libpmix-dev), Open MPI and mpi4py; without them the tests skip, except under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, load_json, run_cli, write_spec
from test_mpi import SLOW_KERNEL
from test_slurm import log_of, submit, wait_gone

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DIR = Path("/tmp/shmhpc-slurm-2nodes")
SCRIPT = ROOT / "tests" / "slurm" / "local-slurm.sh"
SETTINGS = {"SHMHPC_SLURM_DIR": str(DIR), "SHMHPC_SLURM_NODES": "2", "SHMHPC_SLURM_PORT": "6917"}
SPEC = """\
name: mn
data: {source: generate, size: 4_000_000, dtype: float32, seed: 0}
workers: 1
chunks_per_worker: 2
repeats: 3
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts a second local Slurm (slurmd runs as root here)"
    if shutil.which("mpirun") is None:
        return "no Open MPI here (apt install openmpi-bin)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'shmhpc[mpi]')"
    return None


@pytest.fixture(scope="module")
def slurm2() -> Iterator[dict[str, str]]:
    why = _missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} — under CI this must not skip")
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SETTINGS)
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.fail(f"the 2-node Slurm did not start:\n{started.stdout}{started.stderr}")
    env["SLURM_CONF"] = str(DIR / "etc" / "slurm.conf")
    env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def test_multinode_template_runs_one_launcher_per_node(slurm2, tmp_path, no_leak):
    write_spec(tmp_path / "job.yaml", SPEC)
    job = submit(slurm2, tmp_path, "job.yaml", "--template", "multinode", "--nodes", "2", "--python", sys.executable)
    rec = wait_gone(slurm2, job["multinode"])[0]
    log = log_of(tmp_path, f"mn-{job['multinode']}.out")
    assert rec["JobState"] == "COMPLETED", log
    rep = load_json(next((tmp_path / "reports").glob("*.json")))
    assert rep["status"] == "ok" and rep["result"]["verified"] is True, rep.get("error")
    assert rep["mpi"]["size"] == 2 and rep["mpi"]["launcher"] == "srun --mpi=pmix"
    assert [n["host"] for n in rep["nodes"]] == ["n1", "n2"], "one launcher on each node"
    assert rep["slurm"]["nodelist"] == "n[1-2]"
    one = run_cli("run", "job.yaml", "-q", "--set", "workers=2", "--report", "one.json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert rep["result"]["value"] == load_json(tmp_path / "one.json")["result"]["value"], "bit for bit"
    assert "mpi: 2 ranks on n1, n2 (srun --mpi=pmix" in log


def test_a_signal_to_the_multinode_job_ends_it_in_one_interrupted_report(slurm2, tmp_path, no_leak):
    """Slurm's time-limit warning reaches the batch shell (``--signal=B:USR1``), which passes it to srun and so
    to every rank: they stop together after their round, and rank 0 writes one `interrupted` report."""
    import re
    import time

    (tmp_path / "k.py").write_text(SLOW_KERNEL)
    write_spec(tmp_path / "job.yaml", SPEC.replace("repeats: 3", "repeats: 200") + "kernel: k:slow\n")
    job = submit(slurm2, tmp_path, "job.yaml", "--template", "multinode", "--nodes", "2", "--python", sys.executable)
    jid = job["multinode"]
    log = tmp_path / f"mn-{jid}.out"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not re.search(r"repeat 2/", log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", jid], env=slurm2, check=True, timeout=30)
    rec = wait_gone(slurm2, jid)[0]
    rep = load_json(next((tmp_path / "reports").glob("*.json")))
    assert rep["status"] == "interrupted" and "SIGUSR1" in rep["error"], (rep.get("error"), log_of(tmp_path, log.name))
    assert [n["status"] for n in rep["nodes"]] == ["interrupted", "interrupted"]
    assert [n["host"] for n in rep["nodes"]] == ["n1", "n2"] and 0 < len(rep["timings"]["repeat_s"]) < 200
    assert rec["JobState"] in ("COMPLETED", "FAILED"), rec
