"""The Slurm allocation this process runs in, read from the environment Slurm sets.

Slurm tells a job what it was given through ``SLURM_*`` variables: the job and array ids, the
node list, the CPUs per task and per node, and how ``srun`` bound the task (``SLURM_CPU_BIND*``).
The CPUs a process may really use are its affinity ∩ its cgroup (``topology``); comparing the two
catches the classic binding mistakes before any data is loaded:

* since Slurm 22.05 ``srun`` inside a batch job no longer inherits ``--cpus-per-task``, so a step
  started without ``-c`` runs on one CPU (https://github.com/snakemake/snakemake-executor-plugin-slurm/issues/41);
* a task bound with ``--cpu-bind=cores`` (the default on many sites) hands its one-core mask to every
  worker it starts (https://github.com/mathworks/matlab-parallel-slurm-plugin/issues/5);
* ``--hint=nomultithread`` halves the mask on SMT nodes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .cpulist import format_cpulist

__all__ = [
    "SlurmAllocation",
    "cpu_bind_type",
    "job_cpus_on_node",
    "slurm_allocation",
    "slurm_job_label",
    "step_cpu_problem",
]

OUTSIDE_SLURM_LABEL = "local"  # what {slurm_job} becomes outside a Slurm job


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = env.get(key, "")
    return int(v) if v.isdigit() else None


def job_cpus_on_node(per_node: str | None, node_index: int) -> int | None:
    """This node's entry of ``SLURM_JOB_CPUS_PER_NODE`` (``"4(x2),2"`` means 4, 4, 2), or None.

    Inside an ``srun`` step ``SLURM_CPUS_ON_NODE`` counts the step's CPUs; this is the job's.
    """
    if not per_node:
        return None
    counts: list[int] = []
    for part in per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_index] if 0 <= node_index < len(counts) else None


@dataclass(frozen=True)
class SlurmAllocation:
    """What Slurm says about the job this process belongs to (all from ``SLURM_*`` variables)."""

    job_id: int
    array_job_id: int | None
    array_task_id: int | None
    step_id: str | None
    job_name: str | None
    partition: str | None
    nodelist: str | None
    cpus_per_task: int | None
    job_cpus_per_node: str | None  # e.g. "2" or "4(x2)": Slurm's own compressed notation
    job_cpus_here: int | None  # the job's CPUs on this node (its entry of job_cpus_per_node)
    cpus_on_node: int | None  # SLURM_CPUS_ON_NODE: the job's, or in an srun step the step's
    cpu_bind: dict[str, str]  # SLURM_CPU_BIND, _TYPE, _LIST, _VERBOSE as set by srun

    @property
    def label(self) -> str:
        """``{slurm_job}``: ``ARRAYJOB_TASK`` for an array task (like sbatch's ``%A_%a``), else the job id."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def cpu_bind_type(cpu_bind: Mapping[str, str] | None) -> str:
    """How srun bound the task, from its ``SLURM_CPU_BIND_TYPE`` (``"mask_cpu:"`` → ``mask_cpu``), or ``""``."""
    return str((cpu_bind or {}).get("SLURM_CPU_BIND_TYPE") or "").rstrip(":,")


def slurm_allocation(env: Mapping[str, str] | None = None) -> SlurmAllocation | None:
    """The Slurm job of this process, or None outside Slurm (no numeric ``SLURM_JOB_ID``)."""
    env = os.environ if env is None else env
    job = _int(env, "SLURM_JOB_ID")
    if job is None:
        return None
    return SlurmAllocation(
        job_id=job,
        array_job_id=_int(env, "SLURM_ARRAY_JOB_ID"),
        array_task_id=_int(env, "SLURM_ARRAY_TASK_ID"),
        step_id=env.get("SLURM_STEP_ID") or None,
        job_name=env.get("SLURM_JOB_NAME") or None,
        partition=env.get("SLURM_JOB_PARTITION") or None,
        nodelist=env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or None,
        cpus_per_task=_int(env, "SLURM_CPUS_PER_TASK"),
        job_cpus_per_node=env.get("SLURM_JOB_CPUS_PER_NODE") or None,
        job_cpus_here=job_cpus_on_node(env.get("SLURM_JOB_CPUS_PER_NODE"), _int(env, "SLURM_NODEID") or 0),
        cpus_on_node=_int(env, "SLURM_CPUS_ON_NODE"),
        cpu_bind={k: v for k, v in sorted(env.items()) if k.startswith("SLURM_CPU_BIND")},
    )


def slurm_job_label(env: Mapping[str, str] | None = None) -> str:
    """What the report placeholder ``{slurm_job}`` becomes here: ``123``, ``120_3``, or ``local``."""
    alloc = slurm_allocation(env)
    return alloc.label if alloc else OUTSIDE_SLURM_LABEL


def step_cpu_problem(alloc: SlurmAllocation, usable: tuple[int, ...] | list[int], needed: int | None) -> str | None:
    """Why this process has fewer CPUs than the job needs, and the fix; None when it has enough.

    ``needed`` is the number of CPUs the plan pins (None when only the machine can tell, as for
    ``workers: auto``): then the CPUs the job holds on this node are what the process should see.
    """
    have = len(usable)
    on_node = alloc.job_cpus_here if alloc.job_cpus_here is not None else alloc.cpus_on_node
    want = needed if needed is not None else (on_node if on_node is not None else alloc.cpus_per_task)
    if want is None or have >= want:
        return None
    what = f"{needed} CPUs the plan pins" if needed is not None else f"the {want} CPUs it holds on this node"
    msg = f"slurm: job {alloc.label} needs {what}, but this process may only run on {have} ({format_cpulist(usable)})"
    bind = cpu_bind_type(alloc.cpu_bind) or alloc.cpu_bind.get("SLURM_CPU_BIND", "").rstrip(":,")
    fix = "start it with `srun --cpu-bind=none -c $SLURM_CPUS_PER_TASK …` (as the templates in slurm/ do)"
    if on_node is not None and needed is not None and on_node < needed:
        return (
            f"{msg}: the job holds only {on_node} CPUs on this node; submit with --cpus-per-task={needed} "
            "(`shmhpc slurm render` sets it from the plan)"
        )
    if alloc.step_id is not None and on_node is not None and have < on_node:
        bound = f", bound with {bind!r}" if bind and "none" not in bind else ""
        return (
            f"{msg}: this srun step got {have} of the job's {on_node} CPUs on this node{bound} (srun -c smaller "
            f"than the job's, or a step that did not inherit --cpus-per-task, as since Slurm 22.05); {fix}"
        )
    if bind and "none" not in bind:
        return f"{msg}: the task was bound with {bind!r}, a mask every worker inherits; {fix}"
    return (
        f"{msg}; the CPUs this process may use are fewer than the job's (--hint=nomultithread halves the mask on "
        f"SMT nodes): {fix}, or set workers to what the allocation has"
    )
