"""The run report as typed data: one pydantic model per section, and the messages for a malformed one.

The runner builds the report as a plain dict (that is what gets written); readers (``compare``,
``plot``, ``sweep``) get it back as a :class:`RunReport` from :func:`shmhpc.report.read_report`.
Every model allows extra fields: a newer minor shmhpc may add fields and an older one ignores
them. Fields that a run writes only once it got that far (``data`` and ``plan`` after planning,
``workers`` after the pool started, ``timings.repeat_s`` after the rounds, ``result`` after
verification) are optional, so the report of a run that failed early reads too.

Validation is strict (no ``"1.5"`` read as a number, no ``true`` as an integer): a report is data
we wrote ourselves, and anything else in it is a sign of a hand-edited or foreign file.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["RunReport", "report_json_schema", "describe_validation_error"]


class _Says:
    """Marks a field with how a message names its expected shape: ``… is not <text>``."""

    def __init__(self, text: str) -> None:
        self.text = text


Finite = Annotated[float, Field(allow_inf_nan=False), _Says("a finite number")]
Seconds = Finite
CpuList = Annotated[list[int], _Says("a list of CPU ids")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Host(_Section):
    """Where the run ran (``report.host_info``)."""

    hostname: str | None = None
    cpu_model: str | None = None
    kernel: str | None = Field(None, description="the OS kernel release, not the reduction kernel")
    machine: str | None = None
    python: str | None = None
    numpy: str | None = None
    shmhpc: str | None = None
    env: dict[str, str | None] = Field(default_factory=dict, description="thread and binding variables")
    shmem_hugepages: str | None = None
    slurm: dict[str, str] | None = Field(None, description="SLURM_* variables; null outside Slurm")


class JobNuma(_Section):
    partition: bool | None = None
    placement: str | None = None
    writer: str | None = None


class Job(_Section):
    """The resolved spec (``JobSpec.model_dump``); only the fields readers use are typed here."""

    name: str | None = None
    kernel: str | None = None
    workers: Annotated[int | str, _Says("a worker count or 'auto'")] | None = None
    threads_per_worker: int | None = None
    pinning: Annotated[str | list[list[int]], _Says("a policy or CPU lists per worker")] | None = None
    start_method: str | None = None
    numa: JobNuma | None = None
    chunks_per_worker: int | None = None
    accumulate: str | None = None
    repeats: int | None = None
    warmup: int | None = None
    data: dict[str, Any] | None = None


class Data(_Section):
    """The array (``DataInfo.to_dict``)."""

    source: str | None = None
    shape: list[int] | None = None
    dtype: str | None = None
    nbytes: int | None = None
    distribution: str | None = None
    seed: int | None = None
    path: str | None = None
    offset_bytes: int | None = None


class PlanWorker(_Section):
    rank: int | None = None
    cpus: CpuList | None = None
    node: int | None = None
    rows: list[int] | None = None
    chunks: list[list[int]] | None = None


class PlanPartition(_Section):
    node: int | None = None
    start: int | None = None
    stop: int | None = None
    ranks: list[int] | None = None


class Plan(_Section):
    """The placement plan (``Plan.to_dict``, as ``shmhpc plan --json`` prints it)."""

    policy: str | None = None
    pinned: bool | None = None
    threads_per_worker: int | None = None
    n_rows: int | None = None
    row_bytes: int | None = None
    usable_cpus: CpuList | None = None
    usable_source: str | None = None
    align_bytes: int | None = None
    workers: list[PlanWorker] | None = None
    partitions: list[PlanPartition] | None = None
    warnings: list[str] | None = None


class Worker(_Section):
    """One worker: what was asked beside what it saw, and its raw timings."""

    rank: int
    pid: int | None = None
    cpus_requested: CpuList | None = None
    cpus_observed: CpuList | None = Field(None, description="read back inside the worker")
    cpus_ran_on: CpuList | None = Field(None, description="sampled each repeat")
    cpus_moved_to: CpuList | None = Field(None, description="a pinned worker's CPUs after its kernel changed them")
    mpi_rank: int | None = Field(None, description="a multi-node run: the MPI rank (node) this worker belongs to")
    host: str | None = Field(None, description="a multi-node run: that node's name")
    pinned_ok: bool | None = None
    node: int | None = None
    rows: list[int] | None = None
    chunks: list[list[int]] | None = None
    threads: dict[str, Any] | None = Field(None, description="the env it saw and threadpool_info()")
    load_s: Seconds | None = None
    launcher_write_s: Seconds | None = Field(None, description="numa.writer: launcher — its seconds writing the data")
    reserved_by: str | None = None
    pages: dict[str, int] | None = Field(None, description="sampled pages per NUMA node")
    repeat_s: list[Seconds] | None = None
    chunk_s: list[list[Seconds]] | None = Field(None, description="per repeat, per chunk")


class PagePartition(_Section):
    node: int | None = None
    start: int | None = None
    stop: int | None = None
    sampled_pages_by_node: dict[str, int] | None = None
    fraction_on_node: Finite | None = None


class Pages(_Section):
    method: str | None = None
    partitions: list[PagePartition] | None = None


class PlacementPartition(_Section):
    """One partition under ``numa.placement``: where its pages were meant to go and where they are."""

    index: int | None = None
    node: int | None = Field(None, description="the node of the workers that read these rows")
    start: int | None = None
    stop: int | None = None
    ranks: list[int] | None = None
    intended_nodes: list[int] | None = Field(None, description="where the policy means the pages to be")
    sampled_pages_by_node: dict[str, int] | None = None
    sampled: int | None = None
    on_intended: int | None = None
    fraction_intended: Finite | None = None
    passed: bool | None = None
    shares: dict[str, Finite] | None = Field(None, description="interleave: each chosen node's share of the pages")
    max_deviation_from_even: Finite | None = None
    deviation_allowed: Finite | None = None
    mpi_rank: int | None = Field(None, description="a multi-node run: the rank (node) the partition is on")
    host: str | None = None


class Placement(_Section):
    """``numa.placement``: the policy asked and applied (or why not), and the check of every partition."""

    policy: str | None = None
    applied: bool | None = Field(None, description="the mbind policy held (null: first-touch/none set none)")
    reason: str | None = None
    writer: str | None = None
    nodes: list[int] | None = None
    verify: str | None = None
    min_local: Finite | None = None
    method: str | None = None
    criterion: str | None = None
    partitions: list[PlacementPartition] | None = None
    fraction_intended: Finite | None = None
    passed: bool | None = None
    note: str | None = Field(None, description="e.g. one NUMA node: every policy is the same here")
    summary: str | None = None


class Mpi(_Section):
    """A multi-node run (``run --mpi``): the ranks, their launcher and the MPI library."""

    size: int | None = None
    launcher: str | None = None
    library: str | None = None
    standard: str | None = None
    mpi4py: str | None = None
    hosts: list[str] | None = None
    split: str | None = None
    incomplete: bool | None = None


class Api(_Section):
    """A Python API call (``Session.reduce``): which call on its shared array, and whether the pool was warm."""

    call: int | None = None
    pids: list[int] | None = None
    pool_reused: bool | None = Field(None, description="no pool start and no load in this call")


class RepeatStats(_Section):
    median: Finite | None = None
    mean: Finite | None = None
    stdev: Finite | None = None
    min: Finite | None = None
    max: Finite | None = None


class Timings(_Section):
    pool_start_s: Seconds | None = None
    load_s: Seconds | None = None
    launcher_write_s: Seconds | None = Field(None, description="numa.writer: launcher — its seconds writing the data")
    warmup_s: list[Seconds] | None = None
    repeat_s: list[Seconds] | None = Field(None, description="wall time of each repeat")
    repeat: RepeatStats | None = None
    teardown_s: Seconds | None = None
    verify_s: Seconds | None = None
    total_s: Seconds | None = None


class GbpsStats(_Section):
    median: Finite | None = None
    max: Finite | None = None


class Bandwidth(_Section):
    bytes_per_repeat: int | None = None
    gbps_per_repeat: list[Finite] | None = None
    gbps: GbpsStats | None = None
    ceiling_gbps: Finite | None = Field(None, description="the machine's measured bandwidth, when known")
    ceiling: dict[str, Any] | None = Field(
        None, description="where ceiling_gbps comes from: shmhpc bench --save (kernel, workers, measured_at)"
    )


class Result(_Section):
    """The reduction's value and its check against a single-process reference."""

    kernel: str | None = None
    accumulate: str | None = None
    engine: str | None = Field(None, description="what summed the chunks: numpy | numba (built-in sum/mean)")
    engine_reason: str | None = Field(None, description="why that engine (engine: auto decides by the data read)")
    value: Any = None
    reference: Any = None
    abs_error: float | None = None
    rel_error: float | None = None
    tolerance: float | None = None
    verified: bool | None = Field(None, description="null when verification was off or not meaningful")
    check: str | None = Field(None, description="ok | failed | not meaningful (NaN/inf) | off")
    method: str | None = None
    count_ok: bool | None = None
    detail: str | None = None
    nonfinite: dict[str, int] | None = Field(None, description="NaN, +inf, -inf in the data: nan, posinf, neginf")
    value_nonfinite: int | None = Field(None, description="elements of the value that are NaN or inf")
    reference_nonfinite: int | None = Field(None, description="elements of the reference that are NaN or inf")


