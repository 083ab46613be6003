"""The versioned JSON report: building blocks, atomic dump, checked load, human summary.

A report is data, not a log (pyperf's habit): a ``version``, shared metadata
hoisted to the top (job, host, topology), raw per-repeat values next to their
summaries, ``sort_keys`` on dump. Unknown versions are refused on load.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .allocation import cpu_bind_type
from .cpulist import format_cpulist
from .errors import SpecError
from .hugepages import format_bytes
from .numa_policy import placement_line
from .outputs import Output, write_text
from .tables import format_seconds
from .threads import relevant_env
from .topology import read_text

if TYPE_CHECKING:  # the model (pydantic) is built only where a report is read: a run only writes one
    from .report_model import RunReport

__all__ = [
    "REPORT_VERSION",
    "RunReport",
    "host_info",
    "write_report",
    "read_report",
    "load_report",
    "as_run_report",
    "check_run_report",
    "summarize",
    "stats",
]

REPORT_VERSION = 1


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def host_info() -> dict[str, Any]:
    import numpy

    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "shmhpc": __version__,
        "env": relevant_env(),
        "shmem_hugepages": read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "slurm": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_") and "CONF" not in k} or None,
    }


def stats(values: list[float]) -> dict[str, float | None]:
    """Median, mean, stdev, min, max of raw values (None when empty)."""
    if not values:
        return {"median": None, "mean": None, "stdev": None, "min": None, "max": None}
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _jsonable(obj: Any) -> Any:
    """Last-resort conversion for numpy scalars and tuples."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def report_json(report: dict) -> str:
    """A report as sorted, indented JSON (numpy scalars and arrays converted)."""
    return json.dumps(report, indent=2, sort_keys=True, default=_jsonable, allow_nan=True) + "\n"


def write_report(report: dict, path: str | os.PathLike[str] | Output, overwrite: bool = True) -> Path:
    """Write a report atomically under the rules of :mod:`shmhpc.outputs`; returns its path."""
    return write_text(path, report_json(report), overwrite)


def read_report(path: str | os.PathLike[str]) -> RunReport:
    """Read one run's report as a :class:`~shmhpc.report_model.RunReport`.

    Version policy: version 1 is read; a newer version is refused with a message saying to
    upgrade shmhpc; new fields within a version are additive and ignored by older readers.
    Everything wrong is a one-line ``SpecError`` naming the file (and the field).
    """
    return _read(path)[1]


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The report as the plain dict in the file, after the same checks as :func:`read_report`."""
    return _read(path)[0]


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], RunReport]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read report: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not a JSON report (line {exc.lineno}: {exc.msg}); truncated?") from None
    if not isinstance(data, dict) or "version" not in data:
        raise SpecError(f"{path}: not a shmhpc report (no 'version' field)")
    return data, as_run_report(str(path), data)


def as_run_report(source: str, report: Any, *, strict: bool = True) -> RunReport:
    """Check a report already in memory (a dict, or a model) and return it as a ``RunReport``.

    ``source`` names it in messages (a file name). ``strict=False`` accepts what the runner holds
    before writing (tuples for lists, numpy scalars); a file is always read strictly.
    """
    from pydantic import ValidationError

    from .report_model import RunReport, describe_validation_error

    if isinstance(report, RunReport):
        return report
    if isinstance(report, dict) and "version" in report:
        version = report["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise SpecError(f"{source}: not a shmhpc report ('version' is {version!r}, not an integer)")
        if version > REPORT_VERSION:
            raise SpecError(
                f"{source}: report version {version} is not supported: it is newer than this shmhpc "
                f"{__version__} reads (version {REPORT_VERSION}); upgrade shmhpc to read it"
            )
        if version != REPORT_VERSION:
            raise SpecError(
                f"{source}: report version {version!r} is not supported; this shmhpc reads version {REPORT_VERSION}"
            )
    check_run_report(source, report)
    try:
        return RunReport.model_validate(report, strict=strict)
    except ValidationError as exc:
        raise SpecError(f"{source}: malformed report: {describe_validation_error(exc)}") from None


def check_run_report(source: str, report: Any) -> None:
    """Refuse what is valid JSON with a version but not one run's report (a sweep summary, a stray file)."""
    if not isinstance(report, dict):
        raise SpecError(f"{source}: malformed report: not a JSON object")
    if report.get("kind") == "shmhpc-sweep":
        raise SpecError(f"{source}: is a sweep summary, not a run report; give its reports (or its directory)")
    for key in ("job", "host"):
        if not isinstance(report.get(key), dict):
            raise SpecError(f"{source}: malformed report: no '{key}' object; is this a shmhpc run report?")
    if not isinstance(report.get("status"), str):
        raise SpecError(f"{source}: malformed report: no 'status'; is this a shmhpc run report?")


