"""Command line for reports: ``compare``, ``sweep`` and ``plot``.

``compare`` and ``plot`` read reports only; ``sweep`` runs jobs through ``run_job`` and
writes one normal report per combination plus a summary. Errors are raised as
``SpecError`` (exit 2) for bad input and reported by ``shmhpc.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:
    from .report_model import RunReport

__all__ = ["add_report_commands", "collect_report_paths"]


def collect_report_paths(items: list[str]) -> list[str]:
    """Files as given; a directory stands for its ``*.json`` reports (not ``sweep.json``, not dotfiles)."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.glob("*.json") if f.name != "sweep.json" and not f.name.startswith("."))
            if not found:
                raise SpecError(f"{item}: directory holds no report (*.json)")
            out.extend(found)
        else:
            out.append(item)
    return out


def _load_all(paths: list[str]) -> list[tuple[str, RunReport]]:
    from .report import read_report

    return [(p, read_report(p)) for p in paths]


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_reports, render_json, render_markdown, render_text

    paths = collect_report_paths(args.reports)
    if len(paths) < 2:
        raise SpecError("compare: needs at least two reports (the first is the reference)")
    reports = _load_all(paths)
    labels = args.labels.split(",") if args.labels is not None else None
    if labels is not None and len(labels) != len(reports):
        raise SpecError(f"--labels: {len(labels)} labels for {len(reports)} reports; give one per report")
    if args.ok_only:
        keep = [i for i, (_, r) in enumerate(reports) if r.status == "ok"]
        for i, (src, r) in enumerate(reports):
            if i not in keep:
                why = f" ({r.error})" if r.error else ""
                print(f"note: leaving out {src}: status {r.status!r}{why}", file=sys.stderr)
        reports = [reports[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
        if len(reports) < 2:
            n = len(reports)
            raise SpecError(f"compare: --ok-only left {n} report{'s' * (n != 1)} with status 'ok'; needs at least two")
    cmp = compare_reports(reports, labels=labels, force=args.force)
    if args.json:
        print(render_json(cmp))
    elif args.markdown:
        print(render_markdown(cmp))
    else:
        print(render_text(cmp))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .cli import _launcher, _read_topology

    _launcher()
    from .sweep import run_sweep, text_summary

    summary, code = run_sweep(
        args.spec,
        args.vary,
        args.out,
        base_overrides=args.set,
        quiet=args.quiet,
        force=args.force,
        topology=_read_topology(args),
    )
    print(text_summary(summary))
    if summary.get("save_error"):
        print(f"error: {summary['save_error']}; the summary follows:", file=sys.stderr)
        print(json.dumps(summary, indent=2, sort_keys=True, default=str), file=sys.stderr)
        return code
    print(f"summary: {Path(summary['out']) / 'sweep.json'}, {Path(summary['out']) / 'sweep.md'}")
    if summary["status"] == "interrupted":
        print("error: sweep interrupted; finished reports and the summary are kept", file=sys.stderr)
    elif code:
        print("error: some runs failed; see the summary", file=sys.stderr)
    return code


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import check_image_output, plot_scaling, plot_timeline, require_matplotlib

    require_matplotlib()  # fail on a missing matplotlib before reading anything
    reports = _load_all(collect_report_paths(args.reports))
    kind = args.kind
    if kind == "auto":
        kind = "timeline" if len(reports) == 1 else "scaling"
    # Every image's place is checked before anything is drawn.
    scaling = check_image_output(args.output) if kind in ("scaling", "both") else None
    timeline = (
        check_image_output(args.output if kind == "timeline" else _suffixed(args.output, "-timeline"))
        if kind in ("timeline", "both")
        else None
    )
    notes: list[str] = []
    if scaling is not None:
        notes += plot_scaling(reports, scaling, force=args.force)
        print(f"wrote {scaling.path} (GB/s against workers, {len(reports)} reports)")
    if timeline is not None:
        notes += plot_timeline(reports, timeline, force=args.force)
        print(f"wrote {timeline.path} (per-worker timeline, {len(reports)} report{'s' * (len(reports) != 1)})")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return 0


def _suffixed(path: str, extra: str) -> str:
    p = Path(path)
    return str(p.with_name(p.stem + extra + p.suffix))


def add_report_commands(sub: Any) -> None:
    """Add ``compare``, ``sweep`` and ``plot`` to the ``shmhpc`` subparsers."""
    from .cli import _topology_args

    p = sub.add_parser(
        "compare",
        help="compare reports: is the difference real, what differed, where workers ran",
        description="The first report is the reference. Each metric is shown as "
        "'[ref] X ± s -> [run] Y ± s: 1.33x faster' with Welch's t-test (two-sided, alpha 0.05) on the "
        "per-repeat values. Reports from different hosts, CPU models, data or kernels, one run given twice, "
        "or reports whose status is not ok, are refused unless --force; timings that are not positive numbers "
        "are refused even then.",
    )
    p.add_argument(
        "reports",
        nargs="+",
        metavar="REPORT",
        help="report files (JSON), or directories of reports; the first is the reference",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable comparison")
    fmt.add_argument("--markdown", action="store_true", help="Markdown tables, for pasting into docs")
    p.add_argument("--labels", metavar="A,B,…", help="labels for the reports, in order (default: pinning policy)")
    p.add_argument("--force", action="store_true", help="compare even reports that should not be compared")
    p.add_argument(
        "--ok-only",
        action="store_true",
        help="leave out (and name) reports whose run did not finish ok, e.g. the failed tasks of a job array",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "sweep",
        help="run every combination of varied spec fields; one report each plus a summary",
        description="Each --vary KEY=V1,V2 is one axis (KEY a dotted spec field, values parsed as YAML, "
        "commas inside brackets kept); every combination runs as a normal job writing DIR/NNN-….json, and "
        "DIR/sweep.json + DIR/sweep.md summarize the sweep after every run. Combinations impossible on this "
        "machine (or the one --sysfs-root/--allowed-cpus describe) are skipped with the reason. Ctrl-C or "
        "SIGTERM stops after keeping what finished.",
    )
    p.add_argument("spec", help="YAML job spec")
    p.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="an axis, e.g. pinning=none,compact or numa.partition=true,false (repeatable)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field in every run")
    p.add_argument("--out", metavar="DIR", help="where reports and summary go (default sweeps/NAME-TIMESTAMP)")
    p.add_argument("--force", action="store_true", help="reuse a DIR that already holds a sweep")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _topology_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "plot",
        help="plot reports: GB/s against workers per pinning policy, or per-worker timelines",
        description="With several reports (or a sweep directory): GB/s against workers, one line per "
        "pinning policy. With one report: a per-worker timeline of its last repeat. --kind picks "
        "explicitly; 'both' writes the timeline to OUT-timeline.EXT beside OUT. Needs matplotlib "
        "(pip install 'shmhpc[plot]').",
    )
    p.add_argument("reports", nargs="+", metavar="DIR-or-REPORT", help="report files, or directories of reports")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="image to write (.png, .svg, .pdf)")
    p.add_argument(
        "--kind",
        choices=["auto", "scaling", "timeline", "both"],
        default="auto",
        help="auto: scaling for several reports, timeline for one",
    )
    p.add_argument("--force", action="store_true", help="draw reports from different hosts/data/kernels together")
    p.set_defaults(func=cmd_plot)
