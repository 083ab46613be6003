"""Running a job: plan → shared segment → pinned pool → load → repeats → verify → report.

``run_job`` is a short list of phases over a :class:`~shmhpc.session.RunSession`, which owns the
segment and the pool and tears both down on every way out (success, a failure, a signal), while
the stop-signal handlers are still installed. A run that fails (bad placement, a worker that dies or
raises, failed verification, a signal) leaves nothing in ``/dev/shm`` and still writes a report
saying why.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .allocation import slurm_allocation
from .contention import ContentionProbe
from .cpulist import format_cpulist
from .errors import RunError, RunInterrupted, ShmhpcError, SpecError
from .hugepages import filesystem_of, measured
from .kernels import state_count
from .numa_policy import judge, partition_pages
from .outputs import Output, OutputError, check_output
from .placement import Plan
from .planning import Prepared, check_runnable_here, check_slurm_step, prepare, report_path_for
from .pool import fenced_output
from .progress import NullProgress
from .report import REPORT_VERSION, host_info, now_stamp, stats, write_report
from .session import RunSession
from .shm import default_shm_dir, find_stale, remove_stale
from .signals import StopSignals
from .spec import JobSpec
from .topology import Topology, read_text
from .verify import count_nonfinite_values, describe_nonfinite, verify

__all__ = ["run_job"]


def _check_report_target(path: Path, template: str, force: bool) -> Output:
    """Where the report goes, checked before any work (see :mod:`shmhpc.outputs` for the rule)."""
    return check_output(
        path,
        what="report",
        overwrite=force,
        make_parents=True,  # report: reports/{job}/{timestamp}.json names a tree on purpose
        exists_hint=f"pass --force to overwrite it or put {{timestamp}} in report: (template {template!r})",
    )


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


class _Refused(SpecError):
    """The report target exists and we were not asked to overwrite it: the run writes nothing."""


def run_job(
    spec: JobSpec,
    topology: Topology,
    *,
    spec_dir: str | os.PathLike[str] = ".",
    report_path: str | None = None,
    progress: NullProgress | None = None,
    write: bool = True,
    force: bool = False,
    stop: StopSignals | None = None,
) -> dict[str, Any]:
    """Run ``spec`` and return its report (also written to disk unless ``write=False``).

    Never raises for a failed run: the report's ``status`` says ``failed`` or
    ``interrupted`` with ``error``; ``report["exit_code"]`` is what the CLI exits with.
    An existing report file is not overwritten unless ``force`` (the run is refused, exit 2).
    ``stop`` is the caller's stop-signal handler when it runs several jobs (a sweep): the run
    records signals there, so the caller sees them too, and one that came before the run stops it.
    """
    progress = progress or NullProgress()
    report = _new_report(spec, topology)
    timings: dict[str, Any] = {}
    t_start = time.perf_counter()
    out: Output | None = None
    session: RunSession | None = None
    keep_existing = False
    exit_code = 0
    flag = stop if stop is not None else StopSignals()
    try:
        # The handlers stay installed until the session is torn down: a signal during teardown is recorded.
        with flag:
            check_slurm_step(spec, topology)
            prep = prepare(spec, topology, spec_dir)
            if write:
                path = report_path_for(spec, report_path, len(prep.plan.workers), prep.plan.policy)
                try:
                    out = _check_report_target(path, report_path or spec.report, force)
                except SpecError as exc:
                    raise _Refused(exc.messages) from None
            _record_plan(report, prep)
            check_runnable_here(prep)
            flag.check()  # a signal while Python was still loading (the CLI installs the handlers first)
            shm_dir = default_shm_dir()
            for line in sweep_stale_segments(shm_dir):
                progress.phase(line)
                report["warnings"].append(line)

            def stalled(line: str) -> None:
                progress.phase(f"warning: {line}")
                report["warnings"].append(line)

            with RunSession(prep, shm_dir=shm_dir, stop=flag, on_stall=stalled) as session:
                report["segment"] = _segment_entry(session)
                _start(session, report, timings, progress)
                flag.check()
                _load(session, report, timings, progress)
                replies = _rounds(session, report, timings, progress, flag)
                flag.check()  # a signal during the last repeat still stops the run
                _result(session, report, timings, progress, replies)
                flag.check()  # ... and one during verification or teardown
            report["status"] = "ok"
    except (Exception, KeyboardInterrupt) as exc:  # every way a run can fail ends in its report
        keep_existing = isinstance(exc, _Refused)
        exit_code = _record_failure(report, exc)
    finally:
        progress.close()
    if session is not None:
        if session.teardown_s is not None:
            timings["teardown_s"] = session.teardown_s
        report["warnings"].extend(session.killed)
    _finish(report, timings, time.perf_counter() - t_start, exit_code)
    if write and not keep_existing:
        _write(report, spec, out, report_path)
    return report


def _record_failure(report: dict[str, Any], exc: BaseException) -> int:
    """Say in the report why the run ended early; return the exit code."""
    if isinstance(exc, RunInterrupted):
        report["status"] = "interrupted"
        report["error"] = str(exc)
        return exc.exit_code
    if isinstance(exc, ShmhpcError):
        report["error"] = str(exc).replace("\n", "; ")
        if isinstance(exc, SpecError):
            report["errors"] = exc.messages
        detail = getattr(exc, "detail", None)
        if detail:
            report["error_detail"] = detail
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        report["status"] = "interrupted"
        report["error"] = "interrupted by SIGINT"
        return 130
    # a bug of ours: still clean up and say what happened
    report["error"] = f"internal error: {type(exc).__name__}: {exc}"
    report["error_detail"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return 1


# -- the phases ------------------------------------------------------------------------------------


def _record_plan(report: dict[str, Any], prep: Prepared) -> None:
    report["data"] = prep.data.to_dict()
    report["plan"] = prep.plan.to_dict()
    report["warnings"].extend(prep.plan.warnings)


def _start(session: RunSession, report: dict, timings: dict, progress: NullProgress) -> None:
    """Start and pin the workers; record where each one really is."""
    n = len(session.prep.plan.workers)
    progress.phase(f"starting {n} workers ({session.start_method})")
    try:
        hello = session.start()
    finally:
        timings["pool_start_s"] = session.start_s
        report["warnings"].extend(session.warnings)
        report["pool"] = session.start_info
    progress.phase_done("pool start", timings["pool_start_s"])
    report["workers"] = workers = _worker_entries(session.prep.plan, hello)
    bad = [w["rank"] for w in workers if not w["pinned_ok"]]
    if bad:
        report["warnings"].append(f"workers {bad} do not run on the CPUs asked for (see cpus_observed)")


def _load(session: RunSession, report: dict, timings: dict, progress: NullProgress) -> None:
    """Each owner reserves, first-touches and fills its rows; where the pages landed."""
    data = session.prep.data
    by = "the launcher" if session.prep.spec.numa.data_writer == "launcher" else "the owning workers"
    progress.phase(f"loading {data.nbytes / 1e6:,.1f} MB ({data.source}) by {by}")
    t0 = time.perf_counter()
    loads = session.load()
    timings["load_s"] = time.perf_counter() - t0
    progress.phase_done("load", timings["load_s"])
    for w, ld in zip(report["workers"], loads):
        w["load_s"] = ld["seconds"]
        w["reserved_by"] = ld["reserved_by"]
        w["pages"] = ld["pages"]
    report["pages"] = _pages_by_partition(session.prep.plan, loads)
    _placement(session, report, loads, timings)
    if report.get("segment"):  # the page size the segment really got, measured where the owners touched it
        report["segment"].update(measured([ld.get("mapping") for ld in loads]))
        report["segment"]["page_bytes_measured_by"] = MEASURED_BY


def _placement(session: RunSession, report: dict, loads: list[dict], timings: dict) -> None:
    """The ``placement`` section; ``numa.verify`` warn adds a warning, strict fails the run before any round."""
    prep = session.prep
    numa = prep.spec.numa
    if session.write_s is not None:
        timings["launcher_write_s"] = session.write_s
    section = judge(
        prep.plan,
        numa,
        prep.topology,
        loads,
        session.numa_applied,
        session.numa_notes,
        [h.get("numa_policy") for h in session.hello],
    )
    report["placement"] = section
    if section["applied"] is False:
        report["warnings"].append(f"numa.placement: {numa.placement} was not applied: {section['reason']}")
    if numa.verify == "report":
        return
    if section["passed"] is None:
        problem = f"placement ({numa.placement}) could not be checked: {section['summary'] or 'no placement'}"
    elif section["passed"] is False:
        bad = [p for p in section["partitions"] if p["passed"] is False]
        problem = f"placement ({numa.placement}) is not as intended: " + "; ".join(
            f"rows {p['start']}-{p['stop']} (read on node {p['node']}) have {100 * p['fraction_intended']:.1f} % "
            f"of {p['sampled']} sampled pages on node {format_cpulist(p['intended_nodes'])}"
            + (f", shares {_shares(p['shares'])}" if p.get("shares") else "")
            for p in bad
        )
        problem += f" (numa.min_local {numa.min_local})"
    else:
        return
    if numa.verify == "strict":
        raise RunError(f"{problem} (numa.verify: strict)")
    report["warnings"].append(problem)


def _shares(shares: dict[str, float]) -> str:
    return " / ".join(f"node {n} {100 * v:.1f} %" for n, v in shares.items())


def _rounds(session: RunSession, report: dict, timings: dict, progress: NullProgress, flag: StopSignals) -> list[dict]:
    """Warmup and repeat rounds; timings are kept as rounds finish, so an interrupted run keeps them."""
    spec, plan = session.prep.spec, session.prep.plan
    workers = report["workers"]
    n_rounds = spec.warmup + spec.repeats
    # Not alone on our CPUs (another run, a busy neighbour)? Looked at around the rounds only.
    probe = ContentionProbe(_planned_cpus(plan), session.shm_dir, peers=frozenset(session.peer_pids))
    probe.check_others()
    progress.start_rounds(n_rounds, spec.warmup)
    probe.start([w["pid"] for w in workers])
    for w in workers:
        w["repeat_s"], w["chunk_s"], w["cpus_ran_on"] = [], [], []
    timings["warmup_s"], timings["repeat_s"] = [], []
    replies: list[dict] = []
    for r in range(n_rounds):
        flag.check()
        wall, replies = session.round(r)
        progress.round_done(r, wall)
        timings["warmup_s" if r < spec.warmup else "repeat_s"].append(wall)
        if r >= spec.warmup:
            for w, rep in zip(workers, replies):
                w["repeat_s"].append(sum(rep["seconds"]))
                w["chunk_s"].append(rep["seconds"])
                w["cpus_ran_on"] = sorted(set(w["cpus_ran_on"]) | set(rep["cpus"]))
                if rep.get("affinity") is not None and "cpus_moved_to" not in w:
                    w["cpus_moved_to"] = rep["affinity"]
                    report["warnings"].append(
                        f"worker {w['rank']} was pinned to CPUs {format_cpulist(w['cpus_requested'])} but its kernel "
                        f"moved it to {format_cpulist(rep['affinity'])}: its timings are not those of the plan"
                    )
    probe.stop()
    probe.check_others()
    report["contention"], lines = probe.result()
    report["warnings"].extend(lines)
    progress.close()
    return replies


def _result(
    session: RunSession,
    report: dict,
    timings: dict,
    progress: NullProgress,
    replies: list[dict],
    keep_workers: bool = False,
) -> None:
    """Combine the last round, stop the workers (unless ``keep_workers``: the Python API's warm pool), verify
    against a single-process reference."""
    prep, spec = session.prep, session.prep.spec
    # The launcher has not touched the array yet: its peak RSS here shows that no
    # second copy of the data was made (file data goes straight into shared memory).
    report["memory"] = {
        "array_bytes": prep.data.nbytes,
        "launcher_peak_rss_bytes_before_verify": _peak_rss_bytes(),
    }
    state = session.combine(replies)
    value = prep.kernel.finalize(state)
    _check_value(spec.kernel, value, state)
    report["bandwidth"] = _bandwidth(prep.data.nbytes, timings["repeat_s"], len(prep.plan.workers))
    if not keep_workers:
        session.stop_workers()  # the workers are done; the segment stays for verification
    result: dict[str, Any] = {"kernel": spec.kernel, "accumulate": spec.accumulate, "value": value}
    result.update({"engine": prep.engine, "engine_reason": prep.engine_reason})
    if spec.verify:
        progress.phase("verifying against a single-process reference")
        t0 = time.perf_counter()
        result.update(_verify(session, value, state))
        timings["verify_s"] = time.perf_counter() - t0
        result["value"] = value
    else:  # the data is not scanned; the result is small, its NaN/inf are counted
        result.update({"reference": None, "abs_error": None, "rel_error": None, "verified": None})
        result.update({"check": "off", "value_nonfinite": count_nonfinite_values(value)})
    report["result"] = result
    if result.get("check") == "failed":
        detail = result.get("detail") or ""
        raise RunError(
            f"verification failed: {spec.kernel} = {value!r}, reference {result.get('reference')!r}, "
            f"abs error {result.get('abs_error')!r} > tolerance {result.get('tolerance')!r}"
            + (f" ({detail})" if detail else "")
        )
    nonfinite = describe_nonfinite(result, prep.data.n_elements)
    if nonfinite and spec.on_nonfinite == "fail":
        raise RunError(f"non-finite values (on_nonfinite: fail): {nonfinite}")
    if nonfinite:
        checked = {
            "ok": "value and reference are finite and agree",
            "not meaningful": "NOT VERIFIED: a comparison with a reference means nothing",
            "off": "not verified (verify: false: the data was not scanned)",
        }[result["check"]]
        report["warnings"].append(f"non-finite values: {nonfinite}; {checked} (on_nonfinite: fail would fail the run)")


MAX_RESULT_VALUES = 100_000  # a reduction's result; the report and the summary hold all of it


def _check_value(kernel: str, value: Any, state: Any) -> None:
    """A result the report can hold and verification can compare: bounded, and numbers within float64."""
    n = state.size if isinstance(state, np.ndarray) else int(np.size(value)) if isinstance(value, list) else 1
    if n > MAX_RESULT_VALUES:
        raise RunError(
            f"kernel {kernel!r} returned {n:,} values; a result holds at most {MAX_RESULT_VALUES:,} "
            "(a reduction makes its input smaller; write large outputs to a file yourself)"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise RunError(
                f"kernel {kernel!r} returned an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits; "
                "results are compared and reported as float64 numbers (at most about 1.8e308)"
            ) from None


def _verify(session: RunSession, value: Any, state: Any) -> dict[str, Any]:
    prep = session.prep
    # The view lives in this function only, so the segment can be unmapped; the kernel's prints are fenced.
    with session.array() as arr, fenced_output("verify"):
        return verify(
            prep.kernel,
            value,
            arr,
            accumulate=prep.spec.accumulate,
            chunk_sizes=[(b - a) * prep.data.row_elements for w in prep.plan.workers for a, b in w.chunks],
            count=state_count(prep.kernel, state),
        )


def _finish(report: dict, timings: dict, total_s: float, exit_code: int) -> None:
    timings["total_s"] = total_s
    if timings.get("repeat_s"):
        timings["repeat"] = stats(timings["repeat_s"])
        if "bandwidth" not in report and report.get("data"):  # a run stopped after some repeats
            report["bandwidth"] = _bandwidth(
                report["data"]["nbytes"], timings["repeat_s"], len(report.get("workers") or []) or 1
            )
    report["timings"] = timings
    report["exit_code"] = exit_code


def _write(report: dict, spec: JobSpec, out: Output | None, report_path: str | None) -> None:
    """Write the report. One that cannot be saved makes the run a failure (exit 1) that says so.

    A run that failed before its report target was checked still gets a report, beside any earlier one.
    """
    if out is None:
        path = report_path_for(spec, report_path)
        if path.exists():
            path = path.with_name(f"{path.stem}.failed-{os.getpid()}{path.suffix}")
        try:
            out = check_output(path, what="report", make_parents=True)
        except OutputError as exc:
            return _unsaved(report, str(exc))
    report["report_path"] = str(out.path)
    try:
        report["report_path"] = str(write_report(report, out))
    except (OSError, OutputError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _unsaved(report, f"report: could not write {str(out.path)!r}: {reason}")


def _unsaved(report: dict, why: str) -> None:
    """The result is not on disk: a failed run, whatever it computed (the caller prints the report instead)."""
    report["report_path"] = None
    report["report_error"] = why
    if report["status"] == "ok":
        report["status"] = "failed"
        report["error"] = why
    if report["exit_code"] == 0:
        report["exit_code"] = 1


# -- report pieces ---------------------------------------------------------------------------------


MEASURED_BY = "each worker's /proc/self/smaps after load (KernelPageSize, *_Hugetlb, ShmemPmdMapped)"


def _segment_entry(session: RunSession) -> dict[str, Any] | None:
    """Where the segment is, with which pages asked for, and why not hugetlbfs (``fallback``)."""
    seg, pages = session.segment, session.pages
    if seg is None:
        return None
    where = os.path.dirname(seg.path)
    return {
        "name": seg.name,
        "dir": where,
        "size_bytes": seg.size,
        "huge_pages": pages.mode,
        "filesystem": "hugetlbfs" if pages.hugetlbfs else filesystem_of(where, read_text("/proc/mounts") or ""),
        "fallback": pages.fallback,
    }


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


def _bandwidth(nbytes: int, repeat_s: list[float], workers: int) -> dict[str, Any]:
    """Bytes the kernel reads per repeat (the array once), the GB/s that makes, and this host's ceiling.

    The ceiling is ``shmhpc bench --save``'s best read rate for this many workers (or the most
    measured below it), counted the same way (bytes read once per repeat).
    """
    from .bench import ceiling_for, load_ceiling

    gbps = [nbytes / s / 1e9 for s in repeat_s if s > 0]
    ceiling = ceiling_for(workers, load_ceiling())
    return {
        "bytes_per_repeat": nbytes,
        "gbps_per_repeat": gbps,
        "gbps": {"median": statistics.median(gbps) if gbps else None, "max": max(gbps) if gbps else None},
        "ceiling_gbps": ceiling["gbps"] if ceiling else None,
        "ceiling": ceiling,
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
        counts = partition_pages(p, loads)
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
