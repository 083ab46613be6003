"""Sweeps: run every combination of varied spec fields, one normal run and report each.

``--vary pinning=none,compact --vary workers=1,2,4`` is the cartesian product of the
axes, in the order given (the first axis varies slowest). Each value is parsed as YAML,
exactly as ``--set`` parses it, so ``true``, ``4`` and ``[[0],[1]]`` work; values are
separated by commas outside brackets and quotes.

Every combination is loaded and planned before anything runs: a value the spec refuses
(``workers=0``) is bad input and stops the sweep before it starts (exit 2); a combination
this machine cannot run (more workers than usable CPUs) is *skipped* with the planner's
reason. The summary (``sweep.json`` and ``sweep.md``) is rewritten after every run, so
an interrupted sweep (SIGINT/SIGTERM: the current run stops, its report says
``interrupted``) keeps every finished report and the summary of what finished.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import SpecError
from .outputs import check_output, write_text
from .progress import LiveLine, NullProgress, round_status
from .report import as_run_report, now_stamp, write_report
from .signals import StopSignals
from .tables import format_seconds, markdown_table, text_table

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["SWEEP_VERSION", "parse_vary", "combinations", "run_sweep", "SweepProgress", "summary_rows"]

SWEEP_VERSION = 1


# -- axes and combinations -------------------------------------------------------------------


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_vary(items: list[str], option: str = "--vary") -> list[tuple[str, list[str]]]:
    """``["pinning=none,compact", "workers=1,2"]`` → ``[("pinning", ["none", "compact"]), ("workers", ["1", "2"])]``.

    Values stay YAML text (the spec loader parses them); raises ``SpecError`` listing every
    malformed item, each naming ``option`` (the flag it came from).
    """
    axes: list[tuple[str, list[str]]] = []
    errors = []
    for item in items:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            errors.append(f"{option}: {item!r} is not key=v1,v2,… (e.g. workers=1,2,4 or numa.partition=true,false)")
            continue
        values = _split_values(rest)
        if any(v == "" for v in values):
            errors.append(f"{option} {key}: empty value in {rest!r}; separate values with single commas")
            continue
        if any(k == key for k, _ in axes):
            errors.append(f"{option} {key}: given twice; list all its values in one {option}")
            continue
        axes.append((key, values))
    if errors:
        raise SpecError(errors)
    if not axes:
        raise SpecError(f"{option}: nothing to vary; give at least one {option} key=v1,v2")
    return axes


def combinations(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The cartesian product as lists of ``key=value`` overrides, first axis slowest."""
    keys = [k for k, _ in axes]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(vs for _, vs in axes))]


def _slug(overrides: list[str], limit: int = 80) -> str:
    """``["pinning=[[0],[1]]", "workers=2"]`` → ``pinning-0_1_workers-2``: safe in a file name."""

    def clean(x: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "_", x).strip("_.")

    text = "_".join(f"{clean(k)}-{clean(v)}" for k, _, v in (o.partition("=") for o in overrides))
    return text[:limit] or "run"


def _yaml_value(text: str) -> Any:
    """A --vary value as the spec reads it (``1e6`` a number, 5000 digits text the spec refuses)."""
    from .spec import parse_value

    try:
        return parse_value(text, "--vary")
    except SpecError:
        return text


def _short(overrides: list[str], limit: int = 40) -> str:
    """The combination for a message: each override cut to ``limit`` characters (the field's error has the rest)."""
    return " ".join(o if len(o) <= limit else o[: limit - 1] + "…" for o in overrides)


# -- progress -------------------------------------------------------------------------------


