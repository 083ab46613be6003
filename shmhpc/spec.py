"""The job spec: its model, YAML loading, every validation message, its JSON Schema.

Validation happens once, here, and reports *every* problem as a one-line
message ``field.path: what is wrong (got X; allowed: …)``. Nothing in this
module touches hardware: checks that need the machine (is CPU 7 usable here?)
live in ``placement``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .cpulist import _MAX_CPU_ID, parse_cpulist
from .errors import SpecError

__all__ = [
    "DataSpec",
    "JobSpec",
    "NumaSpec",
    "NumberText",
    "SlurmSpec",
    "apply_overrides",
    "json_schema",
    "load_spec",
    "parse_value",
    "spec_from_dict",
]

# Largest array we accept: 64 TiB. Anything larger is a typo, not a job.
MAX_BYTES = 64 * 2**40
GENERATE_DTYPES = ("float32", "float64")
# Data that only the Python API places (shmhpc.Session.share): an in-memory array it copies, or an empty
# array the workers fill. A YAML job cannot name them: there is no array in a YAML file.
API_SOURCES = ("array", "empty")
FILE_DTYPES = (
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)
MAX_SPEC_BYTES = 1 << 20  # a job spec is a few hundred bytes; refuse megabytes of YAML
# A job spec is 3 levels deep (top -> pinning -> one worker's CPUs). Refusing anything much deeper
# up front keeps pydantic, repr() and the override copy away from Python's recursion limit.
MAX_DEPTH = 16
REPORT_PLACEHOLDERS = ("name", "timestamp", "workers", "pinning", "slurm_job")
# Upper bounds, so that every number the code goes on to use is one it can use.
MAX_CPUS = _MAX_CPU_ID + 1  # workers, threads per worker, CPUs per task: CPU ids end at 65535
MAX_INT32 = 2**31 - 1  # chunks, and Slurm's nodes, array throttle, minutes and MB: a C int
MAX_INT64 = 2**63 - 1  # a file offset (off_t)
MAX_TIMEOUT_S = 366 * 86400.0  # a year; leave timeout_s out for no timeout
MAX_NUMBER_CHARS = 100  # a YAML number longer than this is no field's value (Python converts at most 4300 digits)

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def policy_slug(policy: str) -> str:
    """A pinning policy as it goes into a report's file name (``{pinning}``): ``S0:0-1`` → ``S0_0-1``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in policy)


class NumberText(str):
    """A plain YAML scalar that is a number YAML 1.1 leaves as text (``1e6``, ``1e-9``, ``.5E3``) or that has
    too many characters to be built (over ``MAX_NUMBER_CHARS``).

    Text fields take it as written (a job named ``1e6``); number fields take its number (``_number``).
    """

    __slots__ = ()

    def __repr__(self) -> str:  # messages show it as written: (got 1e6)
        return str.__str__(self)

    @property
    def number(self) -> float | None:
        """The value (``inf`` beyond float range), or None when it is too long to be any field's value."""
        return None if len(self) > MAX_NUMBER_CHARS else float(self.replace("_", ""))


def _number(v: Any) -> Any:
    """A number field's input: ``NumberText`` becomes its float, anything else is left to the field."""
    if not isinstance(v, NumberText):
        return v
    n = v.number
    if n is None:
        raise _problems([("", f"a number of {len(v)} characters is out of range (got {_short(v)})")])
    return n


def _whole(v: Any) -> Any:
    """An integer field's input: ``1e6`` or ``1000.0`` is the whole number it is written as."""
    n = _number(v)
    if not isinstance(n, float):
        return n
    if not math.isfinite(n):
        raise _problems([("", f"out of range (got {_short(v)})")])
    if not n.is_integer():
        raise _problems([("", f"must be a whole number (got {_short(v)})")])
    return int(n)


def _off_word(v: Any) -> Any:
    """A choice field that has ``off``: YAML 1.1 (PyYAML) reads an unquoted ``off`` as false."""
    return "off" if v is False else v