class Memory(_Section):
    array_bytes: int | None = None
    launcher_peak_rss_bytes_before_verify: int | None = None


class Segment(_Section):
    """The shared segment: where it is and which pages it really got."""

    name: str | None = None
    dir: str | None = Field(None, description="a hugetlbfs mount, or the shared-memory directory")
    size_bytes: int | None = None
    huge_pages: str | None = Field(None, description="the spec's huge_pages: auto | require | off")
    filesystem: str | None = Field(None, description="hugetlbfs, or the type of the shared-memory directory (tmpfs)")
    fallback: str | None = Field(None, description="why the segment is not on hugetlbfs; null when it is, or off")
    page_bytes: int | None = Field(
        None, description="the page size measured in the workers' mappings after load (hugetlb, THP or base page)"
    )
    huge_fraction: Finite | None = Field(None, description="share of the loaded bytes mapped with huge pages")
    page_bytes_measured_by: str | None = None


class Slurm(_Section):
    """The Slurm allocation (``SlurmAllocation.to_dict``); the section is null outside Slurm."""

    job_id: int | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    step_id: str | None = None
    job_name: str | None = None
    partition: str | None = None
    nodelist: str | None = None
    cpus_per_task: int | None = None
    job_cpus_per_node: str | None = None
    job_cpus_here: int | None = None
    cpus_on_node: int | None = None
    cpu_bind: dict[str, str] | None = None
    label: str | None = None


