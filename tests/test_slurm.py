"""The batch path on a real Slurm: scripts rendered from slurm/, submitted with sbatch, run by slurmd.

Needs a Slurm this test can submit to: ``bash tests/slurm/local-slurm.sh start`` starts one on this
machine (``.ci/run`` does it before the suite). Without one these tests skip, except under CI
(``CI=true``), where they fail: CI must run them. Jobs are polled with ``squeue``/``scontrol`` every
quarter second (``sbatch --wait`` backs off to tens of seconds); there is no slurmdbd, so no sacct.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_json, our_segments, run_cli, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_DIR = Path(os.environ.get("SHMHPC_SLURM_DIR") or "/tmp/shmhpc-slurm")
SPEC = """\
name: t
data: {{source: generate, size: {size}, dtype: float32, seed: 0}}
workers: 2
pinning: compact
chunks_per_worker: 2
kernel: sum
repeats: {repeats}
warmup: 1
start_method: forkserver
"""


def _slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = SLURM_DIR / "etc" / "slurm.conf"
    if "SLURM_CONF" not in env and conf.is_file():
        env["SLURM_CONF"] = str(conf)
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
        del env[k]  # the tests may themselves run inside a job: submit as from a login shell
    return env


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    env = _slurm_env()
    why = None
    if shutil.which("sbatch") is None:
        why = "Slurm is not installed"
    else:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        states = set(done.stdout.split())
        if done.returncode != 0 or not states & {"idle", "mixed", "allocated"}:
            why = f"no Slurm answers here (sinfo: {' '.join(done.stderr.split()) or sorted(states)})"
    if why:
        msg = f"{why}: start one with `bash tests/slurm/local-slurm.sh start`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg} (CI must run the Slurm tests; .ci/run starts it)")
        pytest.skip(msg)
    return env


def submit(slurm, cwd: Path, *args: str) -> dict[str, str]:
    """``shmhpc slurm submit ARGS`` from ``cwd``; returns {template: job id} from its output."""
    out = run_cli("slurm", "submit", *args, cwd=cwd, env=slurm)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = dict(re.findall(r"^submitted (\S+): job (\d+)", out.stdout, re.M))
    assert jobs, out.stdout
    return jobs


def scontrol_job(slurm, job: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` as one dict per (array task) record."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], env=slurm, capture_output=True, text=True, timeout=30, check=False
    ).stdout
    recs = []
    for line in out.splitlines():
        # JobName may hold spaces: split on the known keys instead of on whitespace
        recs.append(dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", line)))
    return recs


def wait_gone(slurm, job: str, timeout: float = 120) -> list[dict[str, str]]:
    """Poll squeue until the job (every task of an array) has left the queue; its final records."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run(
            ["squeue", "-h", "-j", job], env=slurm, capture_output=True, text=True, timeout=30, check=False
        )
        if q.returncode == 0 and not q.stdout.strip():
            return scontrol_job(slurm, job)
        time.sleep(0.25)
    subprocess.run(["scancel", job], env=slurm, check=False)
    pytest.fail(f"job {job} still in the queue after {timeout} s")


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def job_segments(job: str) -> set[str]:
    return {s for s in our_segments() if f"-j{job}-" in s}


def log_of(cwd: Path, name: str) -> str:
    p = cwd / name
    return p.read_text() if p.is_file() else f"(no log {p})"


# -- runs -------------------------------------------------------------------------------------