class SweepProgress(NullProgress):
    """A live line on a terminal (``sweep [###   ] 3/6  workers=2  repeat 2/5``); plain lines in a batch log.

    Passed to ``run_job`` as its progress, so the live line follows the current run's
    phases and repeats; without a terminal only one line per finished (or skipped) run is
    printed.
    """

    def __init__(self, total: int, stream: IO[str] | None = None, tty: bool | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.total = total
        self.index = 0
        self.what = ""
        self.status = ""
        self._rounds = 0
        self._warmup = 0
        self._live_line = LiveLine(self.stream)

    # between runs
    def begin(self, index: int, what: str) -> None:
        self.index, self.what, self.status = index, what, "starting"
        self._draw()

    def line(self, text: str) -> None:
        if not self.quiet:
            self._live_line.print(text)

    def finished(self) -> None:
        self._live_line.clear()

    # run_job's progress interface
    def phase(self, text: str) -> None:
        self.status = text
        self._draw()

    def start_rounds(self, total: int, warmup: int) -> None:
        self._rounds, self._warmup = total, warmup
        self.status = "warmup" if warmup else "repeat 0/" + str(total - warmup)
        self._draw()

    def round_done(self, index: int, seconds: float) -> None:
        kind, i, n = round_status(index, self._rounds, self._warmup)
        self.status = f"{kind} {i}/{n}" + (f": {format_seconds(seconds)}" if kind == "repeat" else "")
        self._draw()

    def _draw(self) -> None:
        if self.quiet or not self.tty:
            return
        # The bar counts finished runs; the number names the one running.
        text = f"{self.index}/{self.total}  {self.what}  {self.status}"
        self._live_line.draw("sweep", max(0, self.index - 1), self.total, text)


# -- the sweep -----------------------------------------------------------------------------------


@dataclass
class Entry:
    index: int
    overrides: list[str]
    values: dict[str, Any]
    file: str
    status: str = "pending"  # pending | ok | failed | interrupted | skipped | not run
    reason: str | None = None
    workers: Any = None
    pinning: Any = None
    median_repeat_s: float | None = None
    median_gbps: float | None = None
    exit_code: int | None = None
    saved: bool = True  # False: the run's report could not be written (its reason says why)
    pages_where_intended: float | None = None  # the report's placement.fraction_intended
    policy_applied: bool | None = None  # placement.applied: False when an mbind policy was refused
    spec: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "overrides": self.overrides,
            "values": self.values,
            "status": self.status,
            "reason": self.reason,
            "report": self.file if self.saved and self.status not in ("skipped", "pending", "not run") else None,
            "workers": self.workers,
            "pinning": self.pinning,
            "median_repeat_s": self.median_repeat_s,
            "median_gbps": self.median_gbps,
            "exit_code": self.exit_code,
            "pages_where_intended": self.pages_where_intended,
            "policy_applied": self.policy_applied,
        }


