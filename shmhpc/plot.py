"""Plots of loaded reports: GB/s against workers per pinning policy, and per-worker timelines.

matplotlib is an optional extra (``pip install 'shmhpc[plot]'``) imported only here, inside
the functions. Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot:
no global backend or figure state is changed (a savefig picks the Agg canvas for PNG by
itself), so the plots work on a headless node and inside another program's process.

* :func:`plot_scaling` — median GB/s against the number of workers, one line per pinning
  policy (and per any other setting that differs between the reports), error bars = the
  sample stdev of the per-repeat GB/s, and the machine's measured bandwidth ceiling as a
  dashed line when a report carries ``bandwidth.ceiling_gbps``.
* :func:`plot_timeline` — one panel per report, one row per worker (its rank and observed
  CPUs), one bar per chunk of the last repeat from ``workers[].chunk_s``; a worker runs
  its chunks back to back, so bars start where the previous one ended.

Like ``compare``, a plot refuses to mix hosts, CPU models, data or kernels unless forced.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .compare import LABEL_KEYS, Reports, make_labels, refusals, run_settings
from .cpulist import format_cpulist
from .errors import SpecError
from .outputs import Output, check_output, write_with
from .report import as_run_report
from .report_model import Data, RunReport

__all__ = ["plot_scaling", "plot_timeline", "require_matplotlib", "MISSING"]

MISSING = "plot: matplotlib is not installed; pip install 'shmhpc[plot]'"


def require_matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SpecError(MISSING) from None
    return Figure


def _check_mixable(reports: list[tuple[str, RunReport]], force: bool) -> list[str]:
    why = [m for m in refusals(reports) if "has status" not in m]
    if why and not force:
        raise SpecError(
            [f"plot: {m}" for m in why]
            + ["plot: refusing to draw these reports together; add --force to draw them anyway"]
        )
    return [f"forced: {m}" for m in why]


def _short_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return str(n)
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _describe(report: RunReport) -> str:
    """``sum over 20,000,000 float32 (80.0 MB) on vm (AMD EPYC)``."""
    data, host = report.data or Data(), report.host
    shape_text = "×".join(f"{x:,}" for x in data.shape) if data.shape is not None else str(data.shape)
    size = f" ({data.nbytes / 1e6:,.1f} MB)" if data.nbytes is not None else ""
    return f"{report.job.kernel} over {shape_text} {data.dtype}{size} on {host.hostname} ({host.cpu_model})"


def _gbps(r: RunReport) -> list[float]:
    return list((r.bandwidth.gbps_per_repeat if r.bandwidth else None) or [])


def _repeat_s(r: RunReport) -> list[float]:
    return list((r.timings.repeat_s if r.timings else None) or [])


def check_image_output(out: str | Path) -> Output:
    """``-o``: checked before anything is drawn; its folder must exist; an older image is replaced."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in FigureCanvasBase.get_supported_filetypes():
        raise SpecError(f"-o: {str(out)!r}: format {fmt or '(none)'!r} is not supported; use .png, .svg or .pdf")
    return check_output(out, what="-o", overwrite=True)


def _save(fig: Any, out: str | Path | Output) -> Path:
    target = out if isinstance(out, Output) else check_image_output(out)
    fmt = target.path.suffix.lstrip(".").lower()
    return write_with(target, lambda f: fig.savefig(f, format=fmt, dpi=120))