class CpuGroup(_Section):
    cpus: CpuList | None = None
    foreign_fraction: float | None = None
    significant: bool | None = None


class OtherRun(_Section):
    pid: int | None = None
    uid: int | None = None
    slurm_job: int | None = None
    cpus: CpuList | None = None
    overlap: CpuList | None = None


class PoolStart(_Section):
    """How the workers were started: the start method used (``auto`` resolved) and why."""

    start_method: str | None = Field(None, description="fork | forkserver | spawn")
    start_method_asked: str | None = Field(None, description="the spec's start_method (auto | fork | ...)")
    start_method_reason: str | None = None
    launcher_threads: int | None = Field(None, description="the launcher's OS threads when the method was chosen")


class Contention(_Section):
    """Whether the rounds had their CPUs to themselves."""

    method: str | None = None
    threshold: float | None = None
    cpus: CpuList | None = Field(None, description="the CPUs our workers may run on")
    window_s: float | None = None
    busy_fraction: float | None = None
    own_fraction: float | None = None
    foreign_fraction: float | None = None
    judged: bool | None = None
    by_cpus: list[CpuGroup] | None = None
    other_runs: list[OtherRun] | None = None
    notes: list[str] | None = None


class RunReport(_Section):
    """One run's report (version 1). ``job``, ``host``, ``status`` and ``version`` are always there."""

    version: int
    status: str = Field(description="ok | failed | interrupted")
    error: str | None = None
    errors: list[str] | None = None
    error_detail: str | None = Field(None, description="a worker's traceback")
    job: Job
    host: Host
    topology: dict[str, Any] | None = None
    started_at: str | None = None
    warnings: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    report_path: str | None = None
    report_error: str | None = Field(None, description="why the report could not be saved where asked")
    slurm: Slurm | None = None
    segment: Segment | None = None
    data: Data | None = None
    plan: Plan | None = None
    workers: list[Worker] | None = None
    pages: Pages | None = None
    placement: Placement | None = None
    timings: Timings | None = None
    bandwidth: Bandwidth | None = None
    result: Result | None = None
    memory: Memory | None = None
    contention: Contention | None = None
    pool: PoolStart | None = None
    api: Api | None = None
    mpi: Mpi | None = None
    nodes: list[dict[str, Any]] | None = Field(None, description="a multi-node run: one section per rank")


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of a run report (``shmhpc schema --report``)."""
    schema = RunReport.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shmhpc run report"
    return schema


# -- one-line messages for a malformed report ------------------------------------------------------


def _strip(ann: Any) -> tuple[Any, str | None]:
    """The annotation without ``Annotated``/``None``, and the ``_Says`` text found on the way."""
    says = None
    while True:
        if typing.get_origin(ann) is Annotated:
            args = typing.get_args(ann)
            says = says or next((m.text for m in args[1:] if isinstance(m, _Says)), None)
            ann = args[0]
        elif typing.get_origin(ann) in (Union, types.UnionType):
            rest = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(rest) != 1:
                return ann, says
            ann = rest[0]
        else:
            return ann, says


def _phrase(ann: Any) -> str:
    ann, says = _strip(ann)
    if says:
        return says
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "an object"
    origin = typing.get_origin(ann)
    if origin is list:
        inner = _phrase(typing.get_args(ann)[0])
        plural = {
            "an object": "objects",
            "a number": "numbers",
            "a finite number": "finite numbers",
            "an integer": "integers",
            "a string": "strings",
        }
        return f"a list of {plural.get(inner, inner.replace('a list of', 'lists of'))}"
    if origin is dict or ann is dict:
        return "an object"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(ann, "valid")


def _field_phrases(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """``{"timings.repeat_s": "a list of finite numbers", "workers[].cpus_requested": …, …}``."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        ann: Any = field.annotation  # a top-level Annotated's extras are moved to field.metadata
        says = next((m.text for m in field.metadata if isinstance(m, _Says)), None)
        out[key] = says or _phrase(ann)
        inner, _ = _strip(ann)
        if typing.get_origin(inner) is list:
            inner, _ = _strip(typing.get_args(inner)[0])
            key += "[]"
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out.update(_field_phrases(inner, key + "."))
    return out