def _placed(e: dict[str, Any]) -> str:
    """``100.0 %`` of sampled pages where the placement meant them; ``(not applied)`` when a policy was refused."""
    frac = e.get("pages_where_intended")
    text = "-" if frac is None else f"{100 * frac:.1f} %"
    return text + (" (not applied)" if e.get("policy_applied") is False else "")


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the sweep table: one row per combination."""
    keys = [a["key"] for a in summary["vary"]]
    headers = ["#", *keys, "status", "median repeat", "median GB/s", "pages placed", "report / reason"]
    rows = []
    for e in summary["runs"]:
        vals = dict(o.split("=", 1) for o in e["overrides"])
        rows.append(
            [
                f"{e['index']}",
                *[vals.get(k, "") for k in keys],
                e["status"],
                format_seconds(e["median_repeat_s"]),
                "-" if e["median_gbps"] is None else f"{e['median_gbps']:.2f}",
                _placed(e),
                (e["report"] or "") + (f" ({e['reason']})" if e["reason"] and e["report"] else (e["reason"] or "")),
            ]
        )
    return headers, rows


def _markdown(summary: dict[str, Any]) -> str:
    headers, rows = summary_rows(summary)
    counts = {
        s: sum(1 for e in summary["runs"] if e["status"] == s)
        for s in ("ok", "failed", "interrupted", "skipped", "not run", "pending")
    }
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        f"# Sweep of `{summary['spec']}` ({summary['name']})\n\n"
        f"Host {summary['host']}, started {summary['started_at']}, status **{summary['status']}** ({tally}).\n"
        f"Varied: {'; '.join(a['key'] + ' = ' + ', '.join(a['values']) for a in summary['vary'])}.\n\n"
        + markdown_table(headers, rows)
        + "\n"
    )


def text_summary(summary: dict[str, Any]) -> str:
    headers, rows = summary_rows(summary)
    return text_table(headers, rows)


def _plan_entries(
    spec_path: str, base: list[str], combos: list[list[str]], topology: Topology, spec_dir: Path
) -> list[Entry]:
    """Load and plan every combination before anything runs.

    A value the spec refuses is bad input for the whole sweep (every such message raised at once);
    a combination this machine cannot run is kept as ``skipped`` with the planner's reason.
    """
    from .planning import prepare
    from .spec import load_spec

    entries: list[Entry] = []
    errors: list[str] = []
    for i, overrides in enumerate(combos, start=1):
        entry = Entry(
            index=i,
            overrides=overrides,
            values={o.split("=", 1)[0]: _yaml_value(o.split("=", 1)[1]) for o in overrides},
            file=f"{i:03d}-{_slug(overrides)}.json",
        )
        try:
            spec = load_spec(spec_path, base + overrides)
        except SpecError as exc:
            errors.extend(f"--vary {_short(overrides)}: {m}" for m in exc.messages)
            continue
        entry.spec = spec
        entry.workers, entry.pinning = spec.workers, spec.pinning
        try:
            prep = prepare(spec, topology, spec_dir)
            entry.workers, entry.pinning = len(prep.plan.workers), prep.plan.policy
        except SpecError as exc:
            entry.status, entry.reason = "skipped", "; ".join(exc.messages)
        entries.append(entry)
    if errors:
        raise SpecError(errors)
    return entries


def _run_entry(
    e: Entry, tag: str, out: Path, progress: SweepProgress, run: Callable[[Any, str], dict[str, Any]]
) -> None:
    """Run one combination and record its outcome in ``e`` (and one line of progress)."""
    progress.begin(e.index, " ".join(e.overrides))
    t0 = time.perf_counter()
    report = run(e.spec, str(out / e.file))
    progress.finished()
    r = as_run_report(str(out / e.file), report, strict=False)
    e.status = r.status
    e.exit_code = r.exit_code or 0
    e.reason = r.error
    if r.report_path:
        e.file = os.path.relpath(r.report_path, out)
    e.saved = r.report_path is not None
    e.median_repeat_s = r.timings.repeat.median if r.timings and r.timings.repeat else None
    e.median_gbps = r.bandwidth.gbps.median if r.bandwidth and r.bandwidth.gbps else None
    if r.placement is not None:
        e.pages_where_intended = r.placement.fraction_intended
        e.policy_applied = r.placement.applied
    if e.status == "ok":
        progress.line(
            f"{tag}: ok, median {format_seconds(e.median_repeat_s)}, "
            f"{e.median_gbps or 0:.2f} GB/s ({time.perf_counter() - t0:.1f} s) -> {out / e.file}"
        )
    else:
        progress.line(f"{tag}: {e.status}: {e.reason}")


def _new_summary(
    spec_path: str, name: str, base: list[str], axes: list[tuple[str, list[str]]], out: Path
) -> dict[str, Any]:
    return {
        "version": SWEEP_VERSION,
        "kind": "shmhpc-sweep",
        "spec": str(spec_path),
        "name": name,
        "set": base,
        "vary": [{"key": k, "values": vs} for k, vs in axes],
        "host": socket.gethostname(),
        "out": str(out),
        "started_at": now_stamp(),
        "finished_at": None,
        "status": "running",
        "runs": [],
    }


def run_sweep(
    spec_path: str,
    vary: list[str],
    out_dir: str | None = None,
    *,
    base_overrides: list[str] | None = None,
    quiet: bool = False,
    force: bool = False,
    stream: IO[str] | None = None,
    run: Callable[..., dict[str, Any]] | None = None,
    topology: Topology | None = None,
) -> tuple[dict[str, Any], int]:
    """Run every combination; return ``(summary, exit_code)``.

    Every combination is planned against, and run with, ``topology`` (default: this
    machine as ``read_topology()`` sees it; the CLI passes ``--sysfs-root``/``--allowed-cpus``).
    The exit code is 0 when every run that ran is ok (skipped ones do not count), 1 when a
    run failed, and the interrupted run's code (130 SIGINT, 143 SIGTERM) when stopped.
    Raises ``SpecError`` for bad ``--vary`` items, values the spec refuses, an output
    directory that already holds a sweep (unless ``force``), or when every combination is
    impossible here.
    """
    from .runner import run_job
    from .spec import load_spec
    from .topology import read_topology

    run = run or run_job
    axes = parse_vary(vary)
    base = list(base_overrides or [])
    base_spec = load_spec(spec_path, base or None)
    spec_dir = Path(spec_path).resolve().parent
    if topology is None:
        topology = read_topology()

    entries = _plan_entries(spec_path, base, combinations(axes), topology, spec_dir)

    out = Path(out_dir) if out_dir else Path("sweeps") / f"{base_spec.name}-{now_stamp()}"
    if (out / "sweep.json").exists() and not force:
        raise SpecError(f"--out: {out} already holds a sweep (sweep.json); choose another directory or add --force")
    # The folder (and its parents) is created on purpose; the summaries in it must be replaceable.
    check_output(out, what="--out", folder=True)
    targets = [check_output(out / n, what="--out", overwrite=True) for n in ("sweep.json", "sweep.md")]

    summary = _new_summary(spec_path, base_spec.name, base, axes, out)

    def save() -> None:
        summary["runs"] = [e.to_dict() for e in entries]
        summary.pop("save_error", None)
        try:
            write_report(summary, targets[0])
            write_text(targets[1], _markdown(summary))
        except OSError as exc:  # a full disk: the sweep fails, and says so (the CLI prints the summary)
            summary["save_error"] = f"--out: could not write the summary in {str(out)!r}: {exc.strerror or exc}"

    progress = SweepProgress(len(entries), stream=stream, quiet=quiet)
    n_skip = sum(e.status == "skipped" for e in entries)
    progress.line(f"sweep: {len(entries)} combinations ({n_skip} skipped: impossible here) -> {out}")
    exit_code = 0
    save()
    with StopSignals() as stop:
        for e in entries:
            tag = f"[sweep {e.index}/{len(entries)}] {' '.join(e.overrides)}"
            if stop.signum is not None:
                e.status = "not run"
                continue
            if e.status == "skipped":
                progress.line(f"{tag}: skipped: {e.reason}")
                continue
            # The run records signals in the sweep's own handler: one owner, and the sweep sees them.
            _run_entry(
                e,
                tag,
                out,
                progress,
                lambda spec, path: run(
                    spec, topology, spec_dir=spec_dir, report_path=path, progress=progress, force=True, stop=stop
                ),
            )
            if e.status == "interrupted":
                exit_code = e.exit_code or 130
            elif e.status != "ok" and exit_code == 0:
                exit_code = 1
            save()

        signum = stop.signum
        if signum is not None:
            exit_code = exit_code if exit_code >= 128 else 128 + signum
            summary["status"] = "interrupted"
        else:
            summary["status"] = "failed" if exit_code else "ok"
        summary["finished_at"] = now_stamp()
        save()
        if summary.get("save_error") and exit_code == 0:
            exit_code = 1
    if all(e.status == "skipped" for e in entries):
        raise SpecError(
            f"sweep: every combination is impossible on this machine (summary in {out}); "
            f"first reason: {entries[0].reason}"
        )
    return summary, exit_code