def plot_scaling(reports: Reports, out: str | Path | Output, *, force: bool = False) -> list[str]:
    """GB/s against workers, one line per pinning policy; returns notes about reports left out."""
    figure = require_matplotlib()
    notes: list[str] = []
    usable = []
    for src, raw in reports:
        r = as_run_report(src, raw)
        gbps = _gbps(r)
        if r.status != "ok" or not gbps:
            notes.append(f"{src}: left out (status {r.status}, {len(gbps)} GB/s values)")
            continue
        usable.append((src, r))
    if not usable:
        raise SpecError("plot: no report with status ok and per-repeat GB/s to draw")
    notes += _check_mixable(usable, force)

    settings = [run_settings(r, src) for src, r in usable]
    apart = {"workers", "placement", "pinned", "pinning"}
    differ = [k for k in LABEL_KEYS if k not in apart and len({repr(s[k]) for s in settings}) > 1]
    lines: dict[str, dict[int, list[float]]] = {}
    for (_, r), s in zip(usable, settings):
        name = " ".join([str(s["pinning"])] + [f"{LABEL_KEYS[k] or k + '='}{s[k]}" for k in differ])
        lines.setdefault(name, {}).setdefault(int(s["workers"]), []).extend(_gbps(r))

    fig = figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    xs_all: set[int] = set()
    for name, points in lines.items():
        xs = sorted(points)
        xs_all.update(xs)
        ys = [statistics.median(points[x]) for x in xs]
        errs = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=4, label=name)
    ceilings = [
        c for _, r in usable for c in [r.bandwidth.ceiling_gbps if r.bandwidth else None] if c is not None and c > 0
    ]
    if ceilings:
        ceiling = max(ceilings)
        ax.axhline(ceiling, linestyle="--", color="gray", label=f"measured bandwidth ceiling {ceiling:.1f} GB/s")
    ax.set_xticks(sorted(xs_all))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("workers")
    ax.set_ylabel("GB/s (median over repeats; bars: ±1 stdev)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="pinning")
    ax.set_title(
        _describe(usable[0][1])
        if len({repr(r.host.hostname) for _, r in usable}) == 1
        else _describe(usable[0][1]) + " and other hosts",
        fontsize=10,
    )
    fig.suptitle("Bandwidth against workers")
    _save(fig, out)
    return notes


def plot_timeline(reports: Reports, out: str | Path | Output, *, force: bool = False) -> list[str]:
    """One panel per report: each worker's chunks of the last repeat as back-to-back bars."""
    figure = require_matplotlib()
    notes: list[str] = []
    usable = []
    for src, raw in reports:
        r = as_run_report(src, raw)
        ws = r.workers or []
        if not ws or not all(w.chunk_s for w in ws):
            notes.append(f"{src}: left out (no per-chunk timings; status {r.status})")
            continue
        usable.append((src, r))
    if not usable:
        raise SpecError("plot: no report has per-chunk timings (workers[].chunk_s) to draw")
    notes += _check_mixable(usable, force)
    labels = make_labels([run_settings(r, src) for src, r in usable])

    xmax = 0.0
    timelines = [(r, [(w, (w.chunk_s or [[]])[-1]) for w in r.workers or []]) for _, r in usable]
    for r, rows in timelines:
        for _, last in rows:
            xmax = max(xmax, sum(last) * 1e3)
        walls = _repeat_s(r)
        if walls:
            xmax = max(xmax, walls[-1] * 1e3)
    heights = [0.9 + 0.45 * len(rows) for _, rows in timelines]
    fig = figure(figsize=(9, 1.0 + sum(heights)), layout="constrained")
    axes = fig.subplots(len(usable), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": heights})[:, 0]
    try:
        from matplotlib import colormaps

        cmap = colormaps["tab20"]
    except ImportError:  # matplotlib < 3.5 has no colormaps registry; tab10's colors are the default cycle
        cmap = None
    for ax, (r, worker_rows), label in zip(axes, timelines, labels):
        g = 0
        ticks = []
        for row, (w, last) in enumerate(worker_rows):
            t = 0.0
            chunks = w.chunks or []
            for k, d in enumerate(last):
                ms = d * 1e3
                color = cmap(g % 20) if cmap is not None else f"C{g % 10}"
                ax.barh(row, ms, left=t, height=0.7, color=color, edgecolor="white")
                if ms > 0.12 * xmax:
                    span = chunks[k] if k < len(chunks) else None
                    where = f"rows {_short_count(span[0])}-{_short_count(span[1])}" if span else f"chunk {k}"
                    ax.text(t + ms / 2, row, f"{where}\n{ms:.2f} ms", ha="center", va="center", fontsize=7)
                t += ms
                g += 1
            node = w.node
            ticks.append(
                f"rank {w.rank}\nCPUs {format_cpulist(w.cpus_observed or []) or '-'}"
                + ("" if node is None else f", node {node}")
            )
        ax.set_yticks(range(len(ticks)), labels=ticks, fontsize=8)
        ax.set_ylim(len(ticks) - 0.5, -0.5)  # rank 0 on top
        walls = _repeat_s(r)
        wall = ""
        if walls:  # the launcher's wall time of the round: the slowest worker plus messaging
            ax.axvline(walls[-1] * 1e3, linestyle="--", color="black")
            wall = f", wall time {walls[-1] * 1e3:.2f} ms (dashed)"
        n = len(walls)
        policy = r.plan.policy if r.plan else None
        nw = len(worker_rows)
        ax.set_title(
            f"[{label}] {r.job.name}: pinning {policy}, {nw} worker{'s' * (nw != 1)}, last repeat ({n} of {n}){wall}",
            fontsize=9,
        )
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1].set_xlim(0, xmax * 1.05 if xmax > 0 else 1)
    axes[-1].set_xlabel("ms since the worker received the repeat (its chunks run back to back)")
    fig.suptitle(f"Per-worker timeline: {_describe(usable[0][1])}", fontsize=10)
    _save(fig, out)
    return notes
