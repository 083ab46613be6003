"""A corpus of malformed specs: each one exits 2 with one-line messages naming the field, never a traceback.

The corpus lives in tests/corpus/bad-specs/ (one YAML file per case; EXPECTED.tsv gives, for each file, a
substring that one of the error lines must contain). Validation runs in-process through the real CLI entry
point (fast), a sample also through a subprocess, and `run` on each leaves no shared memory behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import our_segments, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmhpc.cli import main

CORPUS = Path(__file__).parent / "corpus" / "bad-specs"
EXPECTED = {
    name: needle
    for name, needle in (
        line.split("\t", 1) for line in (CORPUS / "EXPECTED.tsv").read_text().splitlines() if not line.startswith("#")
    )
}


def test_corpus_is_large_and_indexed():
    files = {p.name for p in CORPUS.glob("*.yaml")}
    assert len(files) >= 50
    assert files == set(EXPECTED), "every corpus file has an expected message and vice versa"


def _check_lines(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "at least one error line"
    assert "Traceback" not in err
    for line in lines:
        assert line.startswith("error: "), f"not a one-line error: {line!r}"
    assert any(needle in line for line in lines), f"no line contains {needle!r}:\n{err}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_validate_rejects_with_field_named(name, capsys):
    rc = main(["validate", str(CORPUS / name)])
    out = capsys.readouterr()
    assert rc == 2
    _check_lines(out.err, EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_run_rejects_before_any_segment(name, capsys, tmp_path):
    before = our_segments()
    rc = main(["run", str(CORPUS / name), "-q", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert rc == 2
    _check_lines(out.err, EXPECTED[name])
    assert our_segments() - before == set()


@pytest.mark.parametrize(
    "name", ["yaml-bomb.yaml", "deep-nesting.yaml", "cpu-out-of-range.yaml", "kernel-no-module.yaml", "empty.yaml"]
)
def test_subprocess_sample(name):
    out = run_cli("validate", str(CORPUS / name))
    assert out.returncode == 2
    _check_lines(out.stderr, EXPECTED[name])


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["name", "data", "workers", "threads_per_worker", "pinning", "numa", "kernel", "report", "repeats", "x"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.dictionaries(_keys, _values, max_size=8))
def test_random_specs_never_traceback(spec, tmp_path_factory, capsys):
    import yaml

    path = tmp_path_factory.mktemp("rnd") / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc = main(["validate", str(path)])
    out = capsys.readouterr()
    assert rc in (0, 2)
    assert "Traceback" not in out.err
    for line in out.err.splitlines():
        assert line.startswith("error: ")