def test_pinned_and_unpinned_jobs_run_where_slurm_put_them(slurm, tmp_path):
    write_spec(tmp_path / "job.yaml", SPEC.format(size=2_000_000, repeats=5))
    pinned = submit(slurm, tmp_path, "job.yaml", "--template", "pinned")["pinned"]
    unpinned = submit(slurm, tmp_path, "job.yaml", "--template", "unpinned")["unpinned"]
    for job in (pinned, unpinned):
        rec = wait_gone(slurm, job)[0]
        assert rec["JobState"] == "COMPLETED", log_of(tmp_path, f"t-{job}.out")
    p = load_json(tmp_path / "reports" / f"t-compact-{pinned}.json")
    u = load_json(tmp_path / "reports" / f"t-none-{unpinned}.json")
    for rep, job in ((p, pinned), (u, unpinned)):
        assert rep["status"] == "ok" and rep["result"]["verified"]
        assert rep["slurm"]["job_id"] == int(job) and rep["slurm"]["cpus_per_task"] == 2
        assert rep["slurm"]["nodelist"] and rep["slurm"]["job_cpus_per_node"] == "2"
        assert rep["slurm"]["step_id"] is not None, "the run is an srun step, not the batch shell"
        assert rep["slurm"]["cpu_bind"].get("SLURM_CPU_BIND_TYPE", "").startswith("none")
    allocated = set(p["topology"]["usable"])
    assert len(allocated) == 2
    cpus = [tuple(w["cpus_observed"]) for w in p["workers"]]
    assert len(set(cpus)) == 2 and all(len(c) == 1 for c in cpus), "each pinned worker on its own CPU"
    assert {c for cs in cpus for c in cs} == allocated
    assert all(set(w["cpus_ran_on"]) <= set(w["cpus_observed"]) for w in p["workers"])
    assert not u["plan"]["pinned"]
    assert all(set(w["cpus_observed"]) == set(u["topology"]["usable"]) for w in u["workers"])
    assert not job_segments(pinned) and not job_segments(unpinned)
    log = log_of(tmp_path, f"t-{pinned}.out")
    assert "result: sum = " in log, "the summary goes to the job's log"
    assert f"slurm: job {pinned} on " in log and "2 CPUs per task, step 0, cpu-bind none" in log


