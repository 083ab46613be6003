"""Everything decided before a process starts: the data, the placement, the kernel, the report path.

``prepare`` is what ``plan``, ``validate``, ``sweep``'s pre-checks and ``run`` share. It reads the
spec and the machine (or a fake sysfs tree) and nothing else: no shared memory, no pool, no signal
handlers, so planning for another machine never touches this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .allocation import slurm_allocation, slurm_job_label, step_cpu_problem
from .cpulist import format_cpulist
from .data import DataInfo, describe_data
from .errors import SpecError
from .fastsum import choose_engine
from .hugepages import SegmentPages
from .hugepages import choose as choose_pages
from .kernels import make_kernel
from .numa_policy import check_nodes
from .placement import Plan, cpus_needed, plan_job
from .reductions import BuiltinKernel
from .report import now_stamp
from .spec import JobSpec, policy_slug
from .topology import Topology

__all__ = ["Prepared", "prepare", "report_path_for", "check_slurm_step", "check_runnable_here"]


@dataclass
class Prepared:
    """A job ready to run: its spec, data description, plan and kernel (imported once, here)."""

    spec: JobSpec
    data: DataInfo
    plan: Plan
    topology: Topology
    search_path: tuple[str, ...]
    kernel: Any
    engine: str = "numpy"  # what sums built-in sum/mean (shmhpc.fastsum.choose_engine)
    engine_reason: str = ""
    pages: SegmentPages = field(default_factory=lambda: SegmentPages("auto"))  # hugetlbfs or /dev/shm, and why


def prepare(
    spec: JobSpec, topology: Topology, spec_dir: str | os.PathLike[str] = ".", data: DataInfo | None = None
) -> Prepared:
    """Everything checkable before a process starts: data files, placement, kernel. Raises SpecError.

    ``data``: the array this process shares, when it is not the spec's whole data (one node's slice of a
    multi-node job).
    """
    errors: list[str] = []
    plan = kernel = None
    pages = SegmentPages(spec.huge_pages)
    if data is None:
        try:
            data = describe_data(spec.data, spec_dir)
        except SpecError as exc:
            errors.extend(exc.messages)
    if data is not None:
        # Huge pages first: on hugetlbfs, worker boundaries must fall on its pages.
        pages = choose_pages(spec.huge_pages, data.nbytes, sys_root=topology.root)
        try:
            plan = plan_job(
                pinning=spec.pinning,
                workers=spec.workers,
                threads_per_worker=spec.threads_per_worker,
                topology=topology,
                n_rows=data.n_rows,
                row_bytes=data.row_bytes,
                chunks_per_worker=spec.chunks_per_worker,
                partition=spec.numa.partition,
                oversubscribe=spec.oversubscribe,
                segment_page_bytes=pages.page_bytes,
            )
        except SpecError as exc:
            errors.extend(exc.messages)
    errors.extend(check_nodes(spec.numa.nodes, topology))
    search_path = (str(Path(spec_dir).resolve()),)
    try:
        kernel = make_kernel(spec.kernel, spec.accumulate, list(search_path))
    except SpecError as exc:
        errors.extend(exc.messages)
    engine, engine_reason = "numpy", ""
    if data is not None and plan is not None and kernel is not None:
        try:
            engine, engine_reason = set_engine(spec, data, plan, kernel)
        except ValueError as exc:
            errors.append(str(exc))
    if errors or data is None or plan is None:
        raise SpecError(errors)
    return Prepared(spec, data, plan, topology, search_path, kernel, engine, engine_reason, pages)


def set_engine(spec: JobSpec, data: DataInfo, plan: Plan, kernel: Any) -> tuple[str, str]:
    """What sums the chunks (:func:`shmhpc.fastsum.choose_engine`), set on a built-in kernel; (engine, why).
    Raises ``ValueError`` for an engine the kernel or data cannot have (``engine: numba`` with a user kernel)."""
    engine, reason = choose_engine(
        spec.engine, spec.kernel, data.dtype, data.nbytes // max(1, len(plan.workers)), spec.warmup + spec.repeats
    )
    if isinstance(kernel, BuiltinKernel):  # choose_engine gives numba to built-in sum/mean only
        kernel.engine = engine
    return engine, reason


def report_path_for(
    spec: JobSpec, override: str | None = None, workers: int | None = None, policy: str | None = None
) -> Path:
    """The report's path: ``override`` or the spec's ``report:``, placeholders filled in."""
    template = override or spec.report
    return Path(
        template.format(
            name=spec.name,
            timestamp=now_stamp(precise=True),
            workers=workers if workers is not None else spec.workers,
            pinning=policy_slug(policy or str(spec.pinning)),
            slurm_job=slurm_job_label(),
        )
    )


def check_slurm_step(spec: JobSpec, topology: Topology) -> None:
    """Inside a Slurm job, refuse a step that was given fewer CPUs than the job needs, naming the cause."""
    alloc = slurm_allocation()
    if alloc is None or spec.oversubscribe or topology.usable_source == "override":
        return
    needed = cpus_needed(spec.pinning, spec.workers, spec.threads_per_worker)
    problem = step_cpu_problem(alloc, topology.usable, needed)
    if problem:
        raise SpecError(problem)


def check_runnable_here(prep: Prepared) -> None:
    """A plan for another machine (fake sysfs, --allowed-cpus) may name CPUs we cannot run on; a job that
    requires huge pages needs them here."""
    here = os.sched_getaffinity(0)
    wanted = {c for w in prep.plan.workers for c in w.cpus}
    missing = sorted(wanted - here)
    if missing:
        raise SpecError(
            f"pinning: cpu {format_cpulist(missing)} is planned but this process may only run on "
            f"{format_cpulist(here)}; plan for other machines with `shmhpc plan`, run here without --sysfs-root"
        )
    problem = prep.pages.problem()  # huge_pages: require, and none to be had here
    if problem:
        raise SpecError(problem)
