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
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .cpulist import parse_cpulist

from .errors import SpecError

__all__ = ["JobSpec", "DataSpec", "NumaSpec", "load_spec", "spec_from_dict", "json_schema", "apply_overrides"]

# Largest array we accept: 64 TiB. Anything larger is a typo, not a job.
MAX_BYTES = 64 * 2**40
GENERATE_DTYPES = ("float32", "float64")
FILE_DTYPES = (
    "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
)
MAX_SPEC_BYTES = 1 << 20  # a job spec is a few hundred bytes; refuse megabytes of YAML

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
CpuList = Union[Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=1)], str]
POLICIES = ("none", "compact", "scatter")


def _problems(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """One validation error carrying several ``(sub-path, message)`` problems; see ``_messages``."""
    return PydanticCustomError("shmhpc", "{detail}", {"detail": "; ".join(m for _, m in problems), "problems": problems})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_workers(v: Any) -> Any:
    if v == "auto" or (_is_int(v) and v > 0):
        return v
    raise _problems([("", f"must be a positive integer or 'auto' (got {_short(v)})")])


def _check_pinning(v: Any) -> Any:
    """Validate the *shape* of ``pinning``; whether CPUs exist here is the planner's job."""
    if isinstance(v, str):
        if not v.strip():
            raise _problems([("", f"empty expression; allowed: {', '.join(POLICIES)}, CPU lists or a likwid-style expression")])
        return v.strip()
    if not isinstance(v, list) or not v:
        raise _problems([("", f"must be one of {', '.join(POLICIES)}, a list of per-worker CPU lists "
                              f"([[0], [1]]) or a likwid-style expression like 'N:0-3' (got {_short(v)})")])
    out: list[list[int]] = []
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(v):
        cpus: list[int] = []
        if isinstance(item, str):
            try:
                cpus = parse_cpulist(item)
            except ValueError as exc:
                problems.append((f"[{i}]", str(exc)))
        elif _is_int(item):
            cpus = [item]
        elif isinstance(item, list):
            for j, c in enumerate(item):
                if not _is_int(c) or c < 0:
                    problems.append((f"[{i}][{j}]", f"{_short(c)} is not a CPU id (a non-negative integer)"))
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

    source: Literal["generate", "npy", "raw"] = Field("generate", description="generate | npy | raw")
    size: PosInt | None = Field(None, description="number of elements (1-D); or give shape")
    shape: Annotated[list[PosInt], Field(min_length=1, max_length=2)] | None = Field(
        None, description="[rows] or [rows, cols]; partitioned along axis 0"
    )
    dtype: str | None = Field(None, description="float32 | float64 (generate); numeric dtypes for npy/raw")
    distribution: Literal["normal", "uniform"] = Field("normal", description="for generate: standard normal or [0, 1)")
    seed: NonNegInt = Field(0, description="for generate: root of the per-block SeedSequence")
    path: str | None = Field(None, description="npy/raw file, relative to the spec's directory")
    offset_bytes: NonNegInt = Field(0, description="raw: bytes to skip at the start of the file")

    @field_validator("dtype")
    @classmethod
    def _dtype_known(cls, v: str | None) -> str | None:
        if v is not None and v not in FILE_DTYPES:
            raise ValueError(f"{v!r} is not supported; allowed: {', '.join(FILE_DTYPES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        errs: list[tuple[str, str]] = []
        if self.size is not None and self.shape is not None:
            errs.append(("shape", "give size or shape, not both"))
        if self.source == "generate":
            if self.size is None and self.shape is None:
                errs.append(("size", "source generate needs size (elements) or shape"))
            if self.dtype is not None and self.dtype not in GENERATE_DTYPES:
                errs.append(("dtype", f"{self.dtype!r} cannot be generated; allowed: {', '.join(GENERATE_DTYPES)}"))
            if self.path is not None:
                errs.append(("path", "only for source npy or raw (source is generate)"))
        else:
            if self.path is None:
                errs.append(("path", f"source {self.source} needs a file path"))
            if self.source == "raw" and self.dtype is None:
                errs.append(("dtype", "source raw needs dtype"))
            if self.source == "raw" and self.size is None and self.shape is None:
                errs.append(("size", "source raw needs size or shape"))
        if self.source != "raw" and self.offset_bytes:
            errs.append(("offset_bytes", f"only for source raw (source is {self.source})"))
        n = self.n_elements
        if n is not None and n * _itemsize(self.resolved_dtype) > MAX_BYTES:
            errs.append(("size", f"{n} elements of {self.resolved_dtype} is over the {MAX_BYTES >> 40} TiB limit"))
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


class NumaSpec(_Model):
    """NUMA data placement."""

    partition: bool = Field(
        True, description="one partition per NUMA node that has workers, sized by its worker count"
    )


class JobSpec(_Model):
    """A shmhpc job: data, workers, placement, kernel, repeats and report."""

    name: Annotated[str, Field(pattern=_NAME_RE)] = Field(
        ..., description="job name: letters, digits, '_', '.', '-'"
    )
    data: DataSpec
    workers: Annotated[PosInt | Literal["auto"], BeforeValidator(_check_workers)] = Field("auto", description="count, or auto = one per usable physical core")
    threads_per_worker: PosInt = Field(1, description="CPUs and BLAS/OpenMP threads per worker")
    pinning: Annotated[
        Literal["none", "compact", "scatter"] | Annotated[list[CpuList], Field(min_length=1)] | str,
        BeforeValidator(_check_pinning),
    ] = Field(
        "compact",
        description="none | compact | scatter | explicit CPU lists per worker | likwid-style expression (N:0-3, S0:0-1@S1:0-1, E:N:4:1:2)",
    )
    oversubscribe: bool = Field(False, description="allow more worker threads than usable CPUs")
    numa: NumaSpec = Field(default_factory=NumaSpec)
    chunks_per_worker: PosInt = Field(2, description="chunks each worker reduces per repeat")
    kernel: Annotated[str, Field(min_length=1)] = Field(
        "sum", description="sum | mean | min | max | var | std | norm2 | package.module:function"
    )
    accumulate: Literal["float64", "native"] = Field(
        "float64", description="float64 (accurate) | native (the array's dtype, numpy's pairwise sum: fastest)"
    )
    repeats: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = Field(5)
    warmup: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] = Field(1)
    verify: bool = Field(True, description="check the result against an independent single-process computation")
    start_method: Literal["fork", "forkserver", "spawn"] = Field("forkserver")
    report: Annotated[str, Field(min_length=1)] = Field(
        "reports/{name}.json", description="report path; placeholders {name} {timestamp} {workers} {pinning}"
    )
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="fail the run if one phase (load or one repeat) takes longer"
    )

    @field_validator("report")
    @classmethod
    def _report_placeholders(cls, v: str) -> str:
        for ph in re.findall(r"\{([^}]*)\}", v):
            if ph not in ("name", "timestamp", "workers", "pinning"):
                raise ValueError(f"unknown placeholder {{{ph}}}; allowed: {{name}} {{timestamp}} {{workers}} {{pinning}}")
        return v


