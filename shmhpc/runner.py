"""Running a job: plan → shared segment → pinned pool → load → repeats → verify → report.

The launcher alone creates and unlinks the segment, in ``finally``: a run that
fails (bad placement, a worker that dies or raises, failed verification, a
signal) leaves nothing in ``/dev/shm`` and still writes a report saying why.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .allocation import slurm_allocation, slurm_job_label, step_cpu_problem
from .contention import ContentionProbe
from .cpulist import format_cpulist
from .data import DataInfo, describe_data
from .errors import RunError, RunInterrupted, ShmhpcError, SpecError
from .kernels import combine_all, make_kernel, state_count
from .placement import Plan, cpus_needed, plan_job
from .pool import CTL_FIELDS, Pool, WorkerInit, ctl_bytes
from .progress import NullProgress
from .report import REPORT_VERSION, host_info, now_stamp, stats, write_report
from .resources import check_fits
from .shm import PAGE, Segment, default_shm_dir, find_stale, remove_stale
from .signals import StopSignals
from .spec import JobSpec, policy_slug
from .threads import thread_env
from .topology import Topology
from .verify import verify

__all__ = ["prepare", "run_job", "Prepared", "report_path_for"]


@dataclass
class Prepared:
    spec: JobSpec
    data: DataInfo
    plan: Plan
    topology: Topology
    search_path: tuple[str, ...]


def prepare(spec: JobSpec, topology: Topology, spec_dir: str | os.PathLike[str] = ".") -> Prepared:
    """Everything checkable before a process starts: data files, placement, kernel. Raises SpecError."""
    errors: list[str] = []
    data = plan = None
    try:
        data = describe_data(spec.data, spec_dir)
    except SpecError as exc:
        errors.extend(exc.messages)
    if data is not None:
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
            )
        except SpecError as exc:
            errors.extend(exc.messages)
    search_path = (str(Path(spec_dir).resolve()),)
    try:
        make_kernel(spec.kernel, spec.accumulate, list(search_path))
    except SpecError as exc:
        errors.extend(exc.messages)
    if errors:
        raise SpecError(errors)
    assert data is not None and plan is not None
    return Prepared(spec, data, plan, topology, search_path)


def report_path_for(
    spec: JobSpec, override: str | None = None, workers: int | None = None, policy: str | None = None
) -> Path:
    template = override or spec.report
    safe_policy = policy_slug(policy or str(spec.pinning))
    return Path(
        template.format(
            name=spec.name,
            timestamp=now_stamp(precise=True),
            workers=workers if workers is not None else spec.workers,
            pinning=safe_policy,
            slurm_job=slurm_job_label(),
        )
    )


def _check_slurm_step(spec: JobSpec, topology: Topology) -> None:
    """Inside a Slurm job, refuse a step that was given fewer CPUs than the job needs, naming the cause."""
    alloc = slurm_allocation()
    if alloc is None or spec.oversubscribe or topology.usable_source == "override":
        return
    needed = cpus_needed(spec.pinning, spec.workers, spec.threads_per_worker)
    problem = step_cpu_problem(alloc, topology.usable, needed)
    if problem:
        raise SpecError(problem)


def _check_runnable_here(prep: Prepared) -> None:
    """A plan for another machine (fake sysfs, --allowed-cpus) may name CPUs we cannot run on."""
    here = os.sched_getaffinity(0)
    wanted = {c for w in prep.plan.workers for c in w.cpus}
    missing = sorted(wanted - here)
    if missing:
        raise SpecError(
            f"pinning: cpu {format_cpulist(missing)} is planned but this process may only run on "
            f"{format_cpulist(here)}; plan for other machines with `shmhpc plan`, run here without --sysfs-root"
        )


def _check_report_target(path: Path, template: str, force: bool) -> None:
    """Refuse to overwrite an earlier report unless asked (--force, or {timestamp} in the name)."""
    if path.exists() and not force:
        raise SpecError(
            f"report: {str(path)!r} already exists; pass --force to overwrite it or put {{timestamp}} in report: "
            f"(template {template!r})"
        )
    if path.exists() and path.is_dir():
        raise SpecError(f"report: {str(path)!r} is a directory")


def sweep_stale_segments(shm_dir: str) -> list[str]:
    """Remove segments left by launchers of ours that died (SIGKILL, OOM killer); one line each."""
    removed = remove_stale(find_stale(shm_dir))
    return [f"removed stale segment {s.name} ({s.size_bytes / 1e6:,.1f} MB): {s.reason}" for s in removed]


def _new_report(spec: JobSpec, topology: Topology) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "status": "failed",
        "error": None,
        "job": spec.model_dump(mode="json"),
        "host": host_info(),
        "topology": topology.to_dict(),
        "started_at": now_stamp(),
        "warnings": [],
        "slurm": alloc.to_dict() if (alloc := slurm_allocation()) else None,
    }


def run_job(
    spec: JobSpec,
    topology: Topology,
    *,
    spec_dir: str | os.PathLike[str] = ".",
    report_path: str | None = None,
    progress: NullProgress | None = None,
    write: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run ``spec`` and return its report (also written to disk unless ``write=False``).

    Never raises for a failed run: the report's ``status`` says ``failed`` or
    ``interrupted`` with ``error``; ``report["exit_code"]`` is what the CLI exits with.
    An existing report file is not overwritten unless ``force`` (the run is refused, exit 2).
    """
    progress = progress or NullProgress()
    report = _new_report(spec, topology)
    t_start = time.perf_counter()
    timings: dict[str, Any] = {}
    seg: Segment | None = None
    pool: Pool | None = None
    shm_dir = default_shm_dir()
    prep: Prepared | None = None
    exit_code = 0
    flag = StopSignals()
    path: Path | None = None
    keep_existing = False  # the target exists and we were not asked to overwrite it: write nothing
    try:
        with flag:
            _check_slurm_step(spec, topology)
            prep = prepare(spec, topology, spec_dir)
            if write:
                path = report_path_for(spec, report_path, len(prep.plan.workers), prep.plan.policy)
                try:
                    _check_report_target(path, report_path or spec.report, force)
                except SpecError:
                    keep_existing = True
                    raise
            report["data"] = prep.data.to_dict()
            report["plan"] = prep.plan.to_dict()
            report["warnings"].extend(prep.plan.warnings)
            _check_runnable_here(prep)
            for line in sweep_stale_segments(shm_dir):
                progress.phase(line)
                report["warnings"].append(line)
            check_fits(prep.data.nbytes, shm_dir)
            # Layout: the array from offset 0, padded to a page, then one control slot per worker.
            ctl_offset = -(-prep.data.nbytes // PAGE) * PAGE
            seg = Segment.create(ctl_offset + ctl_bytes(len(prep.plan.workers)), shm_dir)
            report["segment"] = {"name": seg.name, "dir": shm_dir, "size_bytes": seg.size}
            env = thread_env(spec.threads_per_worker)
            inits = [
                WorkerInit(
                    rank=w.rank,
                    cpus=w.cpus,
                    pin=prep.plan.pinned,
                    threads=spec.threads_per_worker,
                    env=env,
                    segment=seg.name,
                    shm_dir=shm_dir,
                    data=prep.data,
                    rows=w.rows,
                    chunks=w.chunks,
                    kernel=spec.kernel,
                    accumulate=spec.accumulate,
                    search_path=prep.search_path,
                    segment_size=seg.size,
                    ctl_offset=ctl_offset,
                )
                for w in prep.plan.workers
            ]
            pool = Pool(
                inits,
                spec.start_method,
                spec.timeout_s,
                stop_flag=flag,
                ctl=seg.view(np.int64, (len(inits), CTL_FIELDS), ctl_offset),
            )
            progress.phase(f"starting {len(inits)} workers ({spec.start_method})")
            t0 = time.perf_counter()
            hello = pool.start(env)
            timings["pool_start_s"] = time.perf_counter() - t0
            report["warnings"].extend(pool.warnings)
            progress.phase_done("pool start", timings["pool_start_s"])
            workers = _worker_entries(prep.plan, hello)
            report["workers"] = workers
            bad = [w["rank"] for w in workers if not w["pinned_ok"]]
            if bad:
                report["warnings"].append(f"workers {bad} do not run on the CPUs asked for (see cpus_observed)")
            flag.check()
            progress.phase(f"loading {prep.data.nbytes / 1e6:,.1f} MB ({prep.data.source}) by the owning workers")
            t0 = time.perf_counter()
            loads = pool.load()
            timings["load_s"] = time.perf_counter() - t0
            progress.phase_done("load", timings["load_s"])
            for w, ld in zip(workers, loads):
                w["load_s"] = ld["seconds"]
                w["reserved_by"] = ld["reserved_by"]
                w["pages"] = ld["pages"]
            report["pages"] = _pages_by_partition(prep.plan, loads)

            n_rounds = spec.warmup + spec.repeats
            # Not alone on our CPUs (another run, a busy neighbour)? Looked at around the rounds only.
            probe = ContentionProbe(_planned_cpus(prep.plan), shm_dir)
            probe.check_others()
            progress.start_rounds(n_rounds, spec.warmup)
            probe.start([w["pid"] for w in workers])
            for w in workers:
                w["repeat_s"], w["chunk_s"], w["cpus_ran_on"] = [], [], set()
            # Filled as rounds finish, so an interrupted run still reports the repeats it did.
            timings["warmup_s"], timings["repeat_s"] = [], []
            replies: list[dict] = []
            for r in range(n_rounds):
                flag.check()
                wall, replies = pool.run_round(r)
                progress.round_done(r, wall)
                timings["warmup_s" if r < spec.warmup else "repeat_s"].append(wall)
                if r >= spec.warmup:
                    for w, rep in zip(workers, replies):
                        w["repeat_s"].append(sum(rep["seconds"]))
                        w["chunk_s"].append(rep["seconds"])
                        w["cpus_ran_on"].update(rep["cpus"])
            probe.stop()
            probe.check_others()
            report["contention"], lines = probe.result()
            report["warnings"].extend(lines)
            progress.close()
            flag.check()  # a signal during the last repeat still stops the run
            # The launcher has not touched the array yet: its peak RSS here shows that no
            # second copy of the data was made (file data goes straight into shared memory).
            report["memory"] = {
                "array_bytes": prep.data.nbytes,
                "launcher_peak_rss_bytes_before_verify": _peak_rss_bytes(),
            }
            for w in workers:
                w["cpus_ran_on"] = sorted(w["cpus_ran_on"])

            kernel = make_kernel(spec.kernel, spec.accumulate, list(prep.search_path))
            state = _combine_in_row_order(kernel, prep.plan, replies)
            value = kernel.finalize(state)
            report["bandwidth"] = _bandwidth(prep.data.nbytes, timings["repeat_s"])
            t0 = time.perf_counter()
            pool.close()
            timings["teardown_s"] = time.perf_counter() - t0
            pool.ctl = None
            pool = None
            result: dict[str, Any] = {"kernel": spec.kernel, "accumulate": spec.accumulate, "value": value}
            if spec.verify:
                progress.phase("verifying against a single-process reference")
                t0 = time.perf_counter()
                arr = seg.array(prep.data.dtype, prep.data.shape)
                try:
                    check = verify(
                        kernel,
                        value,
                        arr,
                        accumulate=spec.accumulate,
                        chunk_sizes=[(b - a) * prep.data.row_elements for w in prep.plan.workers for a, b in w.chunks],
                        count=state_count(kernel, state),
                    )
                finally:
                    del arr
                timings["verify_s"] = time.perf_counter() - t0
                result.update(check)
                result["value"] = value
            else:
                result.update({"reference": None, "abs_error": None, "rel_error": None, "verified": None})
            report["result"] = result
            if spec.verify and not result["verified"]:
                detail = result.get("detail") or ""
                raise RunError(
                    f"verification failed: {spec.kernel} = {value!r}, reference {result.get('reference')!r}, "
                    f"abs error {result.get('abs_error')!r} > tolerance {result.get('tolerance')!r}"
                    + (f" ({detail})" if detail else "")
                )
            flag.check()  # ... and one during verification or teardown
            report["status"] = "ok"
    except RunInterrupted as exc:
        report["status"] = "interrupted"
        report["error"] = str(exc)
        exit_code = exc.exit_code
    except ShmhpcError as exc:
        report["error"] = str(exc).replace("\n", "; ")
        if isinstance(exc, SpecError):
            report["errors"] = exc.messages
        detail = getattr(exc, "detail", None)
        if detail:
            report["error_detail"] = detail
        exit_code = exc.exit_code
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        report["error"] = "interrupted by SIGINT"
        exit_code = 130
    except Exception as exc:  # a bug of ours: still clean up and say what happened
        import traceback

        report["error"] = f"internal error: {type(exc).__name__}: {exc}"
        report["error_detail"] = traceback.format_exc()
        exit_code = 1
    finally:
        progress.close()
        if pool is not None:
            t0 = time.perf_counter()
            pool.close()
            timings["teardown_s"] = time.perf_counter() - t0
            pool.ctl = None  # drop the view so the mapping can be closed
            pool = None
        if seg is not None:
            seg.close()
            seg.unlink()
        timings["total_s"] = time.perf_counter() - t_start
        if "repeat_s" in timings:
            timings["repeat"] = stats(timings["repeat_s"])
        report["timings"] = timings
        if "workers" in report:
            for w in report["workers"]:
                if isinstance(w.get("cpus_ran_on"), set):
                    w["cpus_ran_on"] = sorted(w["cpus_ran_on"])
        report["exit_code"] = exit_code
        if write and not keep_existing:
            if path is None:  # the run failed before planning finished
                path = report_path_for(spec, report_path)
                if path.exists() and not force:
                    path = path.with_name(f"{path.stem}.failed-{os.getpid()}{path.suffix}")
            report["report_path"] = str(path)
            try:
                report["report_path"] = str(write_report(report, path, overwrite=force))
            except OSError as exc:
                report["warnings"].append(f"could not write report {path}: {exc.strerror}")
                report["report_path"] = None
    return report


def _worker_entries(plan: Plan, hello: list[dict]) -> list[dict[str, Any]]:
    """One report entry per worker: what was asked (the plan) beside what the worker saw."""
    return [
        {
            "rank": w.rank,
            "pid": h["pid"],
            "cpus_requested": list(w.cpus),
            "cpus_observed": h["cpus_observed"],
            "pinned_ok": sorted(w.cpus) == h["cpus_observed"],
            "node": w.node,
            "rows": list(w.rows),
            "chunks": [list(c) for c in w.chunks],
            "threads": h["threads"],
        }
        for w, h in zip(plan.workers, hello)
    ]


def _planned_cpus(plan: Plan) -> list[tuple[int, ...]]:
    """Each worker's CPUs; an unpinned worker may run on any usable CPU."""
    return [w.cpus if plan.pinned else plan.usable for w in plan.workers]


def _combine_in_row_order(kernel: Any, plan: Plan, replies: list[dict]) -> Any:
    """Merge the last round's chunk states by row: the result does not depend on who answered first."""
    states = sorted(
        ((chunk[0], state) for w, rep in zip(plan.workers, replies) for chunk, state in zip(w.chunks, rep["states"])),
        key=lambda t: t[0],
    )
    return combine_all(kernel, [s for _, s in states])


def _bandwidth(nbytes: int, repeat_s: list[float]) -> dict[str, Any]:
    """Bytes the kernel reads per repeat (the array once) and the GB/s that makes."""
    gbps = [nbytes / s / 1e9 for s in repeat_s if s > 0]
    return {
        "bytes_per_repeat": nbytes,
        "gbps_per_repeat": gbps,
        "gbps": {"median": statistics.median(gbps) if gbps else None, "max": max(gbps) if gbps else None},
    }


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, unlike ru_maxrss, is not inherited across exec from the parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _pages_by_partition(plan: Plan, loads: list[dict]) -> dict[str, Any]:
    """Where the sampled pages of each partition live (from ``move_pages`` in the owning workers)."""
    parts = []
    for p in plan.partitions:
        counts: dict[str, int] = {}
        for r in p.ranks:
            for k, v in (loads[r].get("pages") or {}).items():
                counts[k] = counts.get(k, 0) + v
        on_node = counts.get(str(p.node), 0) if p.node is not None else None
        total = sum(counts.values())
        parts.append(
            {
                "node": p.node,
                "start": p.start,
                "stop": p.stop,
                "sampled_pages_by_node": counts,
                "fraction_on_node": (on_node / total) if (on_node is not None and total) else None,
            }
        )
    return {"method": "move_pages(2) on up to 1024 sampled pages per worker", "partitions": parts}
