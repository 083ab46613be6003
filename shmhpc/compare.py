"""Compare loaded reports: is the difference real, what differed, and where the workers really ran.

Pure: takes reports (read by :func:`shmhpc.report.read_report`; dicts are checked the same way), returns a
:class:`Comparison` and renders it as a terminal table, Markdown or JSON. Runs nothing.

The first report is the reference. For each metric the center is the **median** of the
per-repeat values (robust to one slow repeat), ``±`` is their sample standard deviation,
and whether a difference is real is decided by **Welch's t-test** (two-sided, α = 0.05) on
the raw per-repeat values, computed by hand in :mod:`shmhpc.significance` (no scipy). The
ratio ("1.33x faster") is that of the medians; for times lower is better, for GB/s higher.
Single-value metrics (the cold end-to-end time, the load time) get no test.

Timings from different hosts, CPU models, data or kernels say nothing about pinning, and a run
compared with itself says nothing at all: such reports are refused unless ``force`` (then every
reason becomes a warning). Timings that are not positive numbers are refused even with ``force``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .allocation import cpu_bind_type
from .cpulist import format_cpulist
from .errors import SpecError
from .report import as_run_report
from .report_model import Data, RunReport, Slurm, Timings
from .significance import ALPHA, TTest, welch_test
from .tables import format_seconds, markdown_table, text_table, time_unit

__all__ = [
    "ALPHA",
    "Comparison",
    "compare_reports",
    "run_settings",
    "broken_timings",
    "same_runs",
    "refusals",
    "make_labels",
    "render_text",
    "render_markdown",
    "render_json",
]

NOISY_CV = 0.10  # stdev ≥ 10 % of the mean: the machine was busy or the run too short
MIN_REPEATS = 5  # fewer and the test has little power (pyperf warns below a similar count)


# -- reading the parts of a report we need (the model has checked their types) ---------------

Reports = Sequence[tuple[str, "RunReport | dict[str, Any]"]]


def _checked(reports: Reports) -> list[tuple[str, RunReport]]:
    """Each ``(source, report)`` as a checked model; one-line ``SpecError`` naming source and field."""
    return [(src, as_run_report(src, r)) for src, r in reports]


def _start_method(r: RunReport) -> str | None:
    """The start method the workers were started with: ``fork (auto)`` when ``auto`` chose fork."""
    asked, used = r.job.start_method, r.pool.start_method if r.pool is not None else None
    return asked if used is None or used == asked else f"{used} ({asked})"


def _policy(r: RunReport) -> str:
    p: str | list[list[int]] | None = r.plan.policy if r.plan else None
    if p is None:
        p = r.job.pinning
    if isinstance(p, list):
        return "explicit"
    return str(p) if p is not None else "?"


def _placement_text(r: RunReport) -> str | None:
    if r.mpi is not None and r.workers:  # every node's workers, by node
        return " / ".join(f"{w.host}:{format_cpulist(sorted(w.cpus_requested or []))}" for w in r.workers)
    if r.plan is None or r.plan.workers is None:
        return None
    return " / ".join(format_cpulist(sorted(w.cpus or [])) for w in r.plan.workers)


def _numa_text(r: RunReport) -> str | None:
    """``bind``, ``bind (NOT applied)``, ``none, launcher-written``: the memory policy a run had."""
    pl, numa = r.placement, r.job.numa
    policy = (pl.policy if pl is not None else None) or (numa.placement if numa is not None else None)
    if policy is None:
        return None
    writer = (pl.writer if pl is not None else None) or (numa.writer if numa is not None else None)
    text = policy + (" (NOT applied)" if pl is not None and pl.applied is False else "")
    return text + (", launcher-written" if writer == "launcher" and policy != "none" else "")


def _allocation_text(slurm: Slurm | None) -> str:
    """``slurm, 2 CPUs per task, cpu-bind none`` for a run inside a Slurm job, ``-`` outside."""
    if slurm is None:
        return "-"
    bind = cpu_bind_type(slurm.cpu_bind) or "-"
    return f"slurm, {slurm.cpus_per_task or '?'} CPUs per task, cpu-bind {bind}"


def run_settings(report: RunReport | dict[str, Any], source: str = "report") -> dict[str, Any]:
    """The settings that may legitimately differ between compared runs, as short display values."""
    r = as_run_report(source, report)
    job, host, data, plan = r.job, r.host, r.data or Data(), r.plan
    return {
        "pinning": _policy(r),
        "pinned": None if plan is None or plan.pinned is None else ("yes" if plan.pinned else "no"),
        "nodes": r.mpi.size if r.mpi is not None else 1,
        "workers": len(r.workers)
        if r.mpi is not None and r.workers
        else len(plan.workers)
        if plan is not None and plan.workers is not None
        else job.workers,
        "threads_per_worker": job.threads_per_worker,
        "placement": _placement_text(r),
        "start_method": _start_method(r),
        "numa.partition": job.numa.partition if job.numa else None,
        "numa.placement": _numa_text(r),
        "chunks_per_worker": job.chunks_per_worker,
        "accumulate": job.accumulate,
        "engine": r.result.engine if r.result is not None else None,
        "repeats": job.repeats,
        "warmup": job.warmup,
        "data source": " ".join(
            str(x) for x in (data.source, data.distribution, data.path, f"seed {data.seed}") if x is not None
        )
        or None,
        # Slurm's variables differ in every job (ids, ports, pids): the allocation line says what matters.
        "thread env": " ".join(f"{k}={v}" for k, v in sorted(host.env.items()) if not k.startswith("SLURM_")) or "-",
        "allocation": _allocation_text(r.slurm),
        "os kernel": host.kernel,
        "python": host.python,
        "numpy": host.numpy,
        "shmhpc": host.shmhpc,
    }


# Short forms used to tell apart runs that share a pinning policy: "[compact w=4]".
LABEL_KEYS = {
    "nodes": "nodes=",
    "workers": "w=",
    "threads_per_worker": "t=",
    "start_method": "",
    "numa.partition": "partition=",
    "numa.placement": "",
    "chunks_per_worker": "chunks=",
    "accumulate": "acc=",
    "engine": "",
    "repeats": "repeats=",
    "placement": "cpus=",
}


def make_labels(settings: list[dict[str, Any]], labels: list[str] | None = None) -> list[str]:
    """Labels for runs: the pinning policy, plus what else differs when two runs share a policy."""
    if labels is not None:
        if len(labels) != len(settings):
            raise SpecError(f"--labels: {len(labels)} labels for {len(settings)} reports; give one per report")
        if any(not x.strip() for x in labels):
            raise SpecError("--labels: empty label; give one non-empty label per report, separated by commas")
        return [x.strip() for x in labels]
    out = [str(s["pinning"]) for s in settings]
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(out):
        groups.setdefault(lab, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        diff = [k for k in LABEL_KEYS if len({repr(settings[i][k]) for i in members}) > 1]
        if len({tuple(repr(settings[i][k]) for k in diff if k != "placement") for i in members}) == len(members):
            diff = [k for k in diff if k != "placement"]  # the CPU sets only when nothing else tells runs apart
        for i in members:
            extra = " ".join(f"{LABEL_KEYS[k]}{_fmt_setting(settings[i][k])}" for k in diff)
            out[i] = f"{out[i]} {extra}".strip()
    seen: dict[str, int] = {}
    for lab in out:
        seen[lab] = seen.get(lab, 0) + 1
    counter: dict[str, int] = {}
    for i, lab in enumerate(out):
        if seen[lab] > 1:  # identical settings (the same spec run twice): number them
            counter[lab] = counter.get(lab, 0) + 1
            out[i] = f"{lab} #{counter[lab]}"
    return out


def _fmt_setting(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# -- refusal rules ---------------------------------------------------------------------------

_INVARIANTS: tuple[tuple[str, Callable[[RunReport], Any], str, str], ...] = (
    ("host.hostname", lambda r: r.host.hostname, "hosts", "timings from different machines say nothing about pinning"),
    ("host.cpu_model", lambda r: r.host.cpu_model, "CPU models", "different CPUs run at different speeds"),
    (
        "data.nbytes",
        lambda r: r.data and r.data.nbytes,
        "data sizes",
        "bandwidth and time depend on how much data is read",
    ),
    ("data.shape", lambda r: r.data and r.data.shape, "data shapes", "the array is partitioned differently"),
    (
        "data.dtype",
        lambda r: r.data and r.data.dtype,
        "dtypes",
        "a different dtype is a different amount and kind of work",
    ),
    ("job.kernel", lambda r: r.job.kernel, "kernels", "a different kernel is a different computation"),
)


def broken_timings(reports: Reports) -> list[str]:
    """Timings that cannot be compared, even with ``force``: one line per report, naming the file and field.

    Every time and bandwidth must be a positive finite number (the report model refuses null and
    non-finite ones as it reads); a run that finished ``ok`` must have its repeat times.
    """
    out = []
    why = "its timings cannot be compared, not even with --force"
    for src, r in _checked(reports):
        t, bw = r.timings or Timings(), r.bandwidth
        fields: list[tuple[str, float | None]] = [
            *((f"timings.repeat_s[{i}]", x) for i, x in enumerate(t.repeat_s or [])),
            ("timings.total_s", t.total_s),
            ("timings.load_s", t.load_s),
            *((f"bandwidth.gbps_per_repeat[{i}]", x) for i, x in enumerate((bw and bw.gbps_per_repeat) or [])),
        ]
        bad = next(((k, x) for k, x in fields if x is not None and not (math.isfinite(x) and x > 0)), None)
        if bad is not None:
            out.append(f"{src}: broken report: {bad[0]} is {bad[1]!r}, not a positive number; {why}")
        elif r.status == "ok" and not t.repeat_s:
            what = "empty" if t.repeat_s is not None else "missing"
            out.append(f"{src}: broken report: status 'ok' but timings.repeat_s is {what}; {why}")
    return out


def same_runs(reports: Reports) -> list[str]:
    """Reports that are one run given twice: the same file, a copy, or the same run's shared-memory segment.

    A segment's name holds the launcher's pid and a random token, so it names one run on its host; the
    Python API runs several calls on one shared array's segment, told apart by their call number.
    """
    out = []
    seen: dict[Any, str] = {}
    for src, r in _checked(reports):
        seg = r.segment.name if r.segment else None
        call = r.api.call if r.api is not None else None
        key = (
            ("segment", r.host.hostname, seg, call)
            if seg
            else ("content", json.dumps(r.model_dump(), sort_keys=True, default=str))
        )
        if key in seen:
            how = f"segment {seg} on {r.host.hostname}" if seg else "identical content"
            how += f", call {call}" if call is not None else ""
            out.append(f"{seen[key]} and {src} are the same run ({how}); a run compared with itself says nothing")
        else:
            seen[key] = src
    return out


def refusals(reports: Reports) -> list[str]:
    """Why these reports must not be compared (empty when they may): one line per reason."""
    checked = _checked(reports)
    out = []
    for dotted, get, what, why in _INVARIANTS:
        groups: dict[str, list[str]] = {}
        for src, r in checked:
            groups.setdefault(_fmt_setting(get(r)), []).append(src)
        if len(groups) > 1:
            listed = "; ".join(f"{v} in {', '.join(srcs)}" for v, srcs in groups.items())
            out.append(f"different {what} ({dotted}): {listed}; {why}")
    for src, r in checked:
        if r.status != "ok":
            why = f" ({r.error})" if r.error else ""
            out.append(f"{src} has status {r.status!r}, not 'ok'{why}; its numbers are incomplete")
    return out


# -- the comparison model ---------------------------------------------------------------------


@dataclass
class Sample:
    """One metric of one run."""

    values: list[float]
    center: float | None  # median of values, or the single value
    stdev: float | None  # None for single values
    mean: float | None
    n: int


@dataclass
class Change:
    """One run's metric against the reference's."""

    label: str
    ratio: float | None  # ≥ 1; how many times faster or slower
    direction: str  # "faster" | "slower" | "no change" | "n/a"
    test: TTest | None
    verdict: str  # "1.33x faster (p = 0.002)", "1.02x slower, not significant (p = 0.41)", …


@dataclass
class Metric:
    key: str
    title: str
    unit: str  # "s" or "GB/s"
    better: str  # "lower" | "higher"
    single: bool  # a single value per run: no test
    samples: list[Sample]
    changes: list[Change | None]  # None for the reference


@dataclass
class WorkerPlace:
    rank: Any
    cpus_requested: str
    cpus_observed: str
    cpus_ran_on: str
    node: Any
    where: str = ""  # a multi-node run: "mpi rank 1 on n2, "


@dataclass
class Run:
    label: str
    path: str
    name: str
    status: str
    started_at: str | None
    settings: dict[str, Any]
    pinned: bool | None
    placement_ok: bool
    placement_verdict: str
    workers: list[WorkerPlace]
    pages: list[str]


@dataclass
class Comparison:
    runs: list[Run]
    same: dict[str, str]
    differs: dict[str, list[str]]
    metrics: list[Metric]
    warnings: list[str] = field(default_factory=list)
    alpha: float = ALPHA
    method: str = "center = median, ± = sample stdev; Welch's t-test, two-sided, on the raw per-repeat values"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "shmhpc-compare"
        d["reference"] = self.runs[0].label
        return d


def _placement(r: RunReport) -> tuple[bool | None, bool, str, list[WorkerPlace], list[str]]:
    pinned = None if r.plan is None or r.plan.pinned is None else bool(r.plan.pinned)
    places: list[WorkerPlace] = []
    bad: list[str] = []
    union: set[int] = set()
    ran_union: set[int] = set()
    for w in r.workers or []:
        req, obs, ran = (sorted(c or []) for c in (w.cpus_requested, w.cpus_observed, w.cpus_ran_on))
        union |= set(obs)
        ran_union |= set(ran)
        where = f"mpi rank {w.mpi_rank} on {w.host}, worker " if w.mpi_rank is not None else ""
        places.append(WorkerPlace(w.rank, format_cpulist(req), format_cpulist(obs), format_cpulist(ran), w.node, where))
        if pinned and (obs != req or not set(ran) <= set(req)):
            bad.append(
                f"rank {w.rank} asked {format_cpulist(req)}, observed {format_cpulist(obs)}, "
                f"ran on {format_cpulist(ran) or '-'}"
            )
    pages = _page_lines(r)
    if not places:
        return pinned, False, f"no worker placement recorded (status {r.status})", places, pages
    if pinned:
        if bad:
            return pinned, False, "WARNING: pinned, but not where asked: " + "; ".join(bad), places, pages
        return pinned, True, "pinned: every worker ran only on its own CPUs", places, pages
    if pinned is None:
        return pinned, False, "placement unknown (no plan in the report)", places, pages
    verdict = f"unpinned: workers could run on {format_cpulist(sorted(union))}"
    if ran_union:
        verdict += f" (seen on {format_cpulist(sorted(ran_union))} when sampled)"
    if len(union) == 1:
        verdict += "; only one CPU was usable, so they shared it"
    return pinned, True, verdict, places, pages


def _page_lines(r: RunReport) -> list[str]:
    """Where each partition's sampled pages are: against the policy's intended nodes when the report has a
    ``placement`` section, else against the node of the workers that read them."""
    pl = r.placement
    if pl is not None and pl.partitions:
        out = []
        for p in pl.partitions:
            if p.fraction_intended is None:
                continue
            line = (
                f"{pl.policy}: rows {p.start}-{p.stop} (read on {p.host + ' ' if p.host else ''}node {p.node}): "
                f"{p.fraction_intended:.1%} of "
                f"{p.sampled} sampled pages on node {format_cpulist(p.intended_nodes or [])}"
            )
            if p.shares:
                line += " (" + ", ".join(f"node {n} {v:.1%}" for n, v in p.shares.items()) + ")"
            out.append(line + ("" if p.passed is not False else f" — below min_local {pl.min_local}"))
        return out
    return [
        f"rows {p.start}-{p.stop}: {p.fraction_on_node:.0%} of sampled pages on node {p.node}"
        for p in (r.pages.partitions if r.pages else None) or []
        if p.fraction_on_node is not None
    ]


def _metric_values(r: RunReport) -> dict[str, list[float]]:
    t = r.timings or Timings()
    return {
        "repeat": list(t.repeat_s or []),
        "gbps": list((r.bandwidth.gbps_per_repeat if r.bandwidth else None) or []),
        "total": [t.total_s] if t.total_s is not None else [],
        "load": [t.load_s] if t.load_s is not None else [],
    }


_METRICS = (
    # key, title, unit, better, single
    ("repeat", "compute time per repeat", "s", "lower", False),
    ("gbps", "bandwidth", "GB/s", "higher", False),
    ("total", "cold end-to-end time", "s", "lower", True),
    ("load", "load time", "s", "lower", True),
)


def _sample(values: list[float], single: bool) -> Sample:
    if not values:
        return Sample(values=[], center=None, stdev=None, mean=None, n=0)
    return Sample(
        values=values,
        center=statistics.median(values),
        stdev=None if single else (statistics.stdev(values) if len(values) > 1 else 0.0),
        mean=statistics.fmean(values),
        n=len(values),
    )


def _change(label: str, ref: Sample, other: Sample, better: str, single: bool) -> Change:
    if ref.center is None or other.center is None or ref.center <= 0 or other.center <= 0:
        return Change(label, None, "n/a", None, "no value to compare")
    lower_is_better = better == "lower"
    improved = other.center < ref.center if lower_is_better else other.center > ref.center
    ratio = max(ref.center, other.center) / min(ref.center, other.center)
    direction = "no change" if ref.center == other.center else ("faster" if improved else "slower")
    head = "no change" if direction == "no change" else f"{ratio:.2f}x {direction}"
    if single:
        return Change(label, ratio, direction, None, f"{head} (single value, no test)")
    test = welch_test(ref.values, other.values)
    if test is None:
        return Change(label, ratio, direction, None, f"{head} (no test: fewer than 2 repeats)")
    p = _fmt_p(test.p)
    if test.significant:
        return Change(label, ratio, direction, test, f"{head} (p {p})")
    return Change(label, ratio, direction, test, f"{head}, not significant (p {p})")


def _fmt_p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if p < 0.1 else f"= {p:.2f}"


def _same_text(reports: list[tuple[str, RunReport]]) -> dict[str, str]:
    r = reports[0][1]
    data = r.data or Data()
    shape, nbytes = data.shape, data.nbytes
    return {
        "host": f"{r.host.hostname} ({r.host.cpu_model})",
        "data": (
            f"{'×'.join(str(x) for x in shape) if shape is not None else shape} {data.dtype}"
            + (f" = {nbytes / 1e6:,.1f} MB" if nbytes is not None else "")
        ),
        "kernel": str(r.job.kernel),
    }


def compare_reports(reports: Reports, *, labels: list[str] | None = None, force: bool = False) -> Comparison:
    """Compare ``(source, report)`` pairs; the first is the reference.

    Raises ``SpecError`` listing every reason the reports must not be compared
    (different host, CPU model, data or kernel; a status that is not ``ok``) unless
    ``force``, and for malformed reports (one line naming the file and the field).
    """
    if len(reports) < 2:
        raise SpecError("compare: needs at least two reports (the first is the reference)")
    checked = _checked(reports)
    broken = broken_timings(checked)
    if broken:
        raise SpecError(broken)
    settings = [run_settings(r, src) for src, r in checked]
    values = [_metric_values(r) for _, r in checked]
    placements = [_placement(r) for _, r in checked]
    why_not = same_runs(checked) + refusals(checked)
    if len(why_not) == 1 and not force:
        raise SpecError(f"compare: {why_not[0]}; add --force to compare anyway")
    if why_not and not force:
        raise SpecError(
            [f"compare: {m}" for m in why_not]
            + ["compare: refusing to compare these reports; add --force to compare anyway"]
        )
    lab = make_labels(settings, labels)
    warnings = [f"forced: {m}" for m in why_not]
    runs = []
    for (src, r), s, lb, pl in zip(checked, settings, lab, placements):
        pinned, ok, verdict, places, pages = pl
        runs.append(
            Run(
                label=lb,
                path=src,
                name=str(r.job.name),
                status=r.status,
                started_at=r.started_at,
                settings=s,
                pinned=pinned,
                placement_ok=ok,
                placement_verdict=verdict,
                workers=places,
                pages=pages,
            )
        )
        if pinned and not ok:
            warnings.append(f"[{lb}] {verdict}")
    metrics = []
    for key, title, unit, better, single in _METRICS:
        samples = [_sample(v[key], single) for v in values]
        changes: list[Change | None] = [None] + [
            _change(lab[i], samples[0], samples[i], better, single) for i in range(1, len(reports))
        ]
        metrics.append(Metric(key, title, unit, better, single, samples, changes))
    for i, lb in enumerate(lab):
        noisy = [
            f"{smp.stdev / abs(smp.mean):.0%} of the mean {m.title}"
            for m in metrics
            for smp in [m.samples[i]]
            if not m.single
            and smp.n > 1
            and smp.mean
            and smp.stdev is not None
            and smp.stdev >= NOISY_CV * abs(smp.mean)
        ]
        if noisy:
            warnings.append(
                f"[{lb}] noisy: the stdev is {' and '.join(noisy)} (≥ {NOISY_CV:.0%}); the machine was "
                "busy or the repeats too short: use more repeats, more data, or a quieter machine"
            )
    for lb, v in zip(lab, values):
        n = len(v["repeat"])
        if n < MIN_REPEATS:
            warnings.append(
                f"[{lb}] only {n} repeat{'s' * (n != 1)} (< {MIN_REPEATS}): too few for the test to "
                f"tell a real difference from noise; set repeats: {MIN_REPEATS} or more"
            )
    keys = list(settings[0])
    differs = {
        k: [_fmt_setting(s[k]) for s in settings] for k in keys if len({_fmt_setting(s[k]) for s in settings}) > 1
    }
    for dotted, get, _what, _why in _INVARIANTS:  # forced comparisons show the forbidden differences too
        vals = [_fmt_setting(get(r)) for _, r in checked]
        if len(set(vals)) > 1:
            differs[dotted] = vals
    return Comparison(
        runs=runs, same={} if why_not else _same_text(checked), differs=differs, metrics=metrics, warnings=warnings
    )


# -- rendering ---------------------------------------------------------------------------------


def format_value(sample: Sample, unit: str) -> str:
    """``41.20 ms ± 1.30`` (stdev in the center's unit), ``4.64 GB/s ± 0.77``, ``974.13 ms``."""
    if sample.center is None:
        return "-"
    if unit == "s":
        factor, text = time_unit(sample.center)[0], format_seconds(sample.center)
    else:
        factor, text = 1.0, f"{sample.center:.2f} {unit}"
    if sample.stdev is not None:
        text += f" ± {sample.stdev * factor:.2f}"
    return text


def _worker_line(w: WorkerPlace) -> str:
    return (
        f"{w.where or 'rank '}{w.rank}: cpus {w.cpus_observed or '-'} (asked {w.cpus_requested or '-'}), "
        f"ran on {w.cpus_ran_on or '-'}, node {'-' if w.node is None else w.node}"
    )


def render_text(cmp: Comparison) -> str:
    """The readable terminal form: one aligned row per metric and run, ``[a] X -> [b] Y: 1.33x faster``."""
    ref = cmp.runs[0]
    out = [f"reference: [{ref.label}] {ref.path} ({ref.name}, {ref.status})"]
    for r in cmp.runs[1:]:
        out.append(f"     vs    [{r.label}] {r.path} ({r.name}, {r.status})")
    if cmp.same:
        out.append("same in every run: " + ", ".join(f"{k} {v}" for k, v in cmp.same.items()))
    if cmp.differs:
        out.append("what differs:")
        out.append(
            text_table(
                ["setting"] + [f"[{r.label}]" for r in cmp.runs], [[k, *v] for k, v in cmp.differs.items()], indent="  "
            )
        )
    else:
        out.append("what differs: nothing in the recorded settings (the same job run again)")
    out.append("")
    out.append(f"results (median ± stdev over repeats; Welch's t-test, two-sided, α = {cmp.alpha}):")
    rows = []
    for m in cmp.metrics:
        ref_cell = f"[{ref.label}] {format_value(m.samples[0], m.unit)}"
        for i, r in enumerate(cmp.runs[1:], start=1):
            ch = m.changes[i]
            rows.append(
                [
                    m.title if i == 1 else "",
                    ref_cell,
                    "->",
                    f"[{r.label}] {format_value(m.samples[i], m.unit)}:",
                    ch.verdict if ch else "",
                ]
            )
    out.append(text_table(["metric", "reference", "", "run", "change"], rows, indent="  "))
    out.append("")
    out.append("where the workers ran (cpus = observed inside the worker; ran on = sampled each repeat):")
    for r in cmp.runs:
        out.append(f"  [{r.label}] {r.placement_verdict}")
        for w in r.workers:
            out.append(f"    {_worker_line(w)}")
        for p in r.pages:
            out.append(f"    pages: {p}")
    if cmp.warnings:
        out.append("")
        out.append("warnings:")
        out.extend(f"  {w}" for w in cmp.warnings)
    return "\n".join(out)


def render_markdown(cmp: Comparison) -> str:
    """Markdown tables for docs: runs, what differs, results, placement; warnings as a list."""
    ref = cmp.runs[0]
    parts = [
        markdown_table(
            ["run", "report", "job", "status"],
            [
                [f"[{r.label}]" + (" (reference)" if i == 0 else ""), f"`{r.path}`", r.name, r.status]
                for i, r in enumerate(cmp.runs)
            ],
        )
    ]
    if cmp.same:
        parts.append("Same in every run: " + ", ".join(f"{k} {v}" for k, v in cmp.same.items()) + ".")
    if cmp.differs:
        parts.append(
            markdown_table(["setting"] + [f"[{r.label}]" for r in cmp.runs], [[k, *v] for k, v in cmp.differs.items()])
        )
    headers = ["metric", f"[{ref.label}]"]
    for r in cmp.runs[1:]:
        headers += [f"[{r.label}]", f"[{r.label}] vs [{ref.label}]"]
    rows = []
    for m in cmp.metrics:
        row = [m.title, format_value(m.samples[0], m.unit)]
        for i in range(1, len(cmp.runs)):
            ch = m.changes[i]
            row += [format_value(m.samples[i], m.unit), ch.verdict if ch else ""]
        rows.append(row)
    parts.append(
        markdown_table(headers, rows) + f"\n\nMedian ± stdev over repeats; Welch's t-test, two-sided, α = {cmp.alpha}."
    )
    prow = []
    for r in cmp.runs:
        for w in r.workers:
            prow.append(
                [
                    f"[{r.label}]",
                    str(w.rank),
                    w.cpus_requested,
                    w.cpus_observed,
                    w.cpus_ran_on,
                    "-" if w.node is None else str(w.node),
                ]
            )
    verdicts = "\n".join(f"- [{r.label}] {r.placement_verdict}" for r in cmp.runs)
    parts.append(
        markdown_table(["run", "rank", "cpus asked", "cpus observed", "ran on", "node"], prow) + "\n\n" + verdicts
    )
    if cmp.warnings:
        parts.append("Warnings:\n\n" + "\n".join(f"- {w}" for w in cmp.warnings))
    return "\n\n".join(parts)


def render_json(cmp: Comparison) -> str:
    return json.dumps(cmp.to_dict(), indent=2, sort_keys=True)
