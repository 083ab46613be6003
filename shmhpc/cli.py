"""Command line: ``python -m shmhpc {run,plan,topology,validate,clean,schema,compare,sweep,plot,slurm}``.

Exit codes: 0 ok; 1 a run that failed; 2 bad input (spec, arguments, files);
128+N when stopped by signal N. Errors print as ``error: …`` lines, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cpulist import format_cpulist, parse_cpulist
from .errors import ShmhpcError, SpecError

if TYPE_CHECKING:
    from .spec import JobSpec
    from .topology import Topology

__all__ = ["main"]


def _topology_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sysfs-root",
        metavar="DIR",
        help="read the machine from this sysfs root instead of /sys (also $SHMHPC_SYSFS_ROOT)",
    )
    p.add_argument(
        "--allowed-cpus",
        metavar="LIST",
        help="use these CPUs (e.g. 0-7,16-23) instead of this process's affinity ∩ cgroup",
    )


def _read_topology(args: argparse.Namespace) -> Topology:
    from .topology import read_topology

    allowed = None
    if args.allowed_cpus is not None:
        try:
            allowed = parse_cpulist(args.allowed_cpus)
        except ValueError as exc:
            raise SpecError(f"--allowed-cpus: {exc}") from None
        if not allowed:
            raise SpecError("--allowed-cpus: empty list")
    if args.sysfs_root is not None and not Path(args.sysfs_root).is_dir():
        raise SpecError(f"--sysfs-root: {args.sysfs_root!r} is not a directory")
    return read_topology(args.sysfs_root, allowed)


def _load(args: argparse.Namespace, path: str) -> JobSpec:
    from .spec import load_spec

    return load_spec(path, getattr(args, "set", None) or None)


def _launcher() -> None:
    """This process will start workers: keep it single-threaded, so they can be forked from it."""
    from .threads import import_numpy_single_threaded

    import_numpy_single_threaded()


def cmd_run(args: argparse.Namespace) -> int:
    from .signals import StopSignals

    # From the first moment, not once the imports are done: under Slurm a time-limit warning or an
    # scancel can come while Python is still loading, and it must end in an `interrupted` report too.
    with StopSignals() as stop:
        _launcher()
        from .outputs import STDOUT
        from .progress import make_progress
        from .report import report_json, summarize
        from .runner import run_job

        spec = _load(args, args.spec)
        topo = _read_topology(args)
        to_stdout = args.report == STDOUT  # the report is the output; the summary goes to stderr
        kwargs = {
            "spec_dir": Path(args.spec).resolve().parent,
            "report_path": None if to_stdout else args.report,
            "progress": make_progress(args.quiet),
            "force": args.force,
            "write": not to_stdout,
            "stop": stop,
        }
        if getattr(args, "mpi", False):
            from .multinode import run_mpi

            whole, code = run_mpi(spec, topo, **kwargs)
            if whole is None:  # not rank 0: rank 0 reports for the whole job
                return code
            report = whole
        else:
            report = run_job(spec, topo, **kwargs)
    if args.json or to_stdout:
        print(report_json(report), end="")
    if not args.json:
        print(summarize(report, with_error=False), file=sys.stderr if to_stdout else sys.stdout)
    if report.get("report_error") and not (args.json or to_stdout):
        # Last resort: the numbers are not lost, they are here.
        print(f"the report could not be saved; here it is:\n{report_json(report)}", file=sys.stderr, end="")
    if report["status"] != "ok":
        for msg in report.get("errors") or [report.get("error")]:
            print(f"error: {msg}", file=sys.stderr)
    return int(report["exit_code"])


def cmd_plan(args: argparse.Namespace) -> int:
    from .numa_policy import planned
    from .planning import prepare

    spec = _load(args, args.spec)
    topo = _read_topology(args)
    prep = prepare(spec, topo, Path(args.spec).resolve().parent)
    # the segment's page size as planned: a hugetlbfs page, else the base page (mbind ranges are cut on it)
    numa, numa_lines = planned(prep.plan, spec.numa, topo, prep.data.nbytes, prep.pages.page_bytes or topo.page_bytes)
    if args.json:
        out = prep.plan.to_dict()
        out["job"] = spec.name
        out["data"] = prep.data.to_dict()
        out["numa"] = numa
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"plan for {spec.name} ({args.spec}):")
        print(prep.plan.format_table())
        print("\n".join(numa_lines))
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    topo = _read_topology(args)
    d = topo.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print(f"sysfs root: {d['root']}")
    print(
        f"{len(d['online'])} online CPUs ({format_cpulist(d['online'])}), {d['physical_cores']} physical cores, "
        f"{len(d['packages'])} package(s)"
        + (f" with {d['dies']} dies" if d["dies"] > len(d["packages"]) else "")
        + f", {len(d['nodes'])} NUMA node(s)"
    )
    print(
        f"usable CPUs: {format_cpulist(d['usable'])} ({d['usable_source']}), "
        f"{d['usable_physical_cores']} physical cores"
    )
    if d["cpu_quota"] is not None:
        print(f"cgroup CPU quota: {d['cpu_quota']:g} CPUs")
    for n in d["nodes"]:
        mem = f"{n['mem_total_bytes'] / 2**30:.1f} GiB" if n["mem_total_bytes"] else "? GiB"
        cpus = format_cpulist(n["cpus"]) or "none (memory only)"
        print(f"  node {n['id']}: CPUs {cpus}, memory {mem}")
    if (dist := d["numa_distances"]) and len(dist["nodes"]) > 1:
        print("  node distances (10: local; from the firmware's SLIT):")
        print("    " + " " * 6 + "".join(f"{n:>6}" for n in dist["nodes"]))
        for n, row in zip(dist["nodes"], dist["matrix"], strict=True):
            print(f"    {n:>6}" + "".join(f"{v:>6}" for v in row))
    smt = {tuple(c["siblings"]) for c in d["cpus"] if len(c["siblings"]) > 1}
    if smt:
        print("  SMT siblings: " + " ".join(format_cpulist(s) for s in sorted(smt)))
    if d["llc_bytes"]:
        print(f"  last-level cache: {d['llc_bytes'] / 2**20:.1f} MiB in total")
    for note in d["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .planning import prepare
    from .spec import load_spec

    topo = None
    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.set or None)
            if not args.schema_only:
                if topo is None:
                    topo = _read_topology(args)
                prepare(spec, topo, Path(path).resolve().parent)
            print(f"{path}: ok")
        except SpecError as exc:
            failed += 1
            for msg in exc.messages:
                line = msg if msg.startswith(path) else f"{path}: {msg}"
                print(f"error: {line}", file=sys.stderr)
    return 2 if failed else 0


def cmd_clean(args: argparse.Namespace) -> int:
    from .shm import SegmentCheck, check_segments, default_shm_dir, remove_stale, segment_dirs

    shm_dir = args.shm_dir or default_shm_dir()
    checks = check_segments(shm_dir)
    stale = [s for s in checks if s.stale]

    def size(s: SegmentCheck) -> str:
        return f"{s.size_bytes / 1e6:,.1f} MB" + (f", Slurm job {s.slurm_job}" if s.slurm_job else "")

    if not stale:
        print(f"no stale shmhpc segments of yours in {', '.join(segment_dirs(shm_dir))}")
    else:
        done = stale if args.dry_run else remove_stale(stale)
        verb = "would remove" if args.dry_run else "removed"
        for s in done:
            print(f"{verb} {s.path} ({size(s)}): {s.reason}")
        total = sum(s.size_bytes for s in done)
        print(f"{verb} {len(done)} segment{'s' * (len(done) != 1)}, {total / 1e6:,.1f} MB")
    for s in checks:
        if not s.stale:
            print(f"left alone: {s.path} ({size(s)}): {s.reason}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _launcher()
    from .bench import ceiling_path, format_bench, parse_size, run_bench
    from .outputs import check_output, write_text
    from .report import report_json

    topo = _read_topology(args)
    workers = None
    if args.workers is not None:
        try:
            workers = parse_cpulist(args.workers)
        except ValueError as exc:
            raise SpecError(f"--workers: {exc}") from None
        if not workers or workers[0] < 1:
            raise SpecError(f"--workers: {args.workers!r}; allowed: worker counts from 1, e.g. 1-4 or 1,2,4")
    target = check_output(ceiling_path(), what="--save", overwrite=True, make_parents=True) if args.save else None
    result = run_bench(
        topo,
        array_bytes=parse_size(args.size) if args.size else None,
        workers=workers,
        pinning=args.pinning,
        iterations=args.iterations,
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr),
    )
    print(report_json(result), end="") if args.json else print(format_bench(result))
    if target is not None:
        print(f"saved: {write_text(target, report_json(result))} (runs on this host report their share of it)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .report_model import report_json_schema
    from .spec import json_schema

    print(json.dumps(report_json_schema() if args.report else json_schema(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="shmhpc",
        description="Run chunk reductions over one shared NumPy array in pinned, NUMA-aware workers.",
    )
    parser.add_argument("--version", action="version", version=f"shmhpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "run",
        help="run a job spec and write its JSON report",
        description="Put the spec's array in shared memory, reduce it in pinned workers (warmup, then the timed "
        "repeats), verify the result and write the JSON report. Exit 0 ok, 1 the run failed, 2 bad input.",
    )
    p.add_argument("spec", help="YAML job spec")
    p.add_argument(
        "--report",
        metavar="PATH",
        help="report path (overrides the spec's report:); '-' prints the report on stdout and the summary on stderr",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. workers=4")
    p.add_argument("--json", action="store_true", help="print the whole report instead of the summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.add_argument(
        "--mpi",
        action="store_true",
        help="one of N launchers (mpirun -n N, srun --mpi=pmix): each node runs its slice, rank 0 reports",
    )
    _topology_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "plan",
        help="print where each worker will run; runs nothing",
        description="Validate a job spec against this machine (or the one --sysfs-root/--allowed-cpus describe) "
        "and print each worker's CPUs, NUMA node, rows and chunks. Nothing is allocated or run.",
    )
    p.add_argument("spec", help="YAML job spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    _topology_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "topology",
        help="what this machine looks like to shmhpc",
        description="Print the CPUs, cores, packages, NUMA nodes and caches shmhpc sees, and which CPUs it may "
        "use here (affinity, cgroup cpuset and quota).",
    )
    p.add_argument("--json", action="store_true", help="the whole topology as JSON")
    _topology_args(p)
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser(
        "validate",
        help="check job specs (and their placement on this machine); list every error",
        description="Check each job spec and print 'SPEC: ok' or one 'error: SPEC: field: …' line per problem; "
        "exit 2 if any spec has one. Unless --schema-only, also plan each spec on this machine.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML job specs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field")
    p.add_argument("--schema-only", action="store_true", help="check the specs alone, not against this machine")
    _topology_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "clean",
        help="remove shared-memory segments left by shmhpc launchers of yours that died",
        description="Finds segments named shmhpc-u<your uid>-p<pid>-… whose launcher pid is no longer running "
        "(or was reused by a newer process) and removes them. Never touches another user's segments or those "
        "of a run in progress. Looks in the shared-memory directory and on every hugetlbfs mount.",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--shm-dir", metavar="DIR", help="shared-memory directory (default /dev/shm or $SHMHPC_SHM_DIR)")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser(
        "bench",
        help="measure this machine's memory bandwidth ceiling (STREAM kernels in shmhpc's pinned pool)",
        description="Three float64 arrays (each >= 4x the last-level cache) in shared memory, first-touched by "
        "pinned workers; read, copy, scale, add and triad for each worker count; the best rate after the first "
        "iteration, the median and the spread, bytes counted as STREAM does and, separately, with "
        "write-allocate. --save keeps it for this host: runs then report their GB/s as a share of it.",
    )
    p.add_argument("--size", metavar="BYTES", help="bytes per array, e.g. 512M or 2G (default: 4x LLC, >= 64 MiB)")
    p.add_argument(
        "--workers", metavar="LIST", help="worker counts, e.g. 1-4 or 1,2,4 (default: 1 to the usable cores)"
    )
    p.add_argument(
        "--pinning",
        default="compact",
        choices=["compact", "scatter", "none"],
        help="placement policy (default compact)",
    )
    p.add_argument("--iterations", type=int, default=10, help="rounds of the five kernels; the first is discarded")
    p.add_argument("--save", action="store_true", help="keep the result as this host's ceiling (~/.cache/shmhpc)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _topology_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of job specs (or of run reports)",
        description="Print the JSON Schema (draft 2020-12) of job specs, for editors and CI linting; with "
        "--report, that of the JSON reports runs write.",
    )
    p.add_argument("--report", action="store_true", help="the schema of a run's JSON report instead")
    p.set_defaults(func=cmd_schema)
    from .cli_reports import add_report_commands
    from .cli_slurm import add_slurm_commands

    add_report_commands(sub)
    add_slurm_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ShmhpcError as exc:
        messages = exc.messages if isinstance(exc, SpecError) else [str(exc)]
        for msg in messages:
            print(f"error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shmhpc schema | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