def __getattr__(name: str) -> Any:
    if name == "RunReport":  # re-exported, built on first use
        from .report_model import RunReport

        return RunReport
    raise AttributeError(f"module 'shmhpc.report' has no attribute {name!r}")


def now_stamp(precise: bool = False) -> str:
    """UTC time as ``20261126T185230Z`` (``…T185230.123Z`` with milliseconds when ``precise``)."""
    t = time.time()
    base = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))
    return f"{base}.{int(t % 1 * 1000):03d}Z" if precise else f"{base}Z"


def _share_of_ceiling(gbps: float | None, bw: dict) -> str:
    """``, 87 % of this machine's measured ceiling (30.1 GB/s, bench read, 2 workers)`` when one is known."""
    ceiling, src = bw.get("ceiling_gbps"), bw.get("ceiling") or {}
    if gbps is None or not ceiling:
        return ""
    how = f", bench {src['kernel']}, {src['workers']} worker{'s' * (src['workers'] != 1)}" if src.get("workers") else ""
    return f", {100 * gbps / ceiling:.0f} % of this machine's measured ceiling ({ceiling:.1f} GB/s{how})"


def _segment_pages(seg: Any) -> str | None:
    """``  segment: 2 MiB pages on hugetlbfs /dev/hugepages``, or why huge pages were asked for and not had;
    None when there is nothing to say (huge pages off, or a run that never made its segment)."""
    if not isinstance(seg, dict) or seg.get("huge_pages") in (None, "off"):
        return None
    page, frac, where = seg.get("page_bytes"), seg.get("huge_fraction"), seg.get("dir")
    size = f"{format_bytes(page)} " if isinstance(page, int) and page > 0 else "(not measured) "
    if seg.get("filesystem") == "hugetlbfs":
        return f"  segment: {size}huge pages on hugetlbfs {where}, huge_pages: {seg['huge_pages']}"
    if isinstance(frac, (int, float)) and frac > 0:
        got = f"{size}transparent huge pages for {100 * frac:.0f} % of it in {where}"
    else:
        got = f"{size}pages in {where}"
    if seg.get("fallback"):
        return f"  segment: {got}, huge_pages: {seg['huge_pages']} fell back: {seg['fallback']}"
    return f"  segment: {got}"


