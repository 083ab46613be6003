"""The typed report model: real reports read through it, the schema matches them, the test helper cannot drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import VALIDATED_REPORTS, run_cli, small_spec, validate_reports_under
from synthetic import make_report, write

from shmhpc.errors import SpecError
from shmhpc.report import REPORT_VERSION, as_run_report, read_report
from shmhpc.report_model import RunReport, report_json_schema


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> Path:
    """One tiny real run's report, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("real")
    done = run_cli("run", str(small_spec(tmp, name="real")), "-q", cwd=tmp)
    assert done.returncode == 0, done.stderr
    return tmp / "reports" / "real.json"


def test_a_real_report_reads_with_typed_fields(real_report):
    r = read_report(real_report)
    assert isinstance(r, RunReport)
    assert (r.version, r.status, r.exit_code, r.error) == (REPORT_VERSION, "ok", 0, None)
    assert r.report_path == str(real_report)
    assert r.job.name == "real" and r.job.repeats == 3 and r.host.hostname
    assert r.data is not None and r.data.dtype == "float32" and r.data.nbytes == 300_000 * 4
    assert r.plan is not None and r.plan.workers is not None and r.workers is not None
    assert len(r.workers) == len(r.plan.workers)
    for w in r.workers:
        assert all(isinstance(c, int) for c in w.cpus_observed or [])
        assert w.repeat_s is not None and len(w.repeat_s) == 3 and all(isinstance(x, float) for x in w.repeat_s)
        assert w.chunk_s is not None and len(w.chunk_s) == 3
    assert r.timings is not None and r.timings.repeat is not None and len(r.timings.repeat_s or []) == 3
    assert r.timings.repeat.median is not None and r.timings.total_s is not None
    assert r.bandwidth is not None and r.bandwidth.gbps is not None and r.bandwidth.gbps.median
    assert r.result is not None and r.result.verified is True and r.result.kernel == "sum"
    assert r.memory is not None and r.contention is not None and r.pages is not None


def test_the_suite_checks_real_reports_against_the_schema(real_report, request):
    assert "_reports_validate_against_schema" in request.fixturenames  # the autouse check is installed
    before = len(VALIDATED_REPORTS)
    assert validate_reports_under(real_report.parent) == 1
    assert VALIDATED_REPORTS[before:] == [real_report]
    bad = json.loads(real_report.read_text())
    bad["timings"]["repeat_s"] = ["fast"]
    (real_report.parent / "sub").mkdir(exist_ok=True)
    (real_report.parent / "sub" / "bad.json").write_text(json.dumps(bad))
    try:
        with pytest.raises(AssertionError, match=r"timings\.repeat_s\.0: 'fast' is not of type 'number'"):
            validate_reports_under(real_report.parent / "sub")
    finally:
        (real_report.parent / "sub" / "bad.json").unlink()


def test_schema_command_prints_the_report_schema():
    out = run_cli("schema", "--report")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema == json.loads(json.dumps(report_json_schema()))
    assert {"version", "status", "job", "host"} <= set(schema["required"])
    assert schema["additionalProperties"] is True  # new fields are additive
    spec_schema = json.loads(run_cli("schema").stdout)
    assert spec_schema != schema


def test_a_run_that_fails_reads_too(tmp_path, no_leak):
    """Sections a failed run never reached are absent, and the report still reads."""
    spec = small_spec(tmp_path, name="boom", kernel="bad_kernels:boom", verify="false")
    done = run_cli("run", str(spec), "-q", cwd=tmp_path)
    assert done.returncode == 1
    r = read_report(tmp_path / "reports" / "boom.json")
    assert r.status == "failed" and r.error and r.exit_code == 1
    assert r.result is None and r.bandwidth is None
    assert r.timings is not None and r.timings.total_s is not None


def _missing(fake: Any, real: Any, where: str = "") -> list[str]:
    """Paths of keys in ``fake`` that ``real`` lacks (lists: each fake item against the first real one)."""
    if isinstance(fake, dict):
        if not isinstance(real, dict):
            return [f"{where} (not an object in the real report)"]
        out = []
        for k, v in fake.items():
            if k not in real:
                out.append(f"{where}.{k}".lstrip("."))
            else:
                out += _missing(v, real[k], f"{where}.{k}".lstrip("."))
        return out
    if isinstance(fake, list) and fake and isinstance(fake[0], (dict, list)):
        if not isinstance(real, list) or not real:
            return [f"{where} (empty or not a list in the real report)"]
        return [m for item in fake for m in _missing(item, real[0], f"{where}[]")]
    return []


def test_the_synthetic_report_has_only_fields_a_real_one_has(real_report):
    real = json.loads(real_report.read_text())
    fake = make_report(workers=2, ceiling_gbps=None)
    assert _missing(fake, real) == []
    jsonschema.Draft202012Validator(report_json_schema()).validate(fake)
    as_run_report("synthetic", fake)  # and the reader takes it as it is


def test_a_newer_version_is_refused_with_what_to_do(tmp_path):
    p = write(tmp_path / "new.json", make_report(version=REPORT_VERSION + 1))
    with pytest.raises(SpecError) as exc:
        read_report(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: report version 2 is not supported: it is newer than this shmhpc")
    assert "upgrade shmhpc" in msg and "\n" not in msg
    old = write(tmp_path / "old.json", make_report(version=0))
    with pytest.raises(SpecError, match="report version 0 is not supported; this shmhpc reads version 1"):
        read_report(old)


def test_unknown_fields_are_additive(tmp_path):
    report = make_report()
    report["power"] = {"watts": [41.5]}
    report["workers"][0]["numa_hits"] = 12
    report["timings"]["queue_s"] = 0.1
    r = read_report(write(tmp_path / "r.json", report))
    assert r.model_extra == {"power": {"watts": [41.5]}}
    assert r.workers is not None and r.workers[0].model_extra == {"numa_hits": 12}
    jsonschema.Draft202012Validator(report_json_schema()).validate(report)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda r: r["workers"][1].update(cpus_observed=[0, "1"]),
            "malformed report: workers[].cpus_observed is not a list of CPU ids (workers[1].cpus_observed[1] is '1')",
        ),
        (
            lambda r: r["timings"].update(total_s="1.5"),
            "malformed report: timings.total_s is not a finite number ('1.5')",
        ),
        (lambda r: r["timings"].update(load_s=float("nan")), "malformed report: timings.load_s is not a finite number"),
        (lambda r: r.update(plan=[1]), "malformed report: plan is not an object ([1])"),
        (lambda r: r["job"].update(repeats=True), "malformed report: job.repeats is not an integer (True)"),
        (lambda r: r["workers"][0].pop("rank"), "malformed report: workers[].rank is missing"),
    ],
)
def test_a_malformed_field_is_named_in_one_line(tmp_path, change, needle):
    report = make_report()
    change(report)
    p = write(tmp_path / "r.json", report)
    with pytest.raises(SpecError) as exc:
        read_report(p)
    assert str(exc.value).startswith(f"{p}: ") and needle in str(exc.value) and "\n" not in str(exc.value)
