"""The job spec: every rule, every message, YAML loading, overrides and the JSON Schema.

The contract under test: every problem is collected and reported as one line
``field.path: what is wrong (got VALUE); allowed: ...`` in ``SpecError.messages``,
and no input -- however odd -- escapes as anything but ``SpecError``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmhpc.errors import ShmhpcError, SpecError
from shmhpc.spec import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_SPEC_BYTES,
    DataSpec,
    JobSpec,
    NumaSpec,
    apply_overrides,
    json_schema,
    load_spec,
    spec_from_dict,
)

JOBS = sorted((Path(__file__).resolve().parent.parent / "jobs").glob("*.yaml"))

MINIMAL: dict[str, Any] = {"name": "t", "data": {"size": 1000}}

FULL: dict[str, Any] = {
    "name": "full-spec",
    "data": {"source": "generate", "size": 1000, "dtype": "float64", "distribution": "uniform", "seed": 3},
    "workers": 2,
    "threads_per_worker": 1,
    "pinning": [[0], [1]],
    "oversubscribe": False,
    "numa": {"partition": False},
    "chunks_per_worker": 4,
    "kernel": "mean",
    "accumulate": "native",
    "repeats": 3,
    "warmup": 0,
    "verify": True,
    "start_method": "spawn",
    "report": "reports/{name}-{timestamp}-{workers}-{pinning}.json",
    "timeout_s": 30.5,
}


def spec(**fields: Any) -> dict[str, Any]:
    """MINIMAL with top-level fields replaced (``data=...`` replaces the whole data mapping)."""
    out = copy.deepcopy(MINIMAL)
    out.update(fields)
    return out


def data(**fields: Any) -> dict[str, Any]:
    """A spec whose ``data`` is exactly ``fields``."""
    return spec(data=fields)


def errors(raw: Any) -> list[str]:
    """The messages ``spec_from_dict`` raises; fails the test if it validates."""
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert_one_liners(info.value)
    return info.value.messages


def assert_one_liners(exc: SpecError) -> None:
    assert exc.messages, "a SpecError must say something"
    for m in exc.messages:
        assert isinstance(m, str)
        assert m.strip()
        assert len(m.splitlines()) == 1, f"not one line: {m!r}"


def load_errors(path: str | os.PathLike[str], overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    assert_one_liners(info.value)
    return info.value.messages


def write(tmp_path: Path, text: str | bytes, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def fields_of(messages: list[str]) -> list[str]:
    return [m.split(": ", 1)[0] for m in messages]


# -- the good case -------------------------------------------------------------------


def test_minimal_spec_gets_documented_defaults() -> None:
    s = spec_from_dict(MINIMAL)
    assert isinstance(s, JobSpec)
    assert isinstance(s.data, DataSpec)
    assert isinstance(s.numa, NumaSpec)
    assert s.name == "t"
    assert (s.data.source, s.data.size, s.data.shape, s.data.dtype) == ("generate", 1000, None, None)
    assert s.data.resolved_dtype == "float32"
    assert s.data.n_elements == 1000
    assert (s.workers, s.pinning, s.threads_per_worker) == ("auto", "compact", 1)
    assert s.numa.partition is True
    assert (s.repeats, s.warmup, s.verify, s.timeout_s) == (5, 1, True, None)
    assert (s.start_method, s.accumulate, s.kernel) == ("auto", "float64", "sum")
    assert s.report == "reports/{name}.json"


def test_full_spec_keeps_every_value() -> None:
    s = spec_from_dict(copy.deepcopy(FULL))
    dumped = s.model_dump()
    for key, value in FULL.items():
        if key in ("data", "numa"):
            for k, v in value.items():
                assert dumped[key][k] == v, (key, k)
        else:
            assert dumped[key] == value, key


def test_spec_is_frozen() -> None:
    s = spec_from_dict(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic's frozen-instance error
        s.workers = 3  # type: ignore[misc]


def test_spec_from_dict_does_not_mutate_its_input() -> None:
    raw = spec(pinning=[[3, 1, 2], "4-5"])
    before = copy.deepcopy(raw)
    spec_from_dict(raw)
    assert raw == before


def test_spec_error_is_a_shmhpc_error_for_exit_code_2() -> None:
    with pytest.raises(ShmhpcError) as info:
        spec_from_dict({"name": "t"})
    assert info.value.exit_code == 2


# -- message format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (data(size=-1), "data.size: Input should be greater than 0 (got -1); allowed: "),
        (spec(pinning=[[0], [1, "x"]]), "pinning[1][1]: 'x' is not a CPU id"),
        (spec(workerz=2), "workerz: unknown key; did you mean 'workers'? (allowed: accumulate, chunks_per_worker, "),
        (data(size=10, dtyp="float32"), "data.dtyp: unknown key; did you mean 'dtype'? (allowed: distribution, "),
        (
            spec(numa={"partitio": True}),
            "numa.partitio: unknown key; did you mean 'partition'? "
            "(allowed: min_local, nodes, partition, placement, verify, writer)",
        ),
        (data(source="raw", dtype="int8", size=4), "data.path: source raw needs a file path"),
        (spec(workers=0), "workers: must be a positive integer or 'auto' (got 0)"),
        (spec(repeats=0), "repeats: Input should be greater than or equal to 1 (got 0)"),
        ({"data": {"size": 1}}, "name: required field is missing"),
        ({"name": "t"}, "data: required field is missing"),
    ],
)
def test_message_names_field_rule_and_value(raw: dict[str, Any], expected: str) -> None:
    msgs = errors(raw)
    assert any(m.startswith(expected) for m in msgs), msgs


def test_unknown_key_lists_allowed_keys_even_without_a_close_match() -> None:
    (msg,) = errors(spec(zzzzzz=1))
    assert msg.startswith("zzzzzz: unknown key (allowed: ")
    assert "did you mean" not in msg
    assert "workers" in msg


@pytest.mark.parametrize("key", ["work ers", "a\nb", "str", "x" * 200, "-", ""])
def test_unknown_key_is_always_named_on_one_line(key: str) -> None:
    (msg,) = errors(spec(**{key: 1}))
    assert "unknown key" in msg
    path = msg.split(": unknown key")[0]
    assert path != "(top level)"
    assert key[:20] in path or repr(key)[:20] in path


def test_non_string_keys_are_named() -> None:
    msgs = errors({**MINIMAL, 1: 2, None: 3})
    assert len(msgs) == 2
    assert all(m.startswith("(top level): key ") and "is not a string" in m for m in msgs), msgs
    (msg,) = errors(spec(data={"size": 10, 3: 4}))
    assert msg.startswith("data: key 3 is not a string (allowed: distribution, ")


def test_five_independent_mistakes_give_five_messages_naming_five_fields() -> None:
    raw = spec(
        name="bad name!",
        workers="lots",
        repeats=0,
        start_method="thread",
        data={"size": 10, "dtype": "complex128"},
    )
    msgs = errors(raw)
    assert len(msgs) == 5, msgs
    assert sorted(fields_of(msgs)) == ["data.dtype", "name", "repeats", "start_method", "workers"]
    assert all("(got " in m for m in msgs), msgs


def test_every_top_level_mistake_is_reported_at_once() -> None:
    raw = {
        "name": "",
        "data": {"size": 10, "shape": [2, 5]},
        "workers": -2,
        "threads_per_worker": 0,
        "pinning": "",
        "oversubscribe": "no",
        "numa": {"partition": 1},
        "chunks_per_worker": 0,
        "kernel": "",
        "accumulate": "float16",
        "repeats": -1,
        "warmup": -1,
        "verify": "yes",
        "start_method": "thread",
        "report": "{nope}",
        "timeout_s": 0,
    }
    msgs = errors(raw)
    assert sorted(fields_of(msgs)) == sorted(
        [
            "name",
            "data.shape",
            "workers",
            "threads_per_worker",
            "pinning",
            "oversubscribe",
            "numa.partition",
            "chunks_per_worker",
            "kernel",
            "accumulate",
            "repeats",
            "warmup",
            "verify",
            "start_method",
            "report",
            "timeout_s",
        ]
    )


def test_a_bad_data_field_does_not_hide_data_cross_field_problems() -> None:
    # pydantic skips a model's after-validator once one of its fields failed; spec.py must not.
    msgs = errors(data(source="raw", size=-1))
    assert sorted(fields_of(msgs)) == ["data.dtype", "data.path", "data.size"], msgs
    assert not any("needs size or shape" in m for m in msgs), "size was given, just wrong"
    msgs = errors(data(source="npy", offset_bytes=8, seed=-1))
    assert sorted(fields_of(msgs)) == ["data.offset_bytes", "data.path", "data.seed"], msgs


def test_data_problems_and_other_fields_are_reported_together() -> None:
    msgs = errors(spec(data={"source": "npy", "path": "x.npy", "offset_bytes": 4}, workers=0, warmup=-1))
    assert sorted(fields_of(msgs)) == ["data.offset_bytes", "warmup", "workers"], msgs


def test_long_values_are_shortened() -> None:
    (msg,) = errors(spec(kernel=["x" * 500]))
    assert msg.startswith("kernel: ")
    assert len(msg) < 400
    assert "..." in msg


def test_top_level_must_be_a_mapping() -> None:
    for raw in ([1, 2], "name: x", 3, None, 1.5):
        (msg,) = errors(raw)
        assert "top level must be a mapping" in msg


# -- strict types --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["threads_per_worker", "chunks_per_worker", "repeats", "warmup"])
@pytest.mark.parametrize("value", [True, False, "4", "1e6", None, [4]])
def test_int_fields_are_strict(field: str, value: Any) -> None:
    (msg,) = errors(spec(**{field: value}))
    assert msg.startswith(f"{field}: ")
    assert f"(got {value!r})" in msg


@pytest.mark.parametrize("field", ["size", "seed", "offset_bytes"])
@pytest.mark.parametrize("value", [True, "10", 10.5])
def test_data_int_fields_are_strict(field: str, value: Any) -> None:
    raw = data(source="raw", path="x.raw", dtype="int8", size=10)
    raw["data"][field] = value
    msgs = errors(raw)
    assert any(m.startswith(f"data.{field}: ") for m in msgs), msgs


@pytest.mark.parametrize("field", ["oversubscribe", "verify"])
@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None])
def test_bool_fields_are_strict(field: str, value: Any) -> None:
    (msg,) = errors(spec(**{field: value}))
    assert msg.startswith(f"{field}: ")


# -- workers -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, 512, 65536, 2.0, "auto"])
def test_workers_good(value: Any) -> None:
    assert spec_from_dict(spec(workers=value)).workers == value


@pytest.mark.parametrize("value", [0, -1, 65537, True, False, "4", "Auto", "", None, [2]])
def test_workers_bad(value: Any) -> None:
    (msg,) = errors(spec(workers=value))
    assert msg == f"workers: must be a positive integer or 'auto' (got {value!r}); allowed: 1 to 65536, auto"


@pytest.mark.parametrize("value", [1.5, float("inf")])
def test_workers_not_whole(value: Any) -> None:
    (msg,) = errors(spec(workers=value))
    assert msg == f"workers: {'must be a whole number' if value == 1.5 else 'out of range'} (got {value!r})"


# -- pinning -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", "none"),
        ("compact", "compact"),
        ("scatter", "scatter"),
        ([[0, 1], [2, 3]], [[0, 1], [2, 3]]),
        ([[3, 1, 2], [0]], [[1, 2, 3], [0]]),
        (["0-3", "4-5,7"], [[0, 1, 2, 3], [4, 5, 7]]),
        (["2-3", [1, 0]], [[2, 3], [0, 1]]),
        ([0, 1], [[0], [1]]),
        (["0-7:2"], [[0, 2, 4, 6]]),
        # likwid-style expressions are the planner's to check: the spec layer keeps them as text
        ("N:0-3", "N:0-3"),
        ("S0:0-1@S1:0-1", "S0:0-1@S1:0-1"),
        ("E:N:4:1:2", "E:N:4:1:2"),
        ("  M0:0-3 ", "M0:0-3"),
        ("not-checked-here", "not-checked-here"),
    ],
)
def test_pinning_good_is_normalized(value: Any, expected: Any) -> None:
    assert spec_from_dict(spec(pinning=value)).pinning == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], ["pinning: must be one of none, compact, scatter"]),
        ("", ["pinning: empty expression"]),
        ("   ", ["pinning: empty expression"]),
        (5, ["pinning: must be one of "]),
        (True, ["pinning: must be one of "]),
        (None, ["pinning: must be one of "]),
        ({"0": [1]}, ["pinning: must be one of "]),
        ([[]], ["pinning[0]: empty CPU list"]),
        ([[0], [1, 1]], ["pinning[1]: CPU 1 listed twice for one worker"]),
        ([[2, 3, 2, 3]], ["pinning[0]: CPU 2, 3 listed twice for one worker"]),
        ([[0, "x"]], ["pinning[0][1]: 'x' is not a CPU id"]),
        ([[-1]], ["pinning[0][0]: -1 is not a CPU id"]),
        ([[True]], ["pinning[0][0]: True is not a CPU id"]),
        ([[1.0]], ["pinning[0][0]: 1.0 is not a CPU id"]),
        ([["0-1"]], ["pinning[0][0]: '0-1' is not a CPU id"]),
        (["3-1"], ["pinning[0]: bad CPU list '3-1'"]),
        (["0,,1"], ["pinning[0]: bad CPU list '0,,1'"]),
        ([""], ["pinning[0]: empty CPU list"]),
        ([None], ["pinning[0]: None is not a CPU list"]),
        ([{"a": 1}], ["pinning[0]: {'a': 1} is not a CPU list"]),
        ([-3], ["pinning[0]: -3 is not a CPU id"]),
        ([0, True], ["pinning[1]: True is not a CPU list"]),
        # every bad worker is reported, not only the first
        (
            [[0, "x"], "9-8", [], [5, 5]],
            ["pinning[0][1]: ", "pinning[1]: bad CPU list", "pinning[2]: empty", "pinning[3]: CPU 5"],
        ),
    ],
)
def test_pinning_bad(value: Any, expected: list[str]) -> None:
    msgs = errors(spec(pinning=value))
    assert len(msgs) == len(expected), msgs
    for m, e in zip(msgs, expected):
        assert m.startswith(e), (m, e)


# -- data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"size": 1},
        {"shape": [10]},
        {"shape": [10, 4]},
        {"size": 10, "dtype": "float64"},
        {"size": 10, "distribution": "uniform", "seed": 2**70},
        {"source": "npy", "path": "a.npy"},
        {"source": "npy", "path": "a.npy", "shape": [4, 4], "dtype": "int16"},
        {"source": "raw", "path": "a.raw", "dtype": "uint8", "size": 3},
        {"source": "raw", "path": "a.raw", "dtype": "int64", "shape": [3, 2], "offset_bytes": 128},
        # the limit is "over 64 TiB": exactly 64 TiB is allowed
        {"size": MAX_BYTES // 4},
        {"size": MAX_BYTES // 8, "dtype": "float64"},
        {"shape": [2**22, 2**22]},
        {"source": "raw", "path": "a.raw", "dtype": "uint8", "size": MAX_BYTES},
    ],
)
def test_data_good(fields: dict[str, Any]) -> None:
    d = spec_from_dict(data(**fields)).data
    assert d.source == fields.get("source", "generate")
    assert d.n_elements == fields.get("size") or d.n_elements is None or d.shape == fields.get("shape")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"data.size": "source generate needs size (elements) or shape"}),
        ({"seed": 1}, {"data.size": "needs size"}),
        ({"size": 10, "dtype": "int32"}, {"data.dtype": "'int32' cannot be generated; allowed: float32, float64"}),
        ({"size": 10, "dtype": "float16"}, {"data.dtype": "'float16' is not supported; allowed: float32, float64"}),
        ({"size": 10, "path": "a.npy"}, {"data.path": "only for source npy or raw"}),
        ({"size": 10, "offset_bytes": 8}, {"data.offset_bytes": "only for source raw (source is generate)"}),
        ({"size": 10, "shape": [10]}, {"data.shape": "give size or shape, not both"}),
        ({"shape": [2, 3, 4]}, {"data.shape": "List should have at most 2 items"}),
        ({"shape": []}, {"data.shape": "List should have at least 1 item"}),
        ({"shape": [0, 3]}, {"data.shape[0]": "Input should be greater than 0 (got 0)"}),
        ({"shape": 10}, {"data.shape": "Input should be a valid list"}),
        ({"size": 0}, {"data.size": "Input should be greater than 0 (got 0)"}),
        (
            {"size": 10, "source": "hdf5"},
            {"data.source": "Input should be 'generate', 'npy', 'raw', 'array' or 'empty'"},
        ),
        ({"size": 10, "distribution": "poisson"}, {"data.distribution": "Input should be 'normal' or 'uniform'"}),
        ({"size": 10, "seed": -1}, {"data.seed": "Input should be greater than or equal to 0"}),
        ({"source": "npy"}, {"data.path": "source npy needs a file path"}),
        ({"source": "npy", "path": ""}, {"data.path": "String should have at least 1 character"}),
        ({"source": "npy", "path": "a.npy", "offset_bytes": 8}, {"data.offset_bytes": "only for source raw"}),
        (
            {"source": "raw"},
            {
                "data.path": "source raw needs a file path",
                "data.dtype": "source raw needs dtype",
                "data.size": "source raw needs size or shape",
            },
        ),
        ({"size": MAX_BYTES // 4 + 1}, {"data.size": "elements of float32 is over the 64 TiB limit"}),
        ({"size": MAX_BYTES // 8 + 1, "dtype": "float64"}, {"data.size": "of float64 is over the 64 TiB limit"}),
        ({"shape": [2**22, 2**22 + 1]}, {"data.size": "over the 64 TiB limit"}),
        ({"size": 10**30}, {"data.size": "over the 64 TiB limit"}),
        (
            {"source": "raw", "path": "a.raw", "dtype": "uint16", "size": MAX_BYTES},
            {"data.size": "elements of uint16 is over the 64 TiB limit"},
        ),
    ],
)
def test_data_bad(fields: dict[str, Any], expected: dict[str, str]) -> None:
    msgs = errors(data(**fields))
    assert len(msgs) == len(expected), msgs
    for field, text in expected.items():
        assert any(m.startswith(f"{field}: ") and text in m for m in msgs), (field, text, msgs)


@pytest.mark.parametrize("value", [5, "x", [1], None])
def test_data_must_be_a_mapping(value: Any) -> None:
    (msg,) = errors(spec(data=value))
    assert msg.startswith("data: ")


# -- the other fields ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "sum-pinned", "A.b_c-1", "9", "x" * 128])
def test_name_good(name: str) -> None:
    assert spec_from_dict(spec(name=name)).name == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "_x", "a b", "x/y", "../x", "x" * 129, "x\n", "é", 5, None])
def test_name_bad(name: Any) -> None:
    (msg,) = errors(spec(name=name))
    assert msg.startswith("name: ")
    assert f"(got {name!r}"[:60] in msg


@pytest.mark.parametrize(
    "report",
    [
        "r.json",
        "reports/{name}.json",
        "{name}-{timestamp}-{workers}-{pinning}.json",
        "{{literal}}/{name}.json",
        "/tmp/x/{timestamp}.json",
    ],
)
def test_report_good(report: str) -> None:
    assert spec_from_dict(spec(report=report)).report == report


@pytest.mark.parametrize(
    ("report", "why"),
    [
        ("{foo}.json", "unknown placeholder {foo}"),
        ("{}.json", "unknown placeholder {}"),
        ("{0}.json", "unknown placeholder {0}"),
        ("{name.__class__}", "unknown placeholder {name.__class__}"),
        ("{name[0]}", "unknown placeholder {name[0]}"),
        ("{name!r}.json", "takes no conversion or format spec"),
        ("{workers:03d}.json", "takes no conversion or format spec"),
        ("{name.json", "not a valid template"),
        ("name}.json", "not a valid template"),
        ("", "String should have at least 1 character"),
    ],
)
def test_report_bad(report: str, why: str) -> None:
    (msg,) = errors(spec(report=report))
    assert msg.startswith("report: ")
    assert why in msg, msg


def test_report_placeholders_all_format() -> None:
    # Whatever the spec accepts, str.format (what the runner uses) must accept too.
    s = spec_from_dict(spec(report="{{x}}/{name}-{timestamp}-{workers}-{pinning}"))
    assert s.report.format(name="n", timestamp="t", workers=2, pinning="p") == "{x}/n-t-2-p"


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("repeats", [1, 1000], [0, -5, 1_000_001]),
        ("warmup", [0, 10], [-1]),
        ("threads_per_worker", [1, 8], [0, -1]),
        ("chunks_per_worker", [1, 64], [0]),
        ("timeout_s", [0.001, 5, 3600.0, None], [0, -1.0, 0.0, float("inf"), float("nan"), "5", True]),
        ("start_method", ["auto", "fork", "forkserver", "spawn"], ["thread", "Fork", "", None]),
        ("accumulate", ["float64", "native"], ["float32", "kahan", None]),
        ("kernel", ["sum", "var", "mypkg.mod:func"], ["", 3, None]),
    ],
)
def test_scalar_fields(field: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert getattr(spec_from_dict(spec(**{field: value})), field) == value
    for value in bad:
        (msg,) = errors(spec(**{field: value}))
        assert msg.startswith(f"{field}: "), msg
        assert "(got " in msg


# -- YAML loading --------------------------------------------------------------------

GOOD_YAML = """\
# a comment
name: yaml-job
data:
  size: 20_000_000
  dtype: float32