def summarize(report: dict, with_error: bool = True) -> str:
    """A short human summary: where workers ran, median time, GB/s, verified or not.

    ``with_error=False`` leaves the error out of the first line (the CLI prints it once, on stderr).
    """
    job = report.get("job", {})
    lines = [f"{job.get('name', '?')}: {report.get('status', '?')}"]
    if report.get("error") and with_error:
        lines[0] += f" — {report['error']}"
    sl = report.get("slurm")
    if isinstance(sl, dict) and sl.get("label"):
        bind = cpu_bind_type(sl.get("cpu_bind"))
        lines.append(
            f"  slurm: job {sl['label']} on {sl.get('nodelist') or '?'}, {sl.get('cpus_per_task') or '?'} CPUs per task"
            + (f", step {sl['step_id']}" if sl.get("step_id") is not None else "")
            + (f", cpu-bind {bind}" if bind else "")
        )
    workers = report.get("workers") or []
    if workers:
        pinned = report.get("plan", {}).get("pinned")
        lines.append(
            f"  {len(workers)} workers, pinning {report.get('plan', {}).get('policy', job.get('pinning'))}"
            f"{'' if pinned else ' (not pinned)'}:"
        )
        mpi = report.get("mpi") or {}
        if mpi:
            hosts = sorted(set(mpi.get("hosts") or []))
            lines.insert(
                len(lines) - 1,
                f"  mpi: {mpi.get('size')} ranks on {', '.join(hosts)} ({mpi.get('launcher')}, "
                f"{(mpi.get('library') or 'MPI').split(',')[0]}), one slice of the rows each",
            )
        for w in workers:
            ran = w.get("cpus_ran_on")
            where = f"mpi rank {w['mpi_rank']} on {w.get('host')}, worker " if "mpi_rank" in w else "rank "
            lines.append(
                f"    {where}{w['rank']}: cpus {format_cpulist(w.get('cpus_observed') or [])}"
                f" (asked {format_cpulist(w.get('cpus_requested') or [])}), node {w.get('node', '-')}"
                + (f", ran on {format_cpulist(ran)}" if ran else "")
            )
    t = report.get("timings") or {}
    bw = report.get("bandwidth") or {}
    if t.get("repeat_s"):
        rep = t.get("repeat", {})
        gbps = (bw.get("gbps") or {}).get("median")
        lines.append(
            f"  repeat: median {format_seconds(rep.get('median'))} over {len(t['repeat_s'])} "
            f"(min {format_seconds(rep.get('min'))}), "
            + (f"{gbps:.2f} GB/s median" if gbps is not None else "GB/s not measured")
            + _share_of_ceiling(gbps, bw)
        )
        how = (report.get("pool") or {}).get("start_method")
        api = report.get("api") or {}
        if api.get("pool_reused"):  # a Python API call on a warm pool: no start, no load in this call
            pids = ", ".join(str(p) for p in api.get("pids") or [])
            lines.append(
                f"  phases: warm pool reused (call {api.get('call')}, pids {pids}), "
                f"end-to-end {format_seconds(t.get('total_s'))}"
            )
        else:
            lines.append(
                f"  phases: pool start {format_seconds(t.get('pool_start_s'))}"
                + (f" ({how})" if how else "")
                + f", load {format_seconds(t.get('load_s'))}, "
                f"teardown {format_seconds(t.get('teardown_s'))}, end-to-end {format_seconds(t.get('total_s'))}"
            )
    pages = _segment_pages(report.get("segment"))
    if pages:
        lines.append(pages)
    placed = placement_line(report.get("placement"))
    if placed:
        lines.append(f"  {placed}")
    res = report.get("result") or {}
    if res:
        v = res.get("value")
        vs = f"{v:.10g}" if isinstance(v, float) else str(v)[:60]
        if res.get("check") == "not meaningful" or (res.get("verified") is False and res.get("value_nonfinite")):
            check = f"{'NOT VERIFIED' if res.get('verified') is None else 'VERIFICATION FAILED'}: {res.get('detail')}"
        elif res.get("verified") is None:
            check = "not verified" + ("; the result is not finite" if res.get("value_nonfinite") else "")
        else:
            check = (
                f"{'verified' if res['verified'] else 'VERIFICATION FAILED'} (abs error {res.get('abs_error', 0):.3g}, "
                f"rel {res.get('rel_error', 0):.3g}, tolerance {res.get('tolerance', 0):.3g})"
            )
        engine = " [numba]" if res.get("engine") == "numba" else ""  # numpy is the default: not worth a word
        lines.append(f"  result: {res.get('kernel')}{engine} = {vs}, {check}")
    for w in report.get("warnings") or []:
        lines.append(f"  warning: {w}")
    if report.get("report_path"):
        lines.append(f"  report: {report['report_path']}")
    elif report.get("report_error"):
        lines.append(f"  report: NOT SAVED — {report['report_error']}")
    return "\n".join(lines)
