"""Reports: atomic writes, no silent overwrite, checked loading."""

from __future__ import annotations

import json
import os

import pytest
from conftest import load_json, run_cli, small_spec

from shmhpc.compare import Sample, format_value
from shmhpc.errors import SpecError
from shmhpc.report import REPORT_VERSION, load_report, summarize, write_report
from shmhpc.sweep import summary_rows
from shmhpc.tables import format_seconds


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "r.json"
    write_report({"version": REPORT_VERSION, "a": 1}, p)
    assert load_json(p) == {"version": REPORT_VERSION, "a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_failed_write_keeps_the_old_report(tmp_path):
    p = tmp_path / "r.json"
    write_report({"version": REPORT_VERSION, "old": True}, p)
    with pytest.raises(TypeError):
        write_report({"version": REPORT_VERSION, "bad": object()}, p)
    assert load_json(p)["old"] is True
    assert os.listdir(tmp_path) == ["r.json"]


def test_no_clobber_writes_beside(tmp_path):
    p = tmp_path / "r.json"
    write_report({"version": REPORT_VERSION, "first": True}, p)
    out = write_report({"version": REPORT_VERSION, "second": True}, p, overwrite=False)
    assert out != p and out.parent == tmp_path
    assert load_json(p)["first"] is True and load_json(out)["second"] is True


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such report file"),
        ('{"version": 1, "status": "ok", "timi', "not a JSON report"),
        ("hello", "not a JSON report"),
        ("[1, 2]", "not a shmhpc report"),
        ('{"status": "ok"}', "not a shmhpc report"),
        ('{"version": 99}', "report version 99 is not supported"),
    ],
)
def test_load_report_errors_are_one_line(tmp_path, content, needle):
    p = tmp_path / "r.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(SpecError) as exc:
        load_report(p)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_summary_of_a_failed_report():
    text = summarize({"version": 1, "status": "failed", "error": "worker 1 died", "job": {"name": "x"}})
    assert text.startswith("x: failed — worker 1 died")


def test_existing_report_is_not_overwritten_without_force(tmp_path, no_leak):
    spec = small_spec(tmp_path)
    first = run_cli("run", str(spec), "-q", cwd=tmp_path)
    assert first.returncode == 0
    report = tmp_path / "reports" / "t.json"
    before = report.read_bytes()
    again = run_cli("run", str(spec), "-q", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists; pass --force" in again.stderr and "Traceback" not in again.stderr
    assert report.read_bytes() == before
    forced = run_cli("run", str(spec), "-q", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert report.read_bytes() != before


def test_timestamp_placeholder_gives_distinct_reports(tmp_path, no_leak):
    spec = small_spec(tmp_path, report=f"{tmp_path}/reports/{{name}}-{{timestamp}}.json")
    for _ in range(2):
        assert run_cli("run", str(spec), "-q", cwd=tmp_path).returncode == 0
    files = sorted((tmp_path / "reports").glob("t-*.json"))
    assert len(files) == 2
    assert all(json.loads(f.read_text())["status"] == "ok" for f in files)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.000412, "412.00 µs"), (0.00748, "7.48 ms"), (0.57383, "573.83 ms"), (1.25, "1.25 s")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_summary_sweep_and_compare_show_a_duration_alike():
    s = 0.000412
    report = {"version": 1, "status": "ok", "job": {"name": "x"}, "timings": {"repeat_s": [s], "repeat": {"median": s}}}
    assert "repeat: median 412.00 µs over 1" in summarize(report)
    run = {"index": 1, "overrides": [], "status": "ok", "median_repeat_s": s, "median_gbps": 1.0}
    _, rows = summary_rows({"vary": [], "runs": [{**run, "report": "r.json", "reason": None}]})
    assert "412.00 µs" in rows[0]
    assert format_value(Sample(values=[s], center=s, stdev=None, mean=s, n=1), "s") == "412.00 µs"


def test_summary_never_claims_zero_bandwidth():
    """A run stopped after some repeats shows their GB/s; a report without any says so instead of 0.00."""
    base = {"job": {"name": "j"}, "status": "interrupted", "timings": {"repeat_s": [0.01, 0.02], "repeat": {}}}
    assert "GB/s not measured" in summarize(base) and "0.00 GB/s" not in summarize(base)
    with_bw = {**base, "bandwidth": {"gbps": {"median": 6.25}}}
    assert "6.25 GB/s median" in summarize(with_bw)