workers: 2
pinning: [[0, 1], "2-3"]
numa: {partition: false}
timeout_s: 1.5
"""


def test_load_good_yaml(tmp_path: Path) -> None:
    s = load_spec(write(tmp_path, GOOD_YAML))
    assert s.data.size == 20_000_000
    assert isinstance(s.data.size, int)
    assert s.workers == 2
    assert s.pinning == [[0, 1], [2, 3]]
    assert s.numa.partition is False
    assert s.timeout_s == 1.5


def test_load_accepts_str_path_and_bom(tmp_path: Path) -> None:
    p = write(tmp_path, "\ufeff" + GOOD_YAML)
    assert load_spec(str(p)).name == "yaml-job"


def test_load_reports_every_field_error_without_the_path(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\ndata: {size: -1}\nworkerz: 2\nrepeats: 0\n")
    msgs = load_errors(p)
    assert sorted(fields_of(msgs)) == ["data.size", "repeats", "workerz"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty spec"),
        ("# only a comment\n", "empty spec"),
        ("---\n", "empty spec"),
        ("null\n", "empty spec"),
        ("- name: t\n- data: 1\n", "the top level must be a mapping of fields (got list)"),
        ("just a string\n", "the top level must be a mapping of fields (got str)"),
        ("42\n", "the top level must be a mapping of fields (got int)"),
        ("name: t\nname: u\ndata: {size: 1}\n", "duplicate key 'name'"),
        ("name: t\ndata: {size: 1, size: 2}\n", "duplicate key 'size'"),
        ("name: [unclosed\n", "not valid YAML (line"),
        ("name: t\n  bad: indent\n", "not valid YAML (line"),
        ("{{{{\n", "not valid YAML"),
        ("a: *\n", "not valid YAML"),  # a malformed alias must not escape the anchor check
        ("name: t\ndata: &\n", "not valid YAML"),
        ("name: t\x00\n", "not valid YAML"),  # valid UTF-8, but a control character
        ("name: t\ndata: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
        ("name: !!python/name:os.system\n", "not valid YAML"),
        ("? [a, b]\n: 1\n", "not valid YAML"),
        ("name: !!binary aGVsbG8=\ndata: {size: 1}\n", "name: Input should be a valid string (got b'hello')"),
    ],
)
def test_load_bad_yaml(tmp_path: Path, text: str, expected: str) -> None:
    msgs = load_errors(write(tmp_path, text))
    assert any(expected in m for m in msgs), msgs


def test_safe_loading_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = write(tmp_path, f"name: t\ndata: !!python/object/apply:os.system ['touch {marker}']\n")
    load_errors(p)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "base: &b {size: 1}\nname: t\ndata: *b\n",
        "name: t\ndata: {size: 1}\nkernel: &k sum\n",
        # billion laughs: refused before a single alias is expanded
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    ],
)
def test_anchors_and_aliases_refused(tmp_path: Path, text: str) -> None:
    (msg,) = load_errors(write(tmp_path, text))
    assert "anchors/aliases are not allowed" in msg
    assert msg.startswith(str(tmp_path))


def test_ampersand_and_star_in_plain_values_are_fine(tmp_path: Path) -> None:
    s = load_spec(write(tmp_path, "name: t\ndata: {size: 1}\nreport: 'a&b*c/{name}.json'\n"))
    assert s.report == "a&b*c/{name}.json"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5_000,
        "name: " + "[" * 5_000 + "]" * 5_000 + "\n",
        "name: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(600)) + "  " * 600 + "v\n",
        "name: t\ndata: {size: " + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "}\n",
    ],
)
def test_deep_nesting_refused(tmp_path: Path, text: str) -> None:
    msgs = load_errors(write(tmp_path, text))
    assert any("nested" in m or "not valid YAML" in m for m in msgs), msgs


def test_not_yaml_binary(tmp_path: Path) -> None:
    (msg,) = load_errors(write(tmp_path, bytes(range(256)) * 4))
    assert "not UTF-8" in msg


def test_not_yaml_latin1(tmp_path: Path) -> None:
    (msg,) = load_errors(write(tmp_path, "name: caf\xe9\n".encode("latin-1")))
    assert "not UTF-8" in msg


def test_huge_file_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "# padding\n" * (MAX_SPEC_BYTES // 10 + 1) + "name: t\ndata: {size: 1}\n")
    assert p.stat().st_size > MAX_SPEC_BYTES
    (msg,) = load_errors(p)
    assert "is over 1048576 bytes" in msg


def test_size_limit_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shmhpc.spec

    body = "name: t\ndata: {size: 1}\n"
    monkeypatch.setattr(shmhpc.spec, "MAX_SPEC_BYTES", len(body))
    assert load_spec(write(tmp_path, body)).name == "t"
    (msg,) = load_errors(write(tmp_path, body + "\n"))
    assert f"is over {len(body)} bytes" in msg


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_file_is_cut_off() -> None:
    # st_size is 0 for /dev/zero: the reader must cap what it reads, not trust stat.
    (msg,) = load_errors("/dev/zero")
    assert "over 1048576 bytes" in msg


def test_directory(tmp_path: Path) -> None:
    (msg,) = load_errors(tmp_path)
    assert msg == f"{tmp_path}: is a directory, expected a YAML job spec"


def test_missing_file(tmp_path: Path) -> None:
    (msg,) = load_errors(tmp_path / "nope.yaml")
    assert msg == f"{tmp_path / 'nope.yaml'}: no such file"


def test_path_with_nul_byte() -> None:
    (msg,) = load_errors("bad\x00path.yaml")
    assert "not a usable path" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD_YAML)
    p.chmod(0)
    try:
        (msg,) = load_errors(p)
    finally:
        p.chmod(0o600)
    assert "cannot read" in msg


@pytest.mark.parametrize(
    ("text", "value"),
    [("20_000_000", 20_000_000), ("1_000", 1000), ("0x10", 16), ("1000", 1000)],
)
def test_yaml_ints(tmp_path: Path, text: str, value: int) -> None:
    assert load_spec(write(tmp_path, f"name: t\ndata:\n  size: {text}\n")).data.size == value


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("workers: true", "workers"),
        ("workers: yes", "workers"),
        ("workers: '4'", "workers"),
        ("repeats: on", "repeats"),
        ("repeats: '5'", "repeats"),
        ("repeats: 5.5", "repeats"),
        ("verify: 'true'", "verify"),
        ("name: 2024-01-01", "name"),
        ("kernel: 12", "kernel"),
    ],
)
def test_yaml_strict_types(tmp_path: Path, text: str, field: str) -> None:
    base = "name: t\ndata: {size: 1}\n" if not text.startswith("name") else "data: {size: 1}\n"
    (msg,) = load_errors(write(tmp_path, base + text + "\n"))
    assert msg.startswith(f"{field}: "), msg


def test_yaml_data_int_strict(tmp_path: Path) -> None:
    (msg,) = load_errors(write(tmp_path, "name: t\ndata: {size: true}\n"))
    assert msg.startswith("data.size: Input should be a valid integer (got True)")


# -- numbers as people write them, and absurd ones -------------------------------------

D5000 = "1" * 5000  # more digits than Python's int() converts (4300)


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("data: {size: 1e6}", "data.size", 1_000_000),
        ("data: {size: 2.5E3}", "data.size", 2500),
        ("data: {size: 1.0e+6}", "data.size", 1_000_000),  # YAML 1.1's own float form
        ("data: {size: 1000.0}", "data.size", 1000),
        ("data: {size: 1_000e3}", "data.size", 1_000_000),
        ("data: {shape: [1e3, 4e0]}", "data.shape", [1000, 4]),
        ("timeout_s: 1e-9", "timeout_s", 1e-9),
        ("timeout_s: .5e1", "timeout_s", 5.0),
        ("timeout_s: 3E+2", "timeout_s", 300.0),
        ("repeats: 1e2", "repeats", 100),
        ("warmup: 0e0", "warmup", 0),
        ("workers: 2e0", "workers", 2),
        ("chunks_per_worker: +4e0", "chunks_per_worker", 4),
        ("slurm: {time: 1e3}", "slurm.time", 1000),
        ("slurm: {mem: 2e3}", "slurm.mem", 2000),
        ("slurm: {cpus_per_task: 6.4e1}", "slurm.cpus_per_task", 64),
        ("threads_per_worker: 65536", "threads_per_worker", 65536),
        ("data: {size: 1e1}\nworkers: 65536", "workers", 65536),
    ],
)
def test_numbers_as_people_write_them(tmp_path: Path, text: str, field: str, value: Any) -> None:
    base = "name: t\n" + ("" if text.startswith("data") else "data: {size: 1000}\n")
    for s in (load_spec(write(tmp_path, base + text + "\n")), _loaded_with_set(tmp_path, text)):
        got: Any = s
        for part in field.split("."):
            got = getattr(got, part)
        assert got == value and type(got) is type(value), (got, value)


def _loaded_with_set(tmp_path: Path, text: str) -> JobSpec:
    """The same value given as ``--set key=value`` (a flow mapping in ``text`` unfolded to a dotted key)."""
    sets = [] if text.startswith("data") else ["data.size=1000"]
    for line in text.splitlines():
        key, _, rest = line.partition(": ")
        if rest.startswith("{"):
            inner_key, _, rest = rest.strip("{}").partition(": ")
            key += "." + inner_key
        sets.append(f"{key}={rest}")
    return load_spec(write(tmp_path, "name: t\ndata: {source: generate}\n", "base.yaml"), sets)


@pytest.mark.parametrize(
    ("field", "text"),
    [("name", "1e6"), ("slurm.job_name", "2E10"), ("slurm.partition", "1e-9"), ("kernel", "1e6"), ("name", "1.0e+6")],
)
def test_exponent_text_stays_text_in_text_fields(tmp_path: Path, field: str, text: str) -> None:
    top, _, sub = field.partition(".")
    line = f"{top}: {{{sub}: {text}}}" if sub else f"{top}: {text}"
    body = "data: {size: 10}\n" + line + "\n" + ("" if top == "name" else "name: t\n")
    if "+" in text:  # text, but not a valid job name
        (msg,) = load_errors(write(tmp_path, body))
        assert msg.startswith("name: String should match pattern") and "(got 1.0e+6)" in msg
        return
    got: Any = load_spec(write(tmp_path, body))
    for part in field.split("."):
        got = getattr(got, part)
    assert got == text and type(got) is str


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data: {size: 2.5}", "data.size: must be a whole number (got 2.5)"),
        ("data: {size: 1.5e-3}", "data.size: must be a whole number (got 1.5e-3)"),
        ("repeats: 1e-3", "repeats: must be a whole number (got 1e-3)"),
        ("workers: 2.5", "workers: must be a whole number (got 2.5)"),
        ("slurm: {time: 30.5}", "slurm.time: must be a whole number (got 30.5)"),
        (f"data: {{size: {D5000}}}", "data.size: a number of 5000 characters is out of range (got 1111111111"),
        (f"data: {{size: 0x{D5000}}}", "data.size: a number of 5002 characters is out of range (got 0x111111111"),
        (f"data: {{size: -{D5000}}}", "data.size: a number of 5001 characters is out of range (got -111111111"),
        (f"data: {{shape: [4, {D5000}]}}", "data.shape[1]: a number of 5000 characters is out of range"),
        (f"data: {{size: 10, seed: {D5000}}}", "data.seed: a number of 5000 characters is out of range"),
        (f"workers: {D5000}", "workers: a number of 5000 characters is out of range"),
        (f"timeout_s: {D5000}", "timeout_s: a number of 5000 characters is out of range"),
        (f"timeout_s: {D5000}.5", "timeout_s: Input should be"),  # a float that long is inf: not finite
        ("repeats: 1e400", "repeats: out of range (got 1e400)"),
        ("repeats: -.inf", "repeats: out of range (got -inf)"),
        ("timeout_s: 1e400", "timeout_s: Input should be"),
        ("timeout_s: 1.0e+400", "timeout_s: Input should be"),
        ("timeout_s: 1e-400", "timeout_s: Input should be greater than 0"),  # underflows to 0
        ("timeout_s: 1e9", "timeout_s: Input should be less than or equal to 31622400"),
        ("threads_per_worker: 65537", "threads_per_worker: Input should be less than or equal to 65536"),
        ("workers: 1e5", "workers: must be a positive integer or 'auto' (got 1e5); allowed: 1 to 65536, auto"),
        ("chunks_per_worker: 1e10", "chunks_per_worker: Input should be less than or equal to 2147483647"),
        (
            "data: {source: raw, path: x.raw, dtype: int8, size: 8, offset_bytes: 1e19}",
            "data.offset_bytes: Input should be less than or equal to 9223372036854775807",
        ),
        ("pinning: [[70000]]", "pinning[0][0]: 70000 is not a CPU id (0 to 65535)"),
        ("pinning: [70000]", "pinning[0]: 70000 is not a CPU id (0 to 65535)"),
        (f"pinning: S{D5000}:0-1", "pinning: a 5000-digit number is out of range; CPU ids, counts and indices go"),
        (f"pinning: ['0-{D5000}']", "pinning[0]: a 5000-digit number is out of range"),
        (f"pinning: E:N:4:1:{D5000}", "pinning: a 5000-digit number is out of range"),
        ("slurm: {time: 3e9}", "slurm.time: Input should be less than or equal to 2147483647"),
        ("slurm: {time: '99999999999999999999:00'}", "slurm.time: over Slurm's limit of 2147483647 minutes"),
        ("slurm: {time: '1-99999999999999999999'}", "slurm.time: over Slurm's limit of 2147483647 minutes"),
        (f"slurm: {{time: {D5000}}}", "slurm.time: a number of 5000 characters is out of range"),
        ("slurm: {mem: 99999999999999999999G}", "slurm.mem: over Slurm's limit of 2147483647 MB per node"),
        ("slurm: {mem: 3000T}", "slurm.mem: over Slurm's limit of 2147483647 MB per node"),
        ("slurm: {nodes: 1e20}", "slurm.nodes: Input should be less than or equal to 2147483647"),
        ("slurm: {cpus_per_task: 65537}", "slurm.cpus_per_task: Input should be less than or equal to 65536"),
        ("slurm: {array_throttle: 1e10}", "slurm.array_throttle: Input should be less than or equal to 2147483647"),
        ("slurm: {signal_lead_s: 1e9}", "slurm.signal_lead_s: Input should be less than or equal to 65535"),
    ],
)
def test_absurd_numbers_are_one_line_errors_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    base = "name: t\n" + ("" if text.startswith("data") else "data: {size: 1000}\n")
    msgs = load_errors(write(tmp_path, base + text + "\n"))
    assert any(m.startswith(expected) for m in msgs), msgs
    assert all(len(m) < 400 for m in msgs), "a 5000-digit value is shortened in the message"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (f"data.size={D5000}", "data.size: a number of 5000 characters is out of range"),
        ("data.size=1e400", "data.size: out of range (got 1e400)"),
        ("data.size=2.5e-1", "data.size: must be a whole number (got 2.5e-1)"),
        ("timeout_s=1e400", "timeout_s: Input should be"),
        (f"pinning=[[{D5000}]]", "pinning[0][0]: "),
    ],
)
def test_absurd_numbers_in_set_are_one_line_errors(tmp_path: Path, item: str, expected: str) -> None:
    msgs = load_errors(write(tmp_path, "name: t\ndata: {size: 10}\n"), [item])
    assert any(m.startswith(expected) for m in msgs), msgs
    assert all(len(m) < 400 for m in msgs)


def test_giant_python_ints_are_one_line_errors() -> None:
    """From Python (not YAML) an int may have more digits than repr() writes: messages must not call it."""
    huge = 10**5000
    for raw, field in [
        (data(size=huge), "data.size"),
        (spec(workers=huge), "workers"),
        (spec(repeats=huge), "repeats"),
    ]:
        msgs = errors(raw)
        assert any(m.startswith(f"{field}: ") for m in msgs), msgs
        assert all(len(m) < 400 for m in msgs)


def test_yaml_number_text_is_a_str_with_its_number() -> None:
    from shmhpc.spec import NumberText, parse_value

    v = parse_value("1e6", "--x")
    assert isinstance(v, NumberText) and v == "1e6" and v.number == 1e6 and repr(v) == "1e6"
    assert parse_value("-2.5E-3", "--x").number == -2.5e-3
    assert parse_value(D5000, "--x").number is None
    assert isinstance(parse_value("1.0e+6", "--x"), NumberText)  # YAML 1.1's float form too: kept as written
    for plain in ("1e", "e6", "1e6x", "1.5", "12", "1:30:00", "'1e6'", ".inf"):
        assert not isinstance(parse_value(plain, "--x"), NumberText), plain
    assert parse_value("[1e6, 2]", "--x") == ["1e6", 2]


# -- overrides -----------------------------------------------------------------------


def test_overrides_applied_before_validation(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\ndata: {size: 5}\nworkers: 1\n")
    s = load_spec(p, ["workers=4", "numa.partition=false", "data.size=1000"])
    assert s.workers == 4
    assert s.numa.partition is False
    assert s.data.size == 1000


def test_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\ndata: {size: 5}\n")
    s = load_spec(p, ["pinning=[[0, 1], '2-3']", "timeout_s=2.5", "name=other", "data.size=1_000", "workers=auto"])
    assert s.pinning == [[0, 1], [2, 3]]
    assert s.timeout_s == 2.5
    assert s.name == "other"
    assert s.data.size == 1000
    assert s.workers == "auto"


def test_override_can_fix_a_bad_spec(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\ndata: {size: -5}\nworkers: 0\n")
    assert load_spec(p, ["data.size=5", "workers=1"]).workers == 1


def test_override_values_are_validated_like_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\ndata: {size: 5}\n")
    msgs = load_errors(p, ["workers=true", "data.sise=3", "repeats='2'"])
    assert sorted(fields_of(msgs)) == ["data.sise", "repeats", "workers"], msgs


@pytest.mark.parametrize("item", ["foo", "=3", " =3", "a..b=1", ".a=1", "a.=1", ""])
def test_malformed_override_names_set(tmp_path: Path, item: str) -> None:
    p = write(tmp_path, "name: t\ndata: {size: 5}\n")
    (msg,) = load_errors(p, [item])
    assert msg.startswith("--set: ")
    assert repr(item) in msg


@pytest.mark.parametrize("item", ["workers=[", "workers=*a", "workers=&a 3", "data={a: 1, a: 2}"])
def test_override_with_bad_yaml_names_set(tmp_path: Path, item: str) -> None:
    p = write(tmp_path, "name: t\ndata: {size: 5}\n")
    (msg,) = load_errors(p, [item])
    assert msg.startswith(f"--set {item.split('=')[0]}: ")


def test_apply_overrides_does_not_mutate_and_replaces_non_mappings() -> None:
    raw = {"name": "t", "data": 5, "numa": {"partition": True}}
    out = apply_overrides(raw, ["data.size=3", "numa.partition=no", "x.y.z=1"])
    assert raw == {"name": "t", "data": 5, "numa": {"partition": True}}
    assert out == {"name": "t", "data": {"size": 3}, "numa": {"partition": False}, "x": {"y": {"z": 1}}}
    assert apply_overrides([1], ["a=1"]) == [1]
    assert apply_overrides({"a": 1}, ["a=b=c"]) == {"a": "b=c"}
    assert apply_overrides({"a": 1}, ["a="]) == {"a": None}


# -- JSON Schema and the examples ----------------------------------------------------


def test_json_schema_shape() -> None:
    schema = json_schema()
    json.dumps(schema)  # plain JSON
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "data"}
    assert set(schema["properties"]) == set(JobSpec.model_fields)
    assert "data" in schema["properties"]
    assert set(schema["$defs"]["DataSpec"]["properties"]) == set(DataSpec.model_fields)


def test_examples_exist() -> None:
    assert JOBS, "jobs/*.yaml: no example specs found"


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_example_job_loads(path: Path) -> None:
    s = load_spec(path)
    assert s.name


SCHEMA_GOOD = [MINIMAL, FULL, spec(pinning=["0-3", 4, [5, 6]]), spec(workers="auto", pinning="S0:0-1")]
SCHEMA_BAD = [
    {"data": {"size": 1}},
    spec(workerz=1),
    spec(workers=0),
    spec(workers="many"),
    spec(pinning=[]),
    spec(pinning=[[-1]]),
    data(size=-1),
    data(shape=[1, 2, 3]),
    spec(repeats=0),
    spec(start_method="thread"),
    spec(name="a b"),
]


@pytest.mark.skipif(importlib.util.find_spec("jsonschema") is None, reason="jsonschema is not installed")
def test_examples_and_specs_validate_against_json_schema() -> None:
    import jsonschema  # type: ignore[import-untyped]
    import yaml

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in JOBS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert not list(validator.iter_errors(doc)), path
    for raw in SCHEMA_GOOD:
        spec_from_dict(raw)
        assert not list(validator.iter_errors(raw)), raw
    for raw in SCHEMA_BAD:
        errors(raw)
        assert list(validator.iter_errors(raw)), raw


# -- property tests: nothing but SpecError, every message one line -------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "none", "compact", "0-3", "raw", "npy", "float32", "{name}", "{", "N:0-1", "\n", ""])
)
_keys = (
    st.sampled_from(list(JobSpec.model_fields) + list(DataSpec.model_fields) + ["partition", "workerz"])
    | st.text(max_size=8)
    | st.integers(-3, 3)
    | st.none()
    | st.booleans()
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=24,
)


def _check(raw: Any) -> None:
    try:
        s = spec_from_dict(raw)
    except SpecError as exc:
        assert_one_liners(exc)
    else:
        assert isinstance(s, JobSpec)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_random_structures_validate_or_raise_spec_error(raw: Any) -> None:
    _check(raw)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=8))
def test_random_mappings_validate_or_raise_spec_error(raw: dict[Any, Any]) -> None:
    _check(raw)


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    """FULL with a few random edits: a value replaced, a key deleted or a key added, at any depth."""
    raw = copy.deepcopy(FULL)
    for _ in range(draw(st.integers(1, 4))):
        node: Any = raw
        # walk down a random path through the containers
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            child = node[k]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            op = draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                node[k] = draw(_values)
            elif op == "delete":
                del node[k]
            elif isinstance(node, dict):
                node[draw(_keys)] = draw(_values)
            else:
                node.append(draw(_values))
            break
    return raw


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_valid_spec_validates_or_raises_spec_error(raw: dict[str, Any]) -> None:
    _check(raw)


def test_full_spec_is_the_valid_starting_point_of_the_mutations() -> None:
    spec_from_dict(copy.deepcopy(FULL))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 50_000])
def test_deep_python_structures(depth: int) -> None:
    deep: Any = 1
    for _ in range(depth):
        deep = [deep]
    (msg,) = errors(spec(data={"size": deep}))
    assert "nested more than" in msg
    deep_map: Any = 1
    for _ in range(depth):
        deep_map = {"a": deep_map}
    (msg,) = errors(spec(workerz=deep_map))
    assert "nested more than" in msg


def test_pinning_at_normal_depth_is_not_too_deep() -> None:
    assert spec_from_dict(spec(pinning=[[0, 1]])).pinning == [[0, 1]]


_YAML_TOKENS = [*"abn019_-:,[]{}&*!|>'\"#%@`?\n\t ", "name", "data", "size", ": ", "\n  ", "- ", "\x00", "é", "\ufeff"]
_yamlish = st.lists(st.sampled_from(_YAML_TOKENS), max_size=40).map("".join)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_yamlish | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_random_yaml_text_loads_or_raises_spec_error(fuzz_dir: Path, text: str) -> None:
    p = fuzz_dir / "fuzz.yaml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        s = load_spec(p)
    except SpecError as exc:
        assert_one_liners(exc)
    else:
        assert isinstance(s, JobSpec)