# -- loading & messages --------------------------------------------------------------

def _itemsize(dtype: str) -> int:
    return int(re.sub(r"\D", "", dtype) or 8) // 8


_TAGS = {"str", "int", "bool", "float", "list", "dict"}


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _TAGS:
            out += ("." if out else "") + part
        # else: a union-branch tag pydantic inserts ('constrained-int', 'literal[...]'): not a field
    return out or "(top level)"


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _messages(exc: ValidationError) -> list[str]:
    msgs: list[str] = []
    # Union fields give one error per branch; keep one line per field, preferring the most specific.
    seen: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _field_path(loc)
        etype = err["type"]
        if etype == "shmhpc":
            for sub, text in err["ctx"]["problems"]:
                if not sub or sub.startswith("["):
                    full = path + sub
                else:
                    full = sub if path == "(top level)" else f"{path}.{sub}"
                if full not in seen:
                    seen[full] = text
                    msgs.append(f"{full}: {text}")
            continue
        if etype == "extra_forbidden":
            key = str(loc[-1])
            parent = _model_for(loc[:-1])
            choices = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(key, choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"{path}: unknown key{hint} (allowed: {', '.join(choices)})"
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
        if path in seen:
            continue
        seen[path] = msg
        msgs.append(msg)
    return msgs


def spec_from_dict(raw: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping (already parsed YAML) into a ``JobSpec`` or raise ``SpecError`` with every message."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the top level must be a mapping of fields (got {type(raw).__name__})")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_messages(exc)) from None
    except (RecursionError, TypeError) as exc:  # pathological input that pydantic cannot walk
        raise SpecError(f"{source}: cannot be validated ({type(exc).__name__})") from None


class _NoDupLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys and aliases (no billion-laughs)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}", key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


def _no_alias(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(None, None, "YAML aliases are not allowed in job specs", node.start_mark)


_NoDupLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    if "*" in text or "&" in text:
        # Cheap guard before parsing: anchors/aliases are the YAML-bomb vector; check precisely.
        for tok in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(tok, (yaml.AliasToken, yaml.AnchorToken)):
                raise SpecError(f"{source}: YAML anchors/aliases are not allowed in job specs (line {tok.start_mark.line + 1})")
    try:
        return yaml.load(text, Loader=_NoDupLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: YAML nested too deeply") from None


def load_spec(path: str | os.PathLike[str], overrides: list[str] | None = None) -> JobSpec:
    """Read and validate a YAML job spec; ``overrides`` are ``dotted.key=yaml-value`` strings.

    Raises ``SpecError`` listing every problem.
    """
    p = Path(path)
    source = str(path)
    try:
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{source}: spec file is {p.stat().st_size} bytes; a job spec is at most {MAX_SPEC_BYTES}")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, expected a YAML job spec") from None
    except UnicodeDecodeError:
        raise SpecError(f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read: {exc.strerror}") from None
    raw = _parse_yaml(text, source)
    if raw is None:
        raise SpecError(f"{source}: empty spec; at least name and data are required")
    if overrides:
        raw = apply_overrides(raw, overrides)
    spec = spec_from_dict(raw, source=source)
    return spec


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a parsed spec mapping."""
    if not isinstance(raw, dict):
        return raw
    out = _deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set: {item!r} is not key=value (e.g. workers=2, numa.partition=false)")
        parts = key.strip().split(".")
        target = out
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                target[part] = nxt
            target = nxt
        target[parts[-1]] = _parse_yaml(value, f"--set {key}")
    return out


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
