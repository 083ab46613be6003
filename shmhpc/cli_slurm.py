"""Command line for batch jobs: ``shmhpc slurm render|submit JOB.yaml``.

``render`` prints the filled-in script(s); ``submit`` renders, calls ``sbatch --parsable`` and
prints the job id(s), the log paths and where the report(s) will be. Both check everything they can
before anything is submitted: the spec, the template, the resources against the partition's nodes.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:
    from .slurm import Rendered

__all__ = ["add_slurm_commands"]

# Command-line flags that set a field of the spec's slurm: section (flag dest -> field).
_RESOURCE_FLAGS = (
    "time",
    "partition",
    "account",
    "qos",
    "nodes",
    "mem",
    "cpus_per_task",
    "signal_lead_s",
    "job_name",
    "array_throttle",
    "log_dir",
)


# Numeric flags are read as a --set value is (30, 1e3): out-of-range or absurd numbers get the spec's messages.
_NUMBER_FLAGS = ("nodes", "cpus_per_task", "signal_lead_s", "array_throttle")


def _flag_value(flag: str, text: str) -> Any:
    if flag not in _NUMBER_FLAGS:
        return text
    from .spec import NumberText, parse_value

    value = parse_value(text, f"--{flag.replace('_', '-')}")
    # Anything but a number stays the text typed, for the spec's message to quote.
    return value if isinstance(value, (int, float, NumberText)) and not isinstance(value, bool) else text


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        f"slurm.{k}": _flag_value(k, getattr(args, k)) for k in _RESOURCE_FLAGS if getattr(args, k) is not None
    }
    for flag in ("exclusive", "nomultithread"):
        if getattr(args, flag):
            values[f"slurm.{flag}"] = True
    if args.extra:
        values["slurm.extra"] = list(args.extra)
    return values


def _prepare(args: argparse.Namespace) -> Rendered:
    from .slurm import array_configs, render, resolve_resources
    from .slurm_submit import partition_nodes
    from .spec import load_spec

    if args.template != "compare-array" and args.array_of:
        raise SpecError(f"--array-of: only for --template compare-array (template is {args.template})")
    values = _overrides(args)
    base = list(args.set or [])
    spec = load_spec(args.spec, base or None, values)
    configs = []
    if args.template == "compare-array":
        configs = array_configs(spec, args.array_of or [], lambda extra: load_spec(args.spec, base + extra, values))
    node = partition_nodes(spec.slurm.partition)
    res, notes = resolve_resources(spec, args.template, node, configs)
    python = args.python or sys.executable
    rendered = render(spec, args.spec, args.template, res, python=python, overrides=base, configs=configs)
    rendered.notes.extend(notes)
    if node is None:
        rendered.notes.append("no Slurm partition could be described here: CPUs were not checked against a node")
    return rendered


def cmd_render(args: argparse.Namespace) -> int:
    rendered = _prepare(args)
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output_dir:
        from .outputs import check_output, write_text

        out = check_output(args.output_dir, what="--output-dir", folder=True)
        # A re-render replaces the scripts of an earlier one (regular files only, as everywhere).
        targets = [
            check_output(out.path / f"{rendered.name}-{s.template}.sbatch", what="--output-dir", overwrite=True)
            for s in rendered.scripts
        ]
        for s, target in zip(rendered.scripts, targets):
            print(f"wrote {write_text(target, s.text)}")
        return 0
    for i, s in enumerate(rendered.scripts):
        if len(rendered.scripts) > 1:
            deps = (
                ""
                if i == 0
                else " (submit after the array: --dependency=afterany:<array job> --export=ALL,ARRAY_JOB=<array job>)"
            )
            print(f"# ==> {s.template}.sbatch{deps} <==")
        sys.stdout.write(s.text)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .slurm import fill_known
    from .slurm_submit import slurm_available, submit

    if not slurm_available():
        raise SpecError("slurm submit: sbatch and scontrol are not on PATH; run it where Slurm is installed")
    rendered = _prepare(args)
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    done = submit(rendered, dependency=args.dependency)
    res = rendered.resources
    first = done[0]
    print(f"submitted {first.template}: job {first.job_id} ({res.cpus_per_task} CPUs per task, from {res.cpus_source})")
    print(f"  log:    {first.log}")
    print(f"  script: {first.script_path}")
    if rendered.configs:
        for i, (c, rep) in enumerate(zip(rendered.configs, rendered.reports)):
            print(
                f"  task {i} [{c.label}]: report {fill_known(rep, name=rendered.name, slurm_job=f'{first.job_id}_{i}')}"
            )
        for s in done[1:]:
            print(f"submitted {s.template}: job {s.job_id}, after job {first.job_id} ({args.dependency})")
            print(f"  log:    {s.log}")
            print(f"  script: {s.script_path}")
        cmp = fill_known(rendered.comparison or "", array_job=first.job_id)
        print(f"  comparison: {cmp}.txt, {cmp}.json")
    else:
        for rep in rendered.reports:
            print(f"  report: {fill_known(rep, name=rendered.name, slurm_job=first.job_id)}")
    print(f"  follow: squeue -j {','.join(s.job_id for s in done)}")
    return 0


def add_slurm_commands(sub: Any) -> None:
    """Add ``slurm render`` and ``slurm submit`` to the ``shmhpc`` subparsers."""
    from .slurm import TEMPLATES

    p = sub.add_parser(
        "slurm",
        help="render or submit sbatch scripts for a job spec (templates in slurm/)",
        description="Render the sbatch templates of slurm/ for a job spec, or submit them. Resources come "
        "from the spec's slurm: section, overridden by the flags below.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="{render,submit}")
    verbs.required = True
    for verb, func, what in (
        ("render", cmd_render, "print the filled-in sbatch script(s); submits nothing"),
        ("submit", cmd_submit, "render, submit with sbatch, print job id(s), logs and report paths"),
    ):
        v = verbs.add_parser(verb, help=what, description=what)
        v.add_argument("spec", help="YAML job spec")
        v.add_argument(
            "--template",
            default="pinned",
            choices=list(TEMPLATES),
            help="; ".join(f"{k}: {d}" for k, d in TEMPLATES.items()) + " (default pinned)",
        )
        v.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field in every run")
        v.add_argument(
            "--array-of",
            action="append",
            metavar="KEY=V1,V2",
            help="compare-array: an axis of configurations, like sweep --vary (default: pinning=none and the "
            "spec's pinning)",
        )
        g = v.add_argument_group("resources (override the spec's slurm: section)")
        g.add_argument("--time", help="time limit: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED")
        g.add_argument("--partition", help="partition to run in (default: the cluster's default partition)")
        g.add_argument("--account", help="account to charge")
        g.add_argument("--qos", help="quality of service")
        g.add_argument("--nodes", metavar="N", help="nodes (1 unless --template multinode)")
        g.add_argument("--mem", help="memory per node: MB, or a number with K, M, G or T (e.g. 8G)")
        g.add_argument(
            "--cpus-per-task", metavar="N", help="CPUs of the one task per node (default: those the plan pins)"
        )
        g.add_argument(
            "--signal-lead-s", metavar="S", help="send USR1 this many seconds before the time limit (0: none)"
        )
        g.add_argument("--exclusive", action="store_true", help="ask for whole nodes (--exclusive)")
        g.add_argument(
            "--nomultithread", action="store_true", help="one hardware thread per core (--hint=nomultithread)"
        )
        g.add_argument("--job-name", help="job name (default: the spec's name)")
        g.add_argument("--array-throttle", metavar="N", help="compare-array: at most N tasks at once")
        g.add_argument("--log-dir", metavar="DIR", help="where job logs go (default: the submit directory)")
        g.add_argument(
            "--extra", action="append", metavar="OPTION", help="another #SBATCH option, written --extra=--constraint=x"
        )
        v.add_argument("--python", metavar="PATH", help="the Python the job runs shmhpc with (default: this one)")
        if verb == "render":
            v.add_argument("-o", "--output-dir", metavar="DIR", help="write the script(s) there instead of printing")
        else:
            v.add_argument(
                "--dependency",
                choices=["afterany", "afterok"],
                default="afterany",
                help="compare-array: run the comparison after every task ended (afterany) or only if all "
                "succeeded (afterok)",
            )
        v.set_defaults(func=func)