_PHRASES = _field_phrases(RunReport)


def _named_path(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """The field a location names (``timings.repeat_s``) and the full location (``timings.repeat_s[0]``)."""
    tokens: list[str] = []
    full = ""
    for part in loc:
        if isinstance(part, int):
            full += f"[{part}]"
            if tokens:
                tokens[-1] += "[]"
        else:
            full += f".{part}" if full else str(part)
            tokens.append(part)
    for k in range(len(tokens), 0, -1):  # the longest prefix that is a field (drops union tags)
        key = ".".join(tokens[:k])
        key = key.removesuffix("[]")
        if key in _PHRASES:
            return key, full
    return ".".join(tokens) or "report", full


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem as ``timings.repeat_s is not a list of finite numbers (timings.repeat_s[0] is 'fast')``."""
    err = exc.errors()[0]
    path, full = _named_path(tuple(err["loc"]))
    if err["type"] == "missing":
        return f"{path} is missing"
    got = repr(err.get("input"))
    if len(got) > 60:
        got = got[:57] + "..."
    where = f"{full} is {got}" if full != path else got
    phrase = _PHRASES.get(path)
    if phrase is None or phrase == "valid":
        return f"{path} is not valid ({err['msg']}: {got})"
    return f"{path} is not {phrase} ({where})"
