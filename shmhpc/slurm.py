"""sbatch scripts from the templates in ``slurm/``: pure rendering, no Slurm needed.

The templates are plain scripts a user can read, copy and submit by hand. Rendering changes two
things in them and nothing else:

* ``#SBATCH`` lines: each option the job needs gets its value; an option the job does not ask for is
  turned off as ``##SBATCH`` (sbatch reads only lines that start with exactly ``#SBATCH``); options
  the template lacks and the spec's ``slurm.extra`` lines go after the last directive;
* the block between ``# >>> shmhpc settings`` and ``# <<< shmhpc settings``: shell variables the
  script body reads (the Python, the spec, the report path, per-task overrides …).

Quoting: ``#SBATCH`` lines are parsed by sbatch, not by the shell (no ``$`` expansion, no ``;``); a
value is written bare when it is plain, else in double quotes with ``\\`` and ``"`` escaped, which
sbatch undoes. Newlines and control characters never get this far (the spec refuses them). Settings
are shell words quoted with ``shlex.quote``; the body only ever uses them in double quotes. So a job
name, path or partition with spaces, quotes, ``$`` or ``;`` stays one value and cannot change the script.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import RunError, SpecError

if TYPE_CHECKING:  # the spec model (pydantic) loads only when a command renders: `shmhpc --help` stays quick
    from .spec import JobSpec

__all__ = [
    "TEMPLATES",
    "COMPANION",
    "NodeInfo",
    "Resources",
    "Script",
    "Rendered",
    "Config",
    "template_dir",
    "read_template",
    "array_configs",
    "resolve_resources",
    "render",
    "fill_known",
    "quote_directive",
]

# What each template is for; compare-array comes with compare-reports, the job that runs after it.
TEMPLATES = {
    "pinned": "one pinned run on one node",
    "unpinned": "the same run with pinning: none (the baseline of a comparison)",
    "compare-array": "a job array, one configuration per task, and a dependent job that compares the reports",
    "multinode": "one launcher per node, combined with MPI (`run --mpi`)",
}
COMPANION = {"compare-array": "compare-reports"}
SETTINGS_BEGIN = "# >>> shmhpc settings"
SETTINGS_END = "# <<< shmhpc settings"
_DIRECTIVE_RE = re.compile(r"^(#{1,2})SBATCH\s+(--[A-Za-z][\w-]*)(?:=(\S*))?(\s+#.*)?$")
_SETTING_RE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*?)(\s{2,}#.*)?$")
_PLAIN_RE = re.compile(r"^[A-Za-z0-9_.,:@%+=/-]+$")
_COMMENT_COLUMN = 41  # where the templates' inline comments start


def template_dir() -> Path:
    """The folder of ``*.sbatch`` templates: inside the installed package, or ``slurm/`` of a checkout."""
    here = Path(__file__).resolve().parent
    for d in (here / "templates", here.parent / "slurm"):
        if (d / "pinned.sbatch").is_file():
            return d
    raise RunError(f"sbatch templates not found (looked in {here / 'templates'} and {here.parent / 'slurm'})")


def read_template(name: str) -> str:
    if name not in TEMPLATES and name not in COMPANION.values():
        raise SpecError(f"--template: {name!r} is not a template; allowed: {', '.join(TEMPLATES)}")
    return (template_dir() / f"{name}.sbatch").read_text()


@dataclass(frozen=True)
class NodeInfo:
    """The nodes of one partition, as ``scontrol`` describes them."""

    partition: str
    nodes: int
    cpus: int  # CPUs of the smallest node
    threads_per_core: int
    source: str


@dataclass(frozen=True)
class Config:
    """One task of a compare array: its label and the ``key=value`` overrides that make it."""

    label: str
    overrides: tuple[str, ...]
    spec: JobSpec


@dataclass(frozen=True)
class Resources:
    """What the job asks Slurm for, resolved from the spec, the command line and the partition."""

    job_name: str
    time: str
    partition: str | None
    account: str | None
    qos: str | None
    nodes: int
    mem: str | None
    cpus_per_task: int
    cpus_source: str
    signal_lead_s: int
    exclusive: bool
    nomultithread: bool
    extra: tuple[str, ...]
    log_dir: str
    array_throttle: int | None


@dataclass
class Script:
    template: str
    text: str
    log: str  # sbatch's --output pattern (%j, %A, %a still in it)


@dataclass
class Rendered:
    template: str
    name: str  # the spec's name (safe in file names, unlike a job name)
    resources: Resources
    scripts: list[Script]
    reports: list[str]  # report path templates ({slurm_job} still in them), one per run
    configs: list[Config] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comparison: str | None = None  # compare-array: the comparison's path, without .txt/.json


# -- quoting ----------------------------------------------------------------------------------


def quote_directive(value: str) -> str:
    """A value for an ``#SBATCH`` line: bare when plain, else double-quoted the way sbatch reads it."""
    if _PLAIN_RE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shell_value(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return shlex.quote(value)
    return "(" + " ".join(shlex.quote(v) for v in value) + ")"


# -- resources --------------------------------------------------------------------------------


def _label(overrides: Sequence[str]) -> str:
    # compare --labels splits on commas: keep them out of a label.
    return "/".join(o.split("=", 1)[1] for o in overrides).replace(",", ";") or "spec"


def array_configs(spec: JobSpec, array_of: Sequence[str], load: Callable[[list[str]], JobSpec]) -> list[Config]:
    """The configurations of a compare array: the cartesian product of ``--array-of`` axes
    (first axis slowest, like a sweep), or pinned vs unpinned when none is given.

    ``load`` validates the spec with extra overrides; every bad combination is reported at once.
    """
    from .sweep import combinations, parse_vary

    if array_of:
        combos = combinations(parse_vary(list(array_of), option="--array-of"))
    else:
        pinned = spec.pinning if spec.pinning != "none" else "compact"
        combos = [["pinning=none"], [f"pinning={pinned}" if isinstance(pinned, str) else f"pinning={pinned!r}"]]
    out: list[Config] = []
    errors: list[str] = []
    for combo in combos:
        try:
            out.append(Config(_label(combo), tuple(combo), load(combo)))
        except SpecError as exc:
            errors.extend(f"--array-of {' '.join(combo)}: {m}" for m in exc.messages)
    if errors:
        raise SpecError(errors)
    if len(out) < 2:
        raise SpecError("--array-of: a comparison needs at least two configurations, e.g. pinning=none,compact")
    return out


def _what_pins(spec: JobSpec) -> str:
    return f"{spec.workers} workers × {spec.threads_per_worker} thread{'s' * (spec.threads_per_worker != 1)}"


def resolve_resources(
    spec: JobSpec, template: str, node: NodeInfo | None, configs: Sequence[Config] = ()
) -> tuple[Resources, list[str]]:
    """The job's resources and notes; raises ``SpecError`` for what the template cannot satisfy.

    CPUs per task: ``slurm.cpus_per_task`` when given (it must cover what the plan pins), else the
    CPUs the plan pins (workers × threads per worker, the largest over an array's configurations),
    else, for ``workers: auto`` or a likwid-style expression, a whole node of the partition.
    """
    if template not in TEMPLATES:
        raise SpecError(f"--template: {template!r} is not a template; allowed: {', '.join(TEMPLATES)}")
    s = spec.slurm
    errors: list[str] = []
    notes: list[str] = []
    specs = [c.spec for c in configs] or [spec]
    from .placement import cpus_needed

    needs = [(cpus_needed(x.pinning, x.workers, x.threads_per_worker), x) for x in specs]
    known = [(n, x) for n, x in needs if n is not None]
    unknown = [x for n, x in needs if n is None]
    needed = max((n for n, _ in known), default=None)
    cpus: int | None
    if s.cpus_per_task is not None:
        cpus, source = s.cpus_per_task, "slurm.cpus_per_task"
        for n, x in known:
            if n > cpus and not x.oversubscribe:
                errors.append(
                    f"slurm.cpus_per_task: {cpus} is fewer than the {n} CPUs the plan pins ({_what_pins(x)}); "
                    f"give at least {n}, or fewer workers"
                )
    elif unknown and node is not None:
        cpus, source = node.cpus, f"a whole node of partition {node.partition} ({node.source})"
    elif unknown:
        x = unknown[0]
        why = "workers: auto" if x.workers == "auto" else f"pinning {x.pinning!r}"
        errors.append(
            f"slurm.cpus_per_task: {why} needs the CPUs of one node at render time; give --cpus-per-task N "
            "(or slurm.cpus_per_task in the spec), or --partition P where `scontrol` can describe P's nodes"
        )
        cpus, source = None, ""
    else:
        cpus, source = needed, "the plan: " + _what_pins(max(known, key=lambda t: t[0])[1])
    if node is not None and cpus is not None and cpus > node.cpus:
        errors.append(
            f"slurm.cpus_per_task: {cpus} CPUs is more than a node of partition {node.partition} has "
            f"({node.cpus}, {node.source})"
        )
    if template != "multinode" and s.nodes != 1:
        errors.append(f"slurm.nodes: {s.nodes}, but template {template} runs on one node; use --template multinode")
    if template == "multinode" and node is not None and s.nodes > node.nodes:
        errors.append(f"slurm.nodes: {s.nodes} is more than partition {node.partition} has ({node.nodes})")
    if s.array_throttle is not None and template != "compare-array":
        errors.append(f"slurm.array_throttle: only for --template compare-array (template is {template})")
    if errors:
        raise SpecError(errors)
    assert cpus is not None  # every path without CPUs appended an error above
    if any(isinstance(x.pinning, list) for x in specs):
        notes.append(
            "pinning lists CPU ids: Slurm decides which CPUs a job gets, so they must be inside the allocation; "
            "ask for the whole node (--exclusive) or use compact/scatter"
        )
    return (
        Resources(
            job_name=s.job_name or spec.name,
            time=str(s.time),
            partition=s.partition,
            account=s.account,
            qos=s.qos,
            nodes=s.nodes,
            mem=None if s.mem is None else str(s.mem),
            cpus_per_task=cpus,
            cpus_source=source,
            signal_lead_s=s.signal_lead_s,
            exclusive=s.exclusive,
            nomultithread=s.nomultithread,
            extra=tuple(s.extra),
            log_dir=s.log_dir,
            array_throttle=s.array_throttle,
        ),
        notes,
    )


# -- rendering --------------------------------------------------------------------------------


def _directive(opt: str, value: str | bool, comment: str | None) -> str:
    line = f"#SBATCH {opt}" if value is True else f"#SBATCH {opt}={quote_directive(str(value))}"
    if comment:
        line = line.ljust(_COMMENT_COLUMN - 1) + " " + comment.strip()
    return line


def _set_directives(text: str, wanted: Mapping[str, str | bool | None], extra: Sequence[str]) -> str:
    """Give each ``#SBATCH`` option its value (None: turned off), add the missing ones and ``extra``."""
    lines = text.split("\n")
    seen: set[str] = set()
    last = 0
    for i, line in enumerate(lines):
        m = _DIRECTIVE_RE.match(line)
        if not m:
            continue
        last = i
        opt, comment = m.group(2), m.group(4)
        if opt not in wanted:
            continue
        seen.add(opt)
        value = wanted[opt]
        if value is None or value is False:
            if m.group(1) == "#":  # on in the template, off for this job
                lines[i] = "#" + line
        else:
            lines[i] = _directive(opt, value, comment)
    added = [_directive(o, v, None) for o, v in wanted.items() if o not in seen and v not in (None, False)]
    added += [f"#SBATCH {_option_line(x)}" for x in extra]
    lines[last + 1 : last + 1] = added
    return "\n".join(lines)


def _option_line(option: str) -> str:
    """``--constraint=a b`` as an ``#SBATCH`` argument: the value quoted, a bare flag as it is."""
    name, eq, value = option.partition("=")
    return f"{name}={quote_directive(value)}" if eq else quote_directive(name)


def _set_settings(text: str, values: Mapping[str, str | Sequence[str]], template: str) -> str:
    """Rewrite the settings block: every variable the template declares gets its value."""
    lines = text.split("\n")
    try:
        begin = next(i for i, x in enumerate(lines) if x.startswith(SETTINGS_BEGIN))
        end = next(i for i, x in enumerate(lines) if x.startswith(SETTINGS_END))
    except StopIteration:
        raise RunError(f"template {template}: no '{SETTINGS_BEGIN}' … '{SETTINGS_END}' block") from None
    declared = set()
    for i in range(begin + 1, end):
        m = _SETTING_RE.match(lines[i])
        if not m:
            continue
        name, comment = m.group(1), m.group(3)
        declared.add(name)
        if name not in values:
            raise RunError(f"template {template}: the renderer has no value for {name}")
        line = f"{name}={_shell_value(values[name])}"
        lines[i] = (line.ljust(_COMMENT_COLUMN - 1) + " " + comment.strip()) if comment else line
    missing = sorted(set(values) - declared)
    if missing:
        raise RunError(f"template {template}: its settings block lacks {', '.join(missing)}")
    return "\n".join(lines)


def _with_job_in_name(report: str) -> str:
    """The spec's report path with the placeholders a batch run needs to keep every report apart."""
    p = PurePosixPath(report)
    extra = "".join(f"-{{{k}}}" for k in ("pinning", "slurm_job") if f"{{{k}}}" not in report)
    if not extra:
        return report
    return str(p.with_name(p.stem + extra + p.suffix))


def _report_dir(report: str) -> str:
    parent = str(PurePosixPath(report).parent)
    return "reports" if "{" in parent or "}" in parent else parent


def fill_known(template: str, **known: Any) -> str:
    """``str.format`` that fills the placeholders it knows and leaves the others as ``{name}``."""

    class _Keep(dict):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    return string.Formatter().vformat(template, (), _Keep(known))


def _policy(spec: JobSpec) -> str:
    """The policy label the run will use for ``{pinning}`` (explicit CPU lists are ``explicit``)."""
    return "explicit" if isinstance(spec.pinning, list) else str(spec.pinning)


def _stamp(text: str, spec_path: str, template: str) -> str:
    """Say on the script's second line where it came from (the path JSON-quoted: one line, always)."""
    first, _, rest = text.partition("\n")
    return f"{first}\n# rendered by `shmhpc slurm render` from {json.dumps(spec_path)}, template {template}\n{rest}"


def _script(
    template: str,
    wanted: Mapping[str, str | bool | None],
    extra: Sequence[str],
    settings: Mapping[str, str | Sequence[str]],
    spec_path: str,
    log: str,
) -> Script:
    """One template filled in: its ``#SBATCH`` options, its settings block, where it came from."""
    text = _set_settings(_set_directives(read_template(template), wanted, extra), settings, template)
    return Script(template, _stamp(text, spec_path, template), log)


def _log(res: Resources, name: str) -> str:
    return name if res.log_dir in (".", "") else str(PurePosixPath(res.log_dir) / name)


def render(
    spec: JobSpec,
    spec_path: str,
    template: str,
    res: Resources,
    *,
    python: str,
    overrides: Sequence[str] = (),
    configs: Sequence[Config] = (),
) -> Rendered:
    """The script(s) for ``template``, filled in for ``spec`` (read from ``spec_path``) and ``res``."""
    settings: dict[str, str | Sequence[str]] = {
        "PYTHON": python,
        "SPEC": spec_path,
        "THREADS": str(spec.threads_per_worker),
        "SET": [a for o in overrides for a in ("--set", o)],
    }
    out = Rendered(template, spec.name, res, [], [])
    if template == "compare-array":
        _render_array(out, spec, spec_path, res, settings, configs)
    else:
        _render_run(out, spec, spec_path, res, settings)
    return out


def _common_options(res: Resources) -> dict[str, str | bool | None]:
    return {
        "--job-name": res.job_name,
        "--time": res.time,
        "--partition": res.partition,
        "--account": res.account,
        "--qos": res.qos,
    }


def _run_options(res: Resources) -> dict[str, str | bool | None]:
    """The options of a script that runs shmhpc (not of the one that only compares)."""
    return {
        **_common_options(res),
        "--cpus-per-task": str(res.cpus_per_task),
        "--signal": f"B:USR1@{res.signal_lead_s}" if res.signal_lead_s else None,
        "--exclusive": res.exclusive or None,
        "--hint": "nomultithread" if res.nomultithread else None,
        "--mem": res.mem,
    }


def _render_run(
    out: Rendered, spec: JobSpec, spec_path: str, res: Resources, settings: dict[str, str | Sequence[str]]
) -> None:
    """pinned, unpinned, multinode: one script, one report."""
    template = out.template
    if template == "unpinned":
        settings["SET"] = ["--set", "pinning=none", *settings["SET"]]
    report = _with_job_in_name(spec.report)
    settings["REPORT"] = report
    policy = "none" if template == "unpinned" else _policy(spec)
    from .spec import policy_slug

    known = {"name": spec.name, "pinning": policy_slug(policy)}
    if spec.workers != "auto":  # auto: the machine decides, at run time
        known["workers"] = str(spec.workers)
    out.reports.append(fill_known(report, **known))
    log = _log(res, f"{spec.name}-%j.out")
    wanted = {**_run_options(res), "--output": log, "--nodes": str(res.nodes)}
    wanted["--ntasks-per-node" if template == "multinode" else "--ntasks"] = "1"
    out.scripts.append(_script(template, wanted, res.extra, settings, spec_path, log))


def _render_array(
    out: Rendered,
    spec: JobSpec,
    spec_path: str,
    res: Resources,
    settings: dict[str, str | Sequence[str]],
    configs: Sequence[Config],
) -> None:
    """compare-array: the array, one configuration per task, then the job that compares its reports."""
    report_dir = _report_dir(spec.report)
    n = len(configs)
    settings.update(
        REPORT_DIR=report_dir,
        NAME=spec.name,
        CONFIG=[o for c in configs for o in c.overrides],
        PER_TASK=str(len(configs[0].overrides)),
    )
    out.configs = list(configs)
    throttle = f"%{res.array_throttle}" if res.array_throttle else ""
    log = _log(res, f"{spec.name}-%A_%a.out")
    wanted = {**_run_options(res), "--output": log, "--nodes": "1", "--ntasks": "1", "--array": f"0-{n - 1}{throttle}"}
    out.scripts.append(_script(out.template, wanted, res.extra, settings, spec_path, log))
    out.reports = [str(PurePosixPath(report_dir) / f"{spec.name}-{{slurm_job}}.json") for _ in configs]
    companion = COMPANION[out.template]
    clog = _log(res, f"{spec.name}-compare-%j.out")
    cwanted = {**_common_options(res), "--job-name": f"{res.job_name}-compare", "--time": "00:10:00", "--output": clog}
    csettings: dict[str, str | Sequence[str]] = {
        "PYTHON": settings["PYTHON"],
        "REPORT_DIR": report_dir,
        "NAME": spec.name,
        "TASKS": str(n),
        "LABELS": [c.label for c in configs],
    }
    out.scripts.append(_script(companion, cwanted, (), csettings, spec_path, clog))
    out.comparison = str(PurePosixPath(report_dir) / f"{spec.name}-{{array_job}}-compare")
