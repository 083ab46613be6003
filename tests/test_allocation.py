"""Reading the Slurm allocation from the environment, and the messages for steps with too few CPUs.

The real thing runs in tests/test_slurm.py; here every branch is driven by the environment Slurm
would set, which is all shmhpc reads.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli, write_spec

from shmhpc.allocation import job_cpus_on_node, slurm_allocation, slurm_job_label, step_cpu_problem
from shmhpc.errors import SpecError
from shmhpc.planning import report_path_for
from shmhpc.spec import load_spec, slurm_time_minutes

JOB = {
    "SLURM_JOB_ID": "42",
    "SLURM_CPUS_PER_TASK": "4",
    "SLURM_JOB_CPUS_PER_NODE": "4",
    "SLURM_CPUS_ON_NODE": "4",
    "SLURM_JOB_NODELIST": "n1",
    "SLURM_JOB_PARTITION": "debug",
}


@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ("2", 0, 2),
        ("4(x2),2", 0, 4),
        ("4(x2),2", 1, 4),
        ("4(x2),2", 2, 2),
        ("4(x2),2", 3, None),
        ("", 0, None),
        ("x", 0, None),
    ],
)
def test_job_cpus_per_node_notation(text, index, expected):
    assert job_cpus_on_node(text, index) == expected


def test_outside_slurm():
    assert slurm_allocation({}) is None
    assert slurm_allocation({"SLURM_JOB_ID": "not-a-number"}) is None
    assert slurm_job_label({}) == "local"


def test_labels_of_jobs_and_array_tasks():
    assert slurm_job_label(JOB) == "42"
    task = {**JOB, "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2"}
    alloc = slurm_allocation(task)
    assert alloc.label == "40_2" and alloc.to_dict()["label"] == "40_2"
    assert alloc.to_dict()["partition"] == "debug" and alloc.job_cpus_here == 4


def test_enough_cpus_is_no_problem():
    assert step_cpu_problem(slurm_allocation(JOB), [0, 1, 2, 3], 4) is None
    assert step_cpu_problem(slurm_allocation(JOB), [0, 1, 2, 3], None) is None
    assert step_cpu_problem(slurm_allocation(JOB), [0, 1], 2) is None  # fewer workers than the job has


def test_a_step_narrower_than_the_job():
    step = {**JOB, "SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "1", "SLURM_CPU_BIND_TYPE": "mask_cpu:"}
    msg = step_cpu_problem(slurm_allocation(step), [3], 4)
    assert msg.startswith("slurm: job 42 needs 4 CPUs the plan pins, but this process may only run on 1 (3)")
    assert "this srun step got 1 of the job's 4 CPUs on this node, bound with 'mask_cpu'" in msg
    assert "Slurm 22.05" in msg and "srun --cpu-bind=none -c $SLURM_CPUS_PER_TASK" in msg


def test_workers_auto_expects_the_whole_allocation():
    step = {**JOB, "SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "1"}
    msg = step_cpu_problem(slurm_allocation(step), [0], None)
    assert "needs the 4 CPUs it holds on this node" in msg and "srun step got 1 of the job's 4" in msg


def test_a_job_that_asked_for_too_few():
    small = {**JOB, "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_CPUS_PER_NODE": "1", "SLURM_CPUS_ON_NODE": "1"}
    msg = step_cpu_problem(slurm_allocation(small), [0], 2)
    assert "the job holds only 1 CPUs on this node; submit with --cpus-per-task=2" in msg


def test_a_bound_batch_shell():
    bound = {**JOB, "SLURM_CPU_BIND_TYPE": "cores"}
    msg = step_cpu_problem(slurm_allocation(bound), [0], 4)
    assert "the task was bound with 'cores', a mask every worker inherits" in msg


def test_report_placeholder_slurm_job(tmp_path, monkeypatch):
    spec = load_spec(
        write_spec(tmp_path / "j.yaml", "name: j\ndata: {size: 1000}\nreport: r/{name}-{slurm_job}.json\n")
    )
    for k in [*JOB, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"]:
        monkeypatch.delenv(k, raising=False)
    assert str(report_path_for(spec)) == "r/j-local.json"
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert str(report_path_for(spec)) == "r/j-7.json"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert str(report_path_for(spec)) == "r/j-5_1.json"


def test_a_run_outside_slurm_records_no_allocation(tmp_path, no_leak):
    write_spec(
        tmp_path / "j.yaml",
        "name: j\ndata: {size: 100000}\nworkers: 1\nrepeats: 1\nreport: '{name}-{slurm_job}.json'\n",
    )
    out = run_cli("run", "j.yaml", "-q", cwd=tmp_path, env={"SLURM_JOB_ID": ""})
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "j-local.json").read_text())["slurm"] is None


def test_a_run_in_a_too_narrow_step_fails_before_loading(tmp_path, no_leak):
    write_spec(tmp_path / "j.yaml", "name: j\ndata: {size: 100000}\nworkers: 2\nrepeats: 1\n")
    env = {**JOB, "SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "1"}
    out = run_cli("run", "j.yaml", "-q", "--allowed-cpus", "0", cwd=tmp_path, env=env)
    # --allowed-cpus is a deliberate override: shmhpc plans for it and does not blame the step
    assert "srun step" not in out.stderr
    out = run_cli("run", "j.yaml", "-q", "--set", "workers=4", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "needs 4 CPUs the plan pins" in out.stderr and "Traceback" not in out.stderr
    rep = json.loads((tmp_path / "reports" / "j.json").read_text())
    assert rep["status"] == "failed" and rep["slurm"]["job_id"] == 42 and "data" not in rep


# -- the slurm: section of the spec -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        (30, 30),
        ("30", 30),
        ("1:30", 1.5),
        ("1:30:00", 90),
        ("2-12", 2 * 1440 + 720),
        ("1-0:30", 1470),
        ("1-0:30:30", 1470.5),
        ("UNLIMITED", None),
    ],
)
def test_slurm_time_formats(text, minutes):
    assert slurm_time_minutes(text) == minutes


def test_unquoted_times_stay_text(tmp_path):
    """YAML 1.1 reads 1:30:00 as 5400; a spec means the Slurm time it shows."""
    spec = load_spec(write_spec(tmp_path / "j.yaml", "name: j\ndata: {size: 1000}\nslurm: {time: 1:30:00}\n"))
    assert spec.slurm.time == "1:30:00"
    assert load_spec(ROOT / "jobs" / "sum-pinned.yaml", ["slurm.time=10:00"]).slurm.time == "10:00"


def test_slurm_section_errors_name_the_field(tmp_path):
    path = write_spec(tmp_path / "j.yaml", "name: j\ndata: {size: 1000}\nslurm: {tme: 5, mem: lots, nodes: 0}\n")
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    text = "\n".join(exc.value.messages)
    assert "slurm.tme: unknown key; did you mean 'time'?" in text
    assert "slurm.mem: not a Slurm memory size" in text and "slurm.nodes:" in text
