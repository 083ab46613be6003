"""Talking to Slurm: what a partition's nodes look like (``scontrol``) and submitting (``sbatch``).

Only the commands every Slurm user has are used, each with a timeout, and their failures become
one-line errors that quote Slurm's own message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError, SpecError
from .outputs import check_output, write_text
from .slurm import NodeInfo, Rendered

__all__ = ["Submitted", "slurm_available", "partition_nodes", "submit"]

TIMEOUT_S = 30  # sbatch
DESCRIBE_TIMEOUT_S = 10  # scontrol, asked while rendering: an unreachable controller must not stall it


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("scontrol") is not None


def _scontrol(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, timeout=DESCRIBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _fields(line: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", line)}


def partition_nodes(partition: str | None) -> NodeInfo | None:
    """Describe ``partition`` (the default one when None) from ``scontrol``; None when Slurm cannot tell.

    Raises ``SpecError`` for a partition that Slurm does not know.
    """
    if shutil.which("scontrol") is None:
        return None
    out = _scontrol("-o", "show", "partition")
    if out is None:
        return None
    parts = [_fields(line) for line in out.splitlines() if line.strip()]
    if partition is None:
        chosen = next((p for p in parts if p.get("Default") == "YES"), None)
        if chosen is None:
            return None
    else:
        chosen = next((p for p in parts if p.get("PartitionName") == partition), None)
        if chosen is None:
            known = ", ".join(p.get("PartitionName", "?") for p in parts) or "none"
            raise SpecError(f"slurm.partition: {partition!r} is not a partition of this cluster; partitions: {known}")
    nodes_expr = chosen.get("Nodes", "")
    node_out = _scontrol("-o", "show", "node", nodes_expr) if nodes_expr and nodes_expr != "(null)" else None
    if node_out is None:
        return None
    cpus, threads = [], []
    for line in node_out.splitlines():
        f = _fields(line)
        if f.get("CPUTot", "").isdigit():
            cpus.append(int(f["CPUTot"]))
            threads.append(int(f["ThreadsPerCore"]) if f.get("ThreadsPerCore", "").isdigit() else 1)
    if not cpus:
        return None
    name = chosen.get("PartitionName", "?")
    return NodeInfo(
        partition=name,
        nodes=len(cpus),
        cpus=min(cpus),
        threads_per_core=max(threads),
        source=f"scontrol show partition {name}: {len(cpus)} node{'s' * (len(cpus) != 1)}, "
        f"{min(cpus)} CPUs on the smallest",
    )


@dataclass
class Submitted:
    """One submitted script: its job id, and its log with the job id filled in."""

    template: str
    job_id: str
    log: str
    script_path: str


def _sbatch(script: str, template: str, extra: Sequence[str] = ()) -> str:
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", *extra],
            input=script,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except OSError as exc:
        raise RunError(f"sbatch: cannot run it: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise RunError(f"sbatch: no answer from Slurm in {TIMEOUT_S} s") from None
    if done.returncode != 0:
        msg = " ".join(done.stderr.split()) or f"exit {done.returncode}"
        raise RunError(f"sbatch refused the {template} script: {msg}")
    # --parsable prints "jobid" or "jobid;cluster"
    job = done.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise RunError(f"sbatch: unexpected answer {done.stdout.strip()!r} (expected a job id)")
    return job


def _fill_log(pattern: str, job: str, array: bool) -> str:
    if array:
        return pattern.replace("%A", job).replace("%a", "<task>")
    return pattern.replace("%j", job)


def submit(rendered: Rendered, *, dependency: str = "afterany") -> list[Submitted]:
    """Submit the rendered scripts (the second, if any, after the first) from the current directory.

    The log folder is created first: sbatch does not create it, and a job whose log cannot be
    opened fails without a word. Each script is kept beside its log as ``NAME-TEMPLATE-JOBID.sbatch``.
    """
    if dependency not in ("afterany", "afterok"):
        raise SpecError(f"--dependency: {dependency!r}; allowed: afterany, afterok")
    log_dir = Path(rendered.resources.log_dir)
    check_output(log_dir, what="slurm.log_dir", folder=True)
    done: list[Submitted] = []
    first: str | None = None
    for script in rendered.scripts:
        extra: list[str] = []
        if first is not None:
            extra = [f"--dependency={dependency}:{first}", f"--export=ALL,ARRAY_JOB={first}"]
        job = _sbatch(script.text, script.template, extra)
        first = first or job
        kept = log_dir / f"{rendered.name}-{script.template}-{job}.sbatch"
        try:  # the job is submitted already: a copy that cannot be kept is only noted
            kept_path = str(write_text(check_output(kept, what="slurm.log_dir"), script.text))
        except (OSError, SpecError) as exc:
            kept_path = f"(not kept: {exc.strerror if isinstance(exc, OSError) else exc})"
        array = script.template == "compare-array"
        done.append(Submitted(script.template, job, _fill_log(script.log, job, array), kept_path))
    return done