def test_compare_array_and_its_dependent_compare_job(slurm, tmp_path):
    write_spec(tmp_path / "job.yaml", SPEC.format(size=2_000_000, repeats=5))
    jobs = submit(
        slurm, tmp_path, "job.yaml", "--template", "compare-array", "--array-throttle", "1", "--log-dir", "logs"
    )
    array, cmp = jobs["compare-array"], jobs["compare-reports"]
    deps = scontrol_job(slurm, cmp)[0]
    assert f"afterany:{array}" in deps.get("Dependency", "") or deps["JobState"] != "PENDING"
    tasks = wait_gone(slurm, array, timeout=180)
    assert sorted(t["JobState"] for t in tasks) == ["COMPLETED", "COMPLETED"], [
        log_of(tmp_path, f"logs/t-{array}_{i}.out") for i in range(2)
    ]
    rec = wait_gone(slurm, cmp)[0]
    assert rec["JobState"] == "COMPLETED", log_of(tmp_path, f"logs/t-compare-{cmp}.out")
    reports = [load_json(tmp_path / "reports" / f"t-{array}_{i}.json") for i in range(2)]
    assert [r["job"]["pinning"] for r in reports] == ["none", "compact"]
    assert [r["slurm"]["array_task_id"] for r in reports] == [0, 1]
    assert all(r["slurm"]["array_job_id"] == int(array) for r in reports)
    text = (tmp_path / "reports" / f"t-{array}-compare.txt").read_text()
    assert "[none]" in text and "[compact]" in text
    assert "SLURM_" not in text, "job ids and ports differ in every job; they are not settings that differ"
    data = json.loads((tmp_path / "reports" / f"t-{array}-compare.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["none", "compact"]
    assert (tmp_path / "logs" / f"t-compare-array-{array}.sbatch").is_file()


# -- stopping: the time limit and scancel -------------------------------------------------------


def test_time_limit_warning_ends_the_run_interrupted_and_clean(slurm, tmp_path):
    """--time 2 with the warning 50 s before the end. Slurm may send it "up to 60 seconds earlier than
    specified" (sbatch(1), --signal), so with --time 1 it could come while Python was still loading (seen
    in CI); 2 minutes keep it at least 10 s after the start, when repeats have finished."""
    write_spec(tmp_path / "job.yaml", SPEC.format(size=1_000_000, repeats=1_000_000))
    job = submit(slurm, tmp_path, "job.yaml", "--time", "2", "--signal-lead-s", "50")["pinned"]
    wait_for(lambda: job_segments(job), 60, "the run's segment")
    rec = wait_gone(slurm, job, timeout=210)[0]
    assert rec["JobState"] in ("FAILED", "COMPLETED"), rec  # shmhpc exits 128+USR1, before the limit
    rep = load_json(tmp_path / "reports" / f"t-compact-{job}.json")
    assert rep["status"] == "interrupted", log_of(tmp_path, f"t-{job}.out")
    assert rep["error"] == "interrupted by SIGUSR1"
    assert rep["exit_code"] == 128 + 10
    assert len(rep["timings"]["repeat_s"]) > 0, "the finished repeats are kept"
    assert not job_segments(job)


def test_scancel_ends_the_run_interrupted_and_clean(slurm, tmp_path):
    write_spec(tmp_path / "job.yaml", SPEC.format(size=1_000_000, repeats=1_000_000))
    job = submit(slurm, tmp_path, "job.yaml")["pinned"]
    wait_for(lambda: "] repeat 1/" in log_of(tmp_path, f"t-{job}.out"), 60, "the run's first repeat")
    subprocess.run(["scancel", job], env=slurm, check=True, timeout=30)
    rec = wait_gone(slurm, job)[0]
    assert rec["JobState"] == "CANCELLED"
    wait_for(lambda: (tmp_path / "reports" / f"t-compact-{job}.json").is_file(), 30, "the report")
    rep = load_json(tmp_path / "reports" / f"t-compact-{job}.json")
    assert (rep["status"], rep["error"]) == ("interrupted", "interrupted by SIGTERM"), log_of(tmp_path, f"t-{job}.out")
    assert len(rep["timings"]["repeat_s"]) > 0
    assert not job_segments(job)


# -- hostile names and the classic srun mistake -------------------------------------------------


def test_hostile_job_name_and_paths_render_and_run(slurm, tmp_path):
    name = "we ird $HOME; 'q' \"dq\" `id` #h"
    d = tmp_path / "a dir; $x 'q'"
    d.mkdir()
    write_spec(d / "job.yaml", SPEC.format(size=1_000_000, repeats=2))
    job = submit(
        slurm, tmp_path, str(d.relative_to(tmp_path) / "job.yaml"), "--job-name", name, "--log-dir", "log dir $x"
    )["pinned"]
    rec = wait_gone(slurm, job)[0]
    assert rec["JobName"] == name
    assert rec["JobState"] == "COMPLETED", log_of(tmp_path, f"log dir $x/t-{job}.out")
    assert load_json(tmp_path / "reports" / f"t-compact-{job}.json")["status"] == "ok"
    assert (tmp_path / "log dir $x" / f"t-{job}.out").is_file()


def test_a_step_with_fewer_cpus_than_the_job_fails_before_loading(slurm, tmp_path):
    """The classic mistake, by hand: the job has 2 CPUs, the srun step gets 1."""
    write_spec(tmp_path / "job.yaml", SPEC.format(size=1_000_000, repeats=2))
    script = tmp_path / "bad.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --cpus-per-task=2\n#SBATCH --output=bad-%j.out\n"
        f"srun -n 1 -c 1 {sys.executable} -m shmhpc run job.yaml --report 'reports/bad-{{slurm_job}}.json'\n"
    )
    out = subprocess.run(
        ["sbatch", "--parsable", str(script)],
        cwd=tmp_path,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job = out.stdout.strip().split(";")[0]
    rec = wait_gone(slurm, job)[0]
    assert rec["JobState"] == "FAILED" and rec["ExitCode"].startswith("2:"), rec
    log = (tmp_path / f"bad-{job}.out").read_text()
    assert "this srun step got 1 of the job's 2 CPUs on this node" in log
    assert "srun --cpu-bind=none -c $SLURM_CPUS_PER_TASK" in log and "Traceback" not in log
    rep = load_json(tmp_path / "reports" / f"bad-{job}.json")
    assert rep["status"] == "failed" and "data" not in rep, "refused before any data was described or loaded"


# -- resources checked against the real partition, before anything is submitted -----------------


def test_workers_auto_takes_a_whole_node_of_the_partition(slurm, tmp_path):
    write_spec(tmp_path / "job.yaml", SPEC.format(size=1_000_000, repeats=2).replace("workers: 2", "workers: auto"))
    out = run_cli("slurm", "render", "job.yaml", cwd=tmp_path, env=slurm)
    assert out.returncode == 0, out.stderr
    node_cpus = os.sched_getaffinity(0)  # the local Slurm's one node is this machine
    assert f"#SBATCH --cpus-per-task={len(node_cpus)} " in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpus-per-task", "999"], "999 CPUs is more than a node of partition debug has"),
        (["--partition", "nosuch; rm -rf /"], "slurm.partition: 'nosuch; rm -rf /' is not a partition of this cluster"),
    ],
)
def test_what_the_partition_cannot_give_is_refused_before_submitting(slurm, tmp_path, args, message):
    write_spec(tmp_path / "job.yaml", SPEC.format(size=1_000_000, repeats=2))
    before = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True, check=True).stdout
    out = run_cli("slurm", "submit", "job.yaml", *args, cwd=tmp_path, env=slurm)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "submitted" not in out.stdout
    after = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True, check=True).stdout
    assert set(after.split()) <= set(before.split()), "no job was submitted"