# Bounds first, then the validator: pydantic then still writes them into the JSON Schema as it should.
PosInt = Annotated[int, Field(strict=True, gt=0), BeforeValidator(_whole)]
NonNegInt = Annotated[int, Field(strict=True, ge=0), BeforeValidator(_whole)]
CpuCount = Annotated[int, Field(strict=True, gt=0, le=MAX_CPUS), BeforeValidator(_whole)]
Count = Annotated[int, Field(strict=True, gt=0, le=MAX_INT32), BeforeValidator(_whole)]
CpuId = Annotated[int, Field(strict=True, ge=0, le=_MAX_CPU_ID)]
# What a user may write for one worker's CPUs: [0, 1], "0-1" or a single id. ``_check_pinning``
# normalizes all three to a sorted list of ints, which is all the planner ever sees.
CpuList = Union[Annotated[list[CpuId], Field(min_length=1)], str, CpuId]  # noqa: UP007 - used as a value
PinningInput = Union[Literal["none", "compact", "scatter"], Annotated[list[CpuList], Field(min_length=1)], str]  # noqa: UP007
POLICIES = ("none", "compact", "scatter")


def _problems(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One validation error carrying several ``(sub-path, message)`` problems; see ``_messages``."""
    detail = "; ".join(m for _, m in problems)
    return PydanticCustomError("shmhpc", "{detail}", {"detail": detail, "problems": problems})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_workers(v: Any) -> Any:
    if v == "auto":
        return v
    n = _whole(v)
    if _is_int(n) and 0 < n <= MAX_CPUS:
        return n
    raise _problems([("", f"must be a positive integer or 'auto' (got {_short(v)}); allowed: 1 to {MAX_CPUS}, auto")])


def _long_number(text: str) -> str | None:
    """The complaint about a number in a pinning expression too long to be a CPU id, count or index."""
    run = max(re.findall(r"\d+", text), key=len, default="")
    if len(run) <= 10:  # shorter numbers get the CPU-list parser's or the planner's own message
        return None
    limit = f"CPU ids, counts and indices go up to {_MAX_CPU_ID}"
    return f"a {len(run)}-digit number is out of range; {limit} (got {_short(text)})"


def _check_pinning(v: Any) -> Any:
    """Validate the *shape* of ``pinning``; whether CPUs exist here is the planner's job."""
    if isinstance(v, str):
        if not v.strip():
            allowed = f"{', '.join(POLICIES)}, CPU lists or a likwid-style expression"
            raise _problems([("", f"empty expression; allowed: {allowed}")])
        if (why := _long_number(v)) is not None:
            raise _problems([("", why)])
        return v.strip()
    if not isinstance(v, list) or not v:
        raise _problems(
            [
                (
                    "",
                    f"must be one of {', '.join(POLICIES)}, a list of per-worker CPU lists "
                    f"([[0], [1]]) or a likwid-style expression like 'N:0-3' (got {_short(v)})",
                )
            ]
        )
    out: list[list[int]] = []
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(v):
        cpus: list[int] = []
        if isinstance(item, str):
            try:
                if (why := _long_number(item)) is not None:
                    raise ValueError(why)
                cpus = parse_cpulist(item)
            except ValueError as exc:
                problems.append((f"[{i}]", str(exc)))
        elif _is_int(item):
            if not 0 <= item <= _MAX_CPU_ID:
                problems.append((f"[{i}]", f"{_short(item)} is not a CPU id (0 to {_MAX_CPU_ID})"))
            else:
                cpus = [item]
        elif isinstance(item, list):
            for j, c in enumerate(item):
                if not _is_int(c) or not 0 <= c <= _MAX_CPU_ID:
                    problems.append((f"[{i}][{j}]", f"{_short(c)} is not a CPU id (0 to {_MAX_CPU_ID})"))
                else:
                    cpus.append(c)
            dups = sorted({c for c in cpus if cpus.count(c) > 1})
            if dups:
                problems.append((f"[{i}]", f"CPU {', '.join(map(str, dups))} listed twice for one worker"))
        else:
            problems.append((f"[{i}]", f"{_short(item)} is not a CPU list (use [0, 1] or '0-1')"))
        if not cpus and not any(p[0].startswith(f"[{i}]") for p in problems):
            problems.append((f"[{i}]", "empty CPU list"))
        out.append(sorted(set(cpus)))
    if problems:
        raise _problems(problems)
    return out


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataSpec(_Model):
    """Where the array comes from and what it looks like."""

    source: Literal["generate", "npy", "raw", "array", "empty"] = Field(
        "generate", description="generate | npy | raw (array and empty: Session.share in Python only)"
    )
    size: PosInt | None = Field(None, description="number of elements (1-D); or give shape")
    shape: Annotated[list[PosInt], Field(min_length=1, max_length=2)] | None = Field(
        None, description="[rows] or [rows, cols]; partitioned along axis 0"
    )
    dtype: str | None = Field(None, description="float32 | float64 (generate); numeric dtypes for npy/raw")
    distribution: Literal["normal", "uniform"] = Field("normal", description="for generate: standard normal or [0, 1)")
    seed: NonNegInt = Field(0, description="for generate: root of the per-block SeedSequence")
    path: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="npy/raw file, relative to the spec's directory"
    )
    offset_bytes: Annotated[int, Field(strict=True, ge=0, le=MAX_INT64), BeforeValidator(_whole)] = Field(
        0, description="raw: bytes to skip at the start of the file"
    )

    @field_validator("dtype")
    @classmethod
    def _dtype_known(cls, v: str | None) -> str | None:
        if v is not None and v not in FILE_DTYPES:
            raise ValueError(f"{v!r} is not supported; allowed: {', '.join(FILE_DTYPES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        errs = _data_problems({f: getattr(self, f) for f in type(self).model_fields})
        if errs:
            raise _problems(errs)
        return self

    @property
    def n_elements(self) -> int | None:
        if self.shape is not None:
            return math.prod(self.shape)
        return self.size

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or "float32"


def _data_problems(d: Mapping[str, Any], bad: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Cross-field rules of ``data``, as ``(field, message)`` pairs.

    ``d`` holds the data fields (absent or None: not given); ``bad`` names the fields that
    already failed their own check: they count as given but their value is not used, so a
    spec with ``size: -1`` and no ``path`` still hears about both.
    """

    def given(k: str) -> bool:
        return d.get(k) is not None

    def ok(k: str) -> bool:
        return given(k) and k not in bad

    errs: list[tuple[str, str]] = []
    if given("size") and given("shape"):
        errs.append(("shape", "give size or shape, not both"))
    source = d.get("source", "generate") if "source" not in bad else None
    if source == "generate":
        if not given("size") and not given("shape"):
            errs.append(("size", "source generate needs size (elements) or shape"))
        if ok("dtype") and d["dtype"] not in GENERATE_DTYPES:
            errs.append(("dtype", f"{d['dtype']!r} cannot be generated; allowed: {', '.join(GENERATE_DTYPES)}"))
        if given("path"):
            errs.append(("path", "only for source npy or raw (source is generate)"))
    elif source in API_SOURCES:
        if not given("size") and not given("shape"):
            errs.append(("size", f"source {source} needs size or shape"))
        if not given("dtype"):
            errs.append(("dtype", f"source {source} needs dtype"))
        if given("path"):
            errs.append(("path", f"only for source npy or raw (source is {source})"))
    elif source is not None:
        if not given("path"):
            errs.append(("path", f"source {source} needs a file path"))
        if source == "raw" and not given("dtype"):
            errs.append(("dtype", "source raw needs dtype"))
        if source == "raw" and not given("size") and not given("shape"):
            errs.append(("size", "source raw needs size or shape"))
    if source is not None and source != "raw" and ok("offset_bytes") and d["offset_bytes"]:
        errs.append(("offset_bytes", f"only for source raw (source is {source})"))
    n = d["size"] if ok("size") else math.prod(d["shape"]) if ok("shape") else None
    dtype = d["dtype"] if ok("dtype") else None if given("dtype") else "float32"
    if n is not None and dtype is not None and n * _itemsize(dtype) > MAX_BYTES:
        errs.append(("size", f"{_short(n)} elements of {dtype} is over the {MAX_BYTES >> 40} TiB limit"))
    return errs


NodeId = Annotated[int, Field(strict=True, ge=0, le=_MAX_CPU_ID), BeforeValidator(_whole)]


class NumaSpec(_Model):
    """NUMA data placement: which rows go with which node, the memory policy that puts them there, and the check."""

    partition: bool = Field(True, description="one partition per NUMA node that has workers, sized by its worker count")
    placement: Literal["first-touch", "bind", "interleave", "none"] = Field(
        "first-touch", description="first-touch | bind | interleave | none (see README: NUMA placement)"
    )
    nodes: Annotated[list[NodeId], Field(min_length=1)] | None = Field(
        None, description="distinct node ids for bind/interleave (default: the nodes the workers run on)"
    )
    writer: Literal["auto", "owners", "launcher"] = Field(
        "auto", description="auto | owners | launcher: who writes the data (auto: launcher for placement none)"
    )
    verify: Literal["report", "warn", "strict"] = Field(
        "report", description="report | warn | strict: what a partition below min_local does"
    )
    min_local: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), BeforeValidator(_number)] = Field(
        0.99, description="a fraction in (0, 1]: of a partition's sampled pages, how many must be where intended"
    )

    @field_validator("nodes")
    @classmethod
    def _distinct_nodes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a node is named twice")
        return v

    @model_validator(mode="after")
    def _nodes_need_a_policy(self) -> NumaSpec:
        if self.nodes is not None and self.placement not in ("bind", "interleave"):
            raise _problems(
                [("nodes", f"{self.nodes} is only used with placement bind or interleave (got {self.placement!r})")]
            )
        return self

    @property
    def data_writer(self) -> str:
        """``owners`` or ``launcher``: ``auto`` resolved."""
        if self.writer != "auto":
            return self.writer
        return "launcher" if self.placement == "none" else "owners"


# Slurm's own time formats (sbatch --time): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_MEM_MB = {"K": 1 / 1024, "G": 1024, "T": 1024**2}
MAX_SIGNAL_LEAD_S = 65535  # sbatch --signal=…@TIME takes at most 0xffff seconds


def slurm_time_minutes(v: str | int) -> float | None:
    """Minutes in a Slurm time limit (``30``, ``1:30:00``, ``2-12``), or None for UNLIMITED."""
    if isinstance(v, int):
        return float(v)
    if v.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = v.rpartition("-")
    parts = [float(x) for x in rest.split(":")]  # float: no digit limit, an absurd number is inf
    if days:  # D-H[:M[:S]]
        h, m, sec = [*parts, 0, 0][:3]
        return float(days) * 1440 + h * 60 + m + sec / 60
    if len(parts) == 1:  # M
        return float(parts[0])
    if len(parts) == 2:  # M:S
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60


def _check_directive_text(v: str) -> str:
    # #SBATCH lines are read by sbatch, not by the shell, and end at the line's end: a value may hold
    # spaces, quotes, '$' or ';' (the renderer quotes them), but no line break or control character.
    bad = sorted({f"{ord(ch):#04x}" for ch in v if ord(ch) < 0x20 or ord(ch) == 0x7F})
    if bad:
        raise ValueError(f"control characters ({', '.join(bad)}) cannot go into an #SBATCH line")
    return v


def _check_option(v: str) -> str:
    if not v.startswith("-"):
        raise ValueError(f"{v!r} is not an sbatch option; write it as on the command line, e.g. --constraint=skylake")
    return _check_directive_text(v)


Directive = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_check_directive_text)]
SbatchOption = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_check_option)]


class SlurmSpec(_Model):
    """Resources for ``shmhpc slurm render|submit``; every field can be overridden on its command line."""

    time: Annotated[Annotated[int, Field(strict=True, gt=0, le=MAX_INT32)] | Directive, BeforeValidator(_whole)] = (
        Field("00:30:00", description="time limit: minutes, or M:S, H:M:S, D-H, D-H:M, D-H:M:S, or UNLIMITED")
    )
    partition: Directive | None = Field(None, description="partition (default: the cluster's default partition)")
    account: Directive | None = Field(None, description="account to charge")
    qos: Directive | None = Field(None, description="quality of service")
    nodes: Count = Field(1, description="nodes (templates other than multinode need 1)")
    mem: Annotated[
        Annotated[int, Field(strict=True, gt=0, le=MAX_INT32)] | Directive | None, BeforeValidator(_whole)
    ] = Field(None, description="memory per node: MB, or a number with K, M, G or T (e.g. 8G)")
    cpus_per_task: CpuCount | None = Field(
        None, description="CPUs of the one task per node (default: the CPUs the plan pins)"
    )
    signal_lead_s: Annotated[int, Field(strict=True, ge=0, le=MAX_SIGNAL_LEAD_S), BeforeValidator(_whole)] = Field(
        120, description="send USR1 this many seconds before the time limit (0: no warning signal)"
    )
    exclusive: bool = Field(False, description="ask for whole nodes (--exclusive)")
    nomultithread: bool = Field(False, description="one hardware thread per core (--hint=nomultithread)")
    job_name: Directive | None = Field(None, description="job name (default: the spec's name)")
    array_throttle: Count | None = Field(None, description="compare-array: at most this many tasks at once (%N)")
    log_dir: Annotated[str, Field(min_length=1)] = Field(
        ".", description="where sbatch writes job logs, relative to the submit directory"
    )
    extra: list[SbatchOption] = Field(
        default_factory=list, description="more #SBATCH options, each as on the sbatch command line"
    )

    @field_validator("time")
    @classmethod
    def _time_format(cls, v: int | str) -> int | str:
        if isinstance(v, str) and not (_TIME_RE.match(v) or v.upper() in ("UNLIMITED", "INFINITE")):
            raise ValueError("not a Slurm time; allowed: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED")
        minutes = slurm_time_minutes(v)
        if minutes is not None and minutes > MAX_INT32:
            raise ValueError(f"over Slurm's limit of {MAX_INT32} minutes; allowed: a shorter time or UNLIMITED")
        return v

    @field_validator("mem")
    @classmethod
    def _mem_format(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str) and not _MEM_RE.match(v.upper()):
            raise ValueError("not a Slurm memory size; allowed: MB as a number, or a number with K, M, G or T")
        if isinstance(v, str) and float(v.rstrip("KMGTkmgt")) * _MEM_MB.get(v[-1].upper(), 1) > MAX_INT32:
            raise ValueError(f"over Slurm's limit of {MAX_INT32} MB per node")
        return v

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, v: str) -> str:
        _check_directive_text(v)
        if "%" in v:
            raise ValueError("'%' is sbatch's pattern character (%j, %A…); it cannot be part of the folder name")
        return v

    @model_validator(mode="after")
    def _signal_before_end(self) -> SlurmSpec:
        minutes = slurm_time_minutes(self.time)
        if minutes is not None and self.signal_lead_s >= minutes * 60:
            raise _problems(
                [
                    (
                        "signal_lead_s",
                        f"{self.signal_lead_s} s is not before the end of a {self.time!r} "
                        f"time limit ({minutes * 60:g} s)",
                    )
                ]
            )
        return self


class JobSpec(_Model):
    """A shmhpc job: data, workers, placement, kernel, repeats and report."""

    name: Annotated[str, Field(pattern=_NAME_RE)] = Field(..., description="job name: letters, digits, '_', '.', '-'")
    data: DataSpec
    workers: Annotated[CpuCount | Literal["auto"], BeforeValidator(_check_workers)] = Field(
        "auto", description="count, or auto = one per usable physical core"
    )
    threads_per_worker: CpuCount = Field(1, description="CPUs and BLAS/OpenMP threads per worker")
    # The type is the normalized form; the JSON Schema shows what a user may write (PinningInput).
    pinning: Annotated[
        Literal["none", "compact", "scatter"] | list[list[CpuId]] | str,
        BeforeValidator(_check_pinning, json_schema_input_type=PinningInput),
    ] = Field(
        "compact",
        description="none | compact | scatter | explicit CPU lists per worker"
        " | likwid-style expression (N:0-3, S0:0-1@S1:0-1, E:N:4:1:2)",
    )
    oversubscribe: bool = Field(False, description="allow more worker threads than usable CPUs")
    numa: NumaSpec = Field(default_factory=NumaSpec)
    chunks_per_worker: Count = Field(2, description="chunks each worker reduces per repeat")
    kernel: Annotated[str, Field(min_length=1)] = Field(
        "sum", description="sum | mean | min | max | var | std | norm2 | package.module:function"
    )
    accumulate: Literal["float64", "native"] = Field(
        "float64", description="float64 (accurate) | native (the array's dtype, numpy's pairwise sum: fastest)"
    )
    engine: Literal["auto", "numpy", "numba"] = Field(
        "auto",
        description="what sums the built-in sum/mean over float32/float64 data: numba (float64 lanes at memory"
        " speed; pip install 'shmhpc[fast]') | numpy | auto (numba when installed and the job reads enough"
        " data to repay its ~0.7 s start)",
    )
    repeats: Annotated[int, Field(strict=True, ge=1, le=1_000_000), BeforeValidator(_whole)] = Field(5)
    warmup: Annotated[int, Field(strict=True, ge=0, le=1_000_000), BeforeValidator(_whole)] = Field(1)
    verify: bool = Field(True, description="check the result against an independent single-process computation")
    on_nonfinite: Literal["warn", "fail"] = Field(
        "warn",
        description="NaN/inf in the data (scanned when verify is on) or in the result: warn (the run passes,"
        " not verified, with a warning giving the counts) | fail (the run fails)",
    )
    start_method: Literal["auto", "fork", "forkserver", "spawn"] = Field(
        "auto",
        description="auto (fork when the launcher has a single thread at that moment, else forkserver; the report"
        " says which and why) | fork | forkserver | spawn",
    )
    huge_pages: Annotated[Literal["auto", "require", "off"], BeforeValidator(_off_word)] = Field(
        "auto",
        description="auto | require | off. auto: the shared segment on a hugetlbfs mount with enough free huge"
        " pages, else in /dev/shm asking for transparent huge pages (the report says why); require: refuse to run"
        " (exit 2) without huge pages; off: /dev/shm with base pages",
    )
    report: Annotated[str, Field(min_length=1)] = Field(
        "reports/{name}.json",
        description="report path; placeholders {name} {timestamp} {workers} {pinning} {slurm_job}",
    )
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False), BeforeValidator(_number)] | None = (
        Field(None, description="fail the run if one phase (load or one repeat) takes longer")
    )
    stall_warning_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False), BeforeValidator(_number)] = (
        Field(
            60.0,
            description="say (on the terminal and in the report) when a worker has finished no chunk for this long, "
            "and whether it is stopped, sleeping or running; the run goes on (timeout_s ends it)",
        )
    )
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    @field_validator("report")
    @classmethod
    def _report_placeholders(cls, v: str) -> str:
        # The runner fills this in with str.format: check it the way str.format will read it,
        # so "{name", "}" or "{name.__class__}" fail here and not after the run.
        allowed = " ".join(f"{{{p}}}" for p in REPORT_PLACEHOLDERS) + " ({{ and }} for literal braces)"
        try:
            fields = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}; allowed: {allowed}") from None
        for _, field, spec, conv in fields:
            if field is None:
                continue
            if field not in REPORT_PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{field}}}; allowed: {allowed}")
            if spec or conv:
                raise ValueError(f"placeholder {{{field}}} takes no conversion or format spec; allowed: {allowed}")
        # A spec may come from someone else: it must not climb out of where it is run.
        if ".." in re.split(r"[/\\]", v):
            raise ValueError(
                "'..' is not allowed in a report path (path traversal); use --report PATH to write elsewhere"
            )
        if "\x00" in v:
            raise ValueError("NUL byte in report path")
        return v


# -- loading & messages --------------------------------------------------------------


def _itemsize(dtype: str) -> int:
    return int(re.sub(r"\D", "", dtype) or 8) // 8


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _submodel(model: type[BaseModel] | None, part: Any) -> type[BaseModel] | None:
    if model is None or not isinstance(part, str) or part not in model.model_fields:
        return None
    ann = model.model_fields[part].annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _field_path(loc: tuple[Any, ...], raw: Any) -> str:
    """``data.size``, ``pinning[1][0]``, ``data['my key']`` for a pydantic error location.

    The location is walked alongside the input and the model, so a part that is neither a
    field nor a key/index of the input (a union-branch tag like ``literal['none']``) is
    skipped, while a user's key is always shown -- quoted when it is not a plain name.
    """
    out = ""
    cur: Any = raw
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        is_field = model is not None and isinstance(part, str) and part in model.model_fields
        is_index = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        is_key = isinstance(cur, dict) and part in cur
        if not (is_field or is_index or is_key):
            continue
        if is_index:
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{_short(part)}]"
        model = _submodel(model, part) if is_field else None
        cur = cur[part] if (is_index or is_key) else None
    return out or "(top level)"


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        model = _submodel(model, part)
    return model


def _short(v: Any) -> str:
    if _is_int(v) and v.bit_length() > 256:  # repr() of a 4300-digit int raises ValueError
        return f"a {v.bit_length()}-bit integer"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _join(path: str, sub: str) -> str:
    if not sub or sub.startswith("["):
        return path + sub
    return sub if path == "(top level)" else f"{path}.{sub}"


def _messages(exc: ValidationError, raw: Any) -> list[str]:
    """One line per problem: ``field.path: what is wrong (got VALUE); allowed: ...``."""
    msgs: list[str] = []
    # Union fields could give one error per branch; keep one line per field and rule.
    seen: set[str] = set()

    def add(key: str, msg: str) -> None:
        if key not in seen:
            seen.add(key)
            msgs.append(msg)

    errors = exc.errors(include_url=False)
    for err in errors:
        loc = tuple(err["loc"])
        path = _field_path(loc, raw)
        etype = err["type"]
        if etype == "shmhpc":
            for sub, text in err["ctx"]["problems"]:
                full = _join(path, sub)
                add(f"{full}: {text}", f"{full}: {text}")
            continue
        if etype in ("extra_forbidden", "invalid_key"):
            key = loc[-1] if loc else None
            parent = _model_for(loc[:-1])
            choices = sorted(parent.model_fields) if parent else []
            allowed = f" (allowed: {', '.join(choices)})" if choices else ""
            if etype == "invalid_key":
                where = _field_path(loc[:-1], raw)
                add(path, f"{where}: key {_short(err.get('input', key))} is not a string{allowed}")
                continue
            close = difflib.get_close_matches(key, choices, n=1) if isinstance(key, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"{path}: unknown key{hint}{allowed}"
        elif etype == "missing":
            msg = f"{path}: required field is missing"
        else:
            text = err["msg"]
            text = re.sub(r"^(Value error|Assertion failed), ", "", text)
            msg = f"{path}: {text} (got {_short(err.get('input'))})"
            parent = _model_for(loc[:-1]) if loc else None
            if parent is not None and loc and isinstance(loc[-1], str) and loc[-1] in parent.model_fields:
                desc = parent.model_fields[loc[-1]].description
                if desc and "allowed" not in msg:
                    msg += f"; allowed: {desc}"
        add(path, msg)
    # Pydantic skips DataSpec's cross-field check once a data field fails; run it on what it has,
    # so that ``size: -1`` does not hide a missing ``path``.
    data = raw.get("data") if isinstance(raw, dict) else None
    data_fields = {str(e["loc"][1]) for e in errors if len(e["loc"]) >= 2 and e["loc"][0] == "data"}
    if isinstance(data, dict) and data_fields and all(isinstance(k, str) for k in data):
        for sub, text in _data_problems(data, frozenset(data_fields)):
            add(f"data.{sub}: {text}", f"data.{sub}: {text}")
    return msgs


def _too_deep(v: Any, limit: int = MAX_DEPTH) -> bool:
    """True if containers nest deeper than ``limit`` (iterative, so it cannot recurse itself)."""
    stack = [(v, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = list(node.keys()) + list(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _depth_message(source: str) -> str:
    return f"{source}: nested more than {MAX_DEPTH} levels deep; a job spec needs 3 (pinning: [[0, 1]])"


def spec_from_dict(raw: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping (already parsed YAML) into a ``JobSpec`` or raise ``SpecError`` with every message."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the top level must be a mapping of fields (got {type(raw).__name__})")
    if _too_deep(raw):
        raise SpecError(_depth_message(source))
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        messages = _messages(exc, raw)
    except (RecursionError, TypeError) as exc:  # pathological input that pydantic cannot walk
        messages = [f"{source}: cannot be validated ({type(exc).__name__})"]
    raise SpecError(messages)


class _NoDupLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (anchors, aliases and deep nesting are refused before composing)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)
        # YAML 1.1 reads an unquoted 1:30:00 as the base-60 number 5400 (YAML 1.2 dropped that);
        # a Slurm time limit must stay the text the user wrote, not become 5400 minutes.
        if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and isinstance(value, str) and ":" in value:
            return "tag:yaml.org,2002:str"
        return tag


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a string or a number, not {type(key).__name__}", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    # int() refuses more than 4300 digits with a ValueError from inside the loader; no field takes even 100.
    text = loader.construct_scalar(node)
    if isinstance(text, str) and len(text) > MAX_NUMBER_CHARS:
        return NumberText(text)
    return loader.construct_yaml_int(node)


def _construct_number_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    return NumberText(loader.construct_scalar(node))


_NUMBER_TEXT_TAG = "tag:shmhpc,2024:number-text"
_NoDupLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_NoDupLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_NoDupLoader.add_constructor(_NUMBER_TEXT_TAG, _construct_number_text)
# YAML 1.1 floats need a dot and a signed exponent (1.0e+6); 1e6, 1e-9, 2.5E3 and .5e3 are what people write.
# Every exponent form is NumberText, checked before YAML's float, so messages quote it as written.
_NoDupLoader.add_implicit_resolver(
    _NUMBER_TEXT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
for _first, _resolvers in _NoDupLoader.yaml_implicit_resolvers.items():
    if _resolvers and _resolvers[-1][0] == _NUMBER_TEXT_TAG:
        _resolvers.insert(0, _resolvers.pop())


def _parse_yaml(text: str, source: str) -> Any:
    try:
        # One pass over the parser's events (a state machine: no recursion) before building anything:
        # anchors/aliases are the YAML-bomb vector (billion laughs), and deep nesting would only
        # reach the recursive composer to die there on RecursionError, slowly.
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise SpecError(f"{source}: YAML anchors/aliases are not allowed in job specs (line {line})")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(_depth_message(source))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_NoDupLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise SpecError(_depth_message(source)) from None


def load_spec(
    path: str | os.PathLike[str], overrides: list[str] | None = None, values: Mapping[str, Any] | None = None
) -> JobSpec:
    """Read and validate a YAML job spec; ``overrides`` are ``dotted.key=yaml-value`` strings.

    ``values`` sets dotted keys to values that are already typed (a command line's ``--time``),
    after the overrides, so they are checked by the same rules and messages as the file.
    Raises ``SpecError`` listing every problem.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            # Read at most one byte past the limit: st_size is 0 for /dev/zero, pipes and /proc files.
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, expected a YAML job spec") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # embedded NUL in the path
        raise SpecError(f"{source}: not a usable path: {exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: spec file is over {MAX_SPEC_BYTES} bytes; a job spec is a few hundred")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (byte {exc.start}); a job spec is a YAML text file") from None
    raw = _parse_yaml(text, source)
    if raw is None:
        raise SpecError(f"{source}: empty spec; at least name and data are required")
    if _too_deep(raw):
        raise SpecError(_depth_message(source))
    if overrides:
        raw = apply_overrides(raw, overrides)
    if values and isinstance(raw, dict):
        raw = _deepcopy(raw)
        for key, value in values.items():
            _set_dotted(raw, key.split("."), value)
    spec = spec_from_dict(raw, source=source)
    if spec.data.source in API_SOURCES:
        raise SpecError(
            f"data.source: {spec.data.source!r} is placed by shmhpc.Session.share in Python; a YAML job uses "
            "generate | npy | raw"
        )
    return spec


def parse_value(text: str, source: str) -> Any:
    """A value typed on the command line, read as a ``--set`` value is (YAML: ``4``, ``1e6``, ``[0, 1]``).

    Raises ``SpecError`` naming ``source`` when it is not valid YAML.
    """
    return _parse_yaml(text, source)


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a parsed spec mapping.

    Raises ``SpecError`` naming ``--set`` for a malformed override.
    """
    if not isinstance(raw, dict):
        return raw
    out = _deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"--set: {item!r} is not key=value (e.g. workers=2, numa.partition=false)")
        _set_dotted(out, parts, _parse_yaml(value, f"--set {key.strip()}"))
    return out


def _set_dotted(target: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[parts[-1]] = value


def _deepcopy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deepcopy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deepcopy(x) for x in v]
    return v


def json_schema() -> dict:
    """JSON Schema of the job spec (for editors and CI linting)."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shmhpc job spec"
    return schema
