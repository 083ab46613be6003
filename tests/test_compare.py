"""compare: statistics against hand-computed numbers, refusal rules, output formats, placement, bad files."""

from __future__ import annotations

import importlib.util
import json
import math
from fractions import Fraction

import pytest
from conftest import run_cli
from synthetic import make_report, write

from shmhpc.compare import compare_reports, render_markdown, render_text
from shmhpc.errors import SpecError
from shmhpc.significance import t_two_sided_p, welch_test

REF = [0.040, 0.041, 0.042, 0.043, 0.044]  # median 42 ms, stdev √2.5e-6 = 1.58 ms
FAST = [0.030, 0.031, 0.032, 0.033, 0.034]  # median 32 ms, same stdev: t = -0.01/√(2·2.5e-6/5) = -10, df = 8


def _flat(text: str) -> str:
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def _t_pdf(x: float, df: float) -> float:
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(logc - (df + 1) / 2 * math.log1p(x * x / df))


def _p_by_integration(t: float, df: float, n: int = 20000) -> float:
    """Two-sided p by Simpson's rule on the t density from 0 to |t| (independent of the beta function)."""
    a, b = 0.0, abs(t)
    h = (b - a) / n
    s = _t_pdf(a, df) + _t_pdf(b, df)
    s += sum((4 if i % 2 else 2) * _t_pdf(a + i * h, df) for i in range(1, n))
    return 1.0 - 2.0 * (s * h / 3.0)


# -- the t distribution and Welch's test ------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 12.7, 100.0])
def test_p_value_closed_forms_for_one_and_two_degrees_of_freedom(t):
    # ν = 1 is the Cauchy distribution; ν = 2 has CDF ½ + t / (2√(2 + t²)).
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-13)
    assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-13)


@pytest.mark.parametrize(
    ("df", "t_crit"),
    # Two-sided 5 % critical values from any t table (t_{0.975, ν}).
    [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (8, 2.306004135), (10, 2.228138852), (30, 2.042272456)],
)
def test_p_value_is_alpha_at_textbook_critical_values(df, t_crit):
    assert t_two_sided_p(t_crit, df) == pytest.approx(0.05, abs=1e-7)


@pytest.mark.parametrize(("t", "df"), [(0.5, 8), (1.3587, 4.7494), (2.5, 3.3), (3.0, 17.25), (0.05, 60)])
def test_p_value_matches_numerical_integration_for_fractional_df(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(_p_by_integration(t, df), abs=1e-9)


def test_p_value_edges():
    assert t_two_sided_p(math.inf, 5) == 0.0
    assert math.isnan(t_two_sided_p(math.nan, 5))
    assert t_two_sided_p(3.0, 1e6) == pytest.approx(math.erfc(3 / math.sqrt(2)), rel=1e-4)  # → normal


def test_welch_by_hand_unequal_variances():
    a, b = [1, 2, 3, 4, 5], [2, 4, 6, 8]
    # var(a) = 5/2, var(b) = 20/3; v1 = 1/2, v2 = 5/3; t = (5 - 3)/√(13/6); ν = (13/6)² / (v1²/4 + v2²/3)
    v1, v2 = Fraction(1, 2), Fraction(5, 3)
    df = (v1 + v2) ** 2 / (v1**2 / 4 + v2**2 / 3)
    res = welch_test([float(x) for x in a], [float(x) for x in b])
    assert res is not None
    assert res.t == pytest.approx(2 / math.sqrt(13 / 6), rel=1e-12)
    assert res.df == pytest.approx(float(df), rel=1e-12)
    assert res.p == pytest.approx(_p_by_integration(res.t, res.df), abs=1e-9)
    assert not res.significant


def test_welch_equal_variances_by_hand():
    res = welch_test(REF, FAST)
    assert res is not None
    assert res.t == pytest.approx(-10.0, rel=1e-9) and res.df == pytest.approx(8.0, rel=1e-9)
    assert res.p == pytest.approx(_p_by_integration(10.0, 8.0), abs=1e-9) and res.p < 1e-4
    assert res.significant


def test_welch_degenerate_samples():
    assert welch_test([1.0], [1.0, 2.0]) is None
    same = welch_test([2.0, 2.0, 2.0], [2.0, 2.0])
    assert same is not None and same.p == 1.0 and not same.significant
    differ = welch_test([2.0, 2.0, 2.0], [3.0, 3.0])
    assert differ is not None and differ.p == 0.0 and differ.significant


@pytest.mark.skipif(
    importlib.util.find_spec("scipy") is None,
    reason="scipy not installed: checked against closed forms, t tables and numerical integration instead",
)
def test_against_scipy():  # pragma: no cover - only where scipy happens to be installed
    from scipy import stats

    for a, b in [(REF, FAST), ([1, 2, 3, 4, 5], [2, 4, 6, 8]), ([0.1, 0.12, 0.09], [0.11, 0.1, 0.13, 0.12])]:
        ours = welch_test([float(x) for x in a], [float(x) for x in b])
        theirs = stats.ttest_ind(b, a, equal_var=False)
        assert ours is not None
        assert ours.t == pytest.approx(theirs.statistic, rel=1e-10)
        assert ours.p == pytest.approx(theirs.pvalue, rel=1e-8)


# -- the comparison model ----------------------------------------------------------------------


def _cmp(ref: dict, other: dict, **kw):
    return compare_reports([("a.json", ref), ("b.json", other)], **kw)


def test_known_values_give_the_expected_line():
    cmp = _cmp(make_report("none", REF, total_s=2.0, load_s=0.4), make_report("compact", FAST, total_s=1.6))
    by_key = {m.key: m for m in cmp.metrics}
    rep = by_key["repeat"]
    assert rep.samples[0].center == pytest.approx(0.042) and rep.samples[0].stdev == pytest.approx(math.sqrt(2.5e-6))
    ch = rep.changes[1]
    assert ch is not None and ch.ratio == pytest.approx(42 / 32) and ch.direction == "faster"
    assert ch.test is not None and ch.test.significant
    gb = by_key["gbps"].changes[1]
    assert gb is not None and gb.direction == "faster" and gb.ratio == pytest.approx(42 / 32)  # higher GB/s is better
    text = _flat(render_text(cmp))
    line = "compute time per repeat [none] 42.00 ms ± 1.58 -> [compact] 32.00 ms ± 1.58: 1.31x faster (p < 0.001)"
    assert line in text
    assert "[none] 1.90 GB/s ± 0.07 -> [compact] 2.50 GB/s ± 0.12: 1.31x faster (p < 0.001)" in text
    assert "cold end-to-end time [none] 2.00 s -> [compact] 1.60 s: 1.25x faster (single value, no test)" in text
    assert "load time [none] 400.00 ms -> [compact] 200.00 ms: 2.00x faster (single value, no test)" in text
    assert "warning" not in text  # 5 repeats, stdev < 10 %


def test_slower_and_overlapping_is_not_significant():
    ref = [0.100, 0.102, 0.104, 0.098, 0.096]
    other = [0.101, 0.103, 0.099, 0.105, 0.097]  # t = 0.5, df = 8, p = 0.6305
    text = _flat(render_text(_cmp(make_report("none", ref), make_report("compact", other))))
    assert "-> [compact] 101.00 ms ± 3.16: 1.01x slower, not significant (p = 0.63)" in text
    assert "-> [compact] 0.79 GB/s ± 0.02: 1.01x slower, not significant (p = " in text


def test_spread_and_few_repeats_warnings():
    noisy = [0.010, 0.014, 0.008, 0.012, 0.011]  # stdev 2.24 ms = 20 % of 11 ms
    cmp = _cmp(make_report("none", noisy), make_report("compact", [0.010, 0.0101, 0.0099]))
    text = render_text(cmp)
    assert any(w.startswith("[none] noisy: the stdev is 20% of the mean compute time per repeat") for w in cmp.warnings)
    assert any(w.startswith("[compact] only 3 repeats (< 5)") for w in cmp.warnings)
    assert not any(w.startswith("[compact] noisy") for w in cmp.warnings)
    assert "warnings:" in text


def test_labels_tell_apart_runs_with_the_same_policy():
    cmp = compare_reports(
        [
            ("a", make_report("compact", REF, workers=2)),
            ("b", make_report("compact", FAST, workers=4)),
            ("c", make_report("none", FAST, workers=4)),
        ]
    )
    assert [r.label for r in cmp.runs] == ["compact w=2", "compact w=4", "none"]
    twice = compare_reports([("a", make_report("compact", REF)), ("b", make_report("compact", FAST))])
    assert [r.label for r in twice.runs] == ["compact #1", "compact #2"]
    assert "nothing in the recorded settings" in render_text(twice)
    named = compare_reports(
        [("a", make_report("none", REF)), ("b", make_report("compact", FAST))], labels=["unpinned", "pinned"]
    )
    assert "[unpinned] 42.00 ms ± 1.58 -> [pinned] 32.00 ms ± 1.58" in _flat(render_text(named))
    with pytest.raises(SpecError, match="--labels: 1 labels for 2 reports"):
        compare_reports([("a", make_report("none")), ("b", make_report())], labels=["x"])


def test_what_differs_lists_settings():
    cmp = _cmp(make_report("none", REF, start_method="spawn"), make_report("compact", FAST, threads_per_worker=2))
    assert cmp.differs["pinning"] == ["none", "compact"]
    assert cmp.differs["start_method"] == ["spawn", "forkserver"]
    assert cmp.differs["threads_per_worker"] == ["1", "2"]
    assert "workers" not in cmp.differs
    assert cmp.same["host"] == "node1 (Test CPU 9000)"


def test_start_method_auto_shows_what_it_chose():
    forked, served = make_report("none", REF, start_method="auto"), make_report("compact", FAST, start_method="auto")
    forked["pool"] = {"start_method": "fork", "start_method_asked": "auto", "launcher_threads": 1}
    served["pool"] = {"start_method": "forkserver", "start_method_asked": "auto", "launcher_threads": 2}
    assert _cmp(forked, served).differs["start_method"] == ["fork (auto)", "forkserver (auto)"]


def test_placement_shows_unpinned_and_pinned():
    cmp = _cmp(make_report("none", REF, workers=2, usable=[0, 1, 2, 3]), make_report("compact", FAST))
    text = render_text(cmp)
    assert "[none] unpinned: workers could run on 0-3" in text
    assert "rank 0: cpus 0-3 (asked 0-3), ran on 0,3, node 0" in text
    assert "[compact] pinned: every worker ran only on its own CPUs" in text
    assert "rank 1: cpus 1 (asked 1), ran on 1, node 0" in text
    assert cmp.runs[0].pinned is False and cmp.runs[1].pinned is True


def test_pinned_run_not_where_asked_is_a_warning():
    bad = make_report("compact", FAST, observed=[[0], [0, 1]])
    cmp = _cmp(make_report("none", REF), bad)
    assert not cmp.runs[1].placement_ok
    assert any("pinned, but not where asked: rank 1 asked 1, observed 0-1" in w for w in cmp.warnings)


# -- refusal rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hostname": "node2"}, "different hosts (host.hostname): node1 in a.json; node2 in b.json"),
        ({"cpu_model": "Other CPU"}, "different CPU models (host.cpu_model)"),
        ({"size": 1000}, "different data sizes (data.nbytes): 80000000 in a.json; 4000 in b.json"),
        ({"dtype": "float64", "size": 10_000_000}, "different dtypes (data.dtype)"),
        ({"kernel": "norm2"}, "different kernels (job.kernel)"),
        ({"status": "failed"}, "b.json has status 'failed', not 'ok' (worker 1 died)"),
    ],
)
def test_refusal_rules_and_force(change, needle):
    with pytest.raises(SpecError) as info:
        _cmp(make_report("none", REF), make_report("compact", FAST, **change))
    assert any(needle in m for m in info.value.messages), info.value.messages
    assert info.value.messages[-1].endswith("add --force to compare anyway")
    forced = _cmp(make_report("none", REF), make_report("compact", FAST, **change), force=True)
    assert any(w.startswith("forced: ") and needle in w for w in forced.warnings)


def test_refusal_through_the_cli_lists_every_reason(tmp_path):
    a = write(tmp_path / "a.json", make_report("none", REF))
    b = write(tmp_path / "b.json", make_report("compact", FAST, hostname="elsewhere", kernel="max"))
    out = run_cli("compare", str(a), str(b))
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: compare: ") for line in lines)
    assert "different hosts" in lines[0] and "different kernels" in lines[1] and "--force" in lines[2]
    forced = run_cli("compare", str(a), str(b), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "forced: different hosts" in forced.stdout and "host.hostname" in forced.stdout


# -- the CLI: formats, bad files ------------------------------------------------------------------


def test_cli_default_json_and_markdown(tmp_path):
    a = write(tmp_path / "unpinned.json", make_report("none", REF))
    b = write(tmp_path / "pinned.json", make_report("compact", FAST))
    out = run_cli("compare", str(a), str(b))
    assert out.returncode == 0, out.stderr
    assert "1.31x faster (p < 0.001)" in out.stdout and "reference: [none]" in out.stdout

    js = run_cli("compare", str(a), str(b), "--json")
    assert js.returncode == 0
    data = json.loads(js.stdout)
    assert data["kind"] == "shmhpc-compare" and data["reference"] == "none"
    rep = next(m for m in data["metrics"] if m["key"] == "repeat")
    assert rep["changes"][0] is None
    assert rep["changes"][1]["direction"] == "faster" and rep["changes"][1]["test"]["significant"] is True
    assert rep["samples"][0]["values"] == REF
    assert data["runs"][1]["placement_verdict"].startswith("pinned: every worker")

    md = run_cli("compare", str(a), str(b), "--markdown", "--labels", "unpinned,pinned")
    assert md.returncode == 0
    lines = md.stdout.splitlines()
    assert "| metric | [unpinned] | [pinned] | [pinned] vs [unpinned] |" in lines
    header = lines.index("| metric | [unpinned] | [pinned] | [pinned] vs [unpinned] |")
    assert lines[header + 1] == "|---|---|---|---|"
    assert lines[header + 2].startswith("| compute time per repeat | 42.00 ms ± 1.58 | 32.00 ms ± 1.58 | 1.31x faster")
    assert any(line.startswith("- [unpinned] unpinned: workers could run on 0-3") for line in lines)

    both = run_cli("compare", str(a), str(b), "--json", "--markdown")
    assert both.returncode == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such report file"),
        ('{"version": 1, "status": "ok", "job": {', "not a JSON report"),  # truncated
        ("timings: 1\n", "not a JSON report"),
        ("[1, 2]", "not a shmhpc report"),
        (json.dumps(make_report(version=0)), "report version 0 is not supported; this shmhpc reads version 1"),
        (json.dumps(make_report(version=2)), "report version 2 is not supported"),
        (
            json.dumps({**make_report(), "timings": {"repeat_s": ["fast"], "total_s": 1}}),
            "malformed report: timings.repeat_s is not a list of finite numbers",
        ),
        (json.dumps({**make_report(), "host": None}), "malformed report: no 'host' object"),
        (json.dumps({"version": 1, "kind": "shmhpc-sweep", "runs": []}), "is a sweep summary, not a run report"),
    ],
)
def test_bad_report_files_are_one_line_exit_2(tmp_path, content, needle):
    good = write(tmp_path / "good.json", make_report("none", REF))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    out = run_cli("compare", str(good), str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and needle in lines[0], out.stderr


def test_needs_two_reports_and_reads_directories(tmp_path):
    a = write(tmp_path / "d" / "1.json", make_report("none", REF))
    one = run_cli("compare", str(a))
    assert one.returncode == 2 and "needs at least two reports" in one.stderr
    write(tmp_path / "d" / "2.json", make_report("compact", FAST))
    d = run_cli("compare", str(tmp_path / "d"))
    assert d.returncode == 0 and "[none] 42.00 ms" in d.stdout


def test_markdown_renders_all_tables():
    md = render_markdown(_cmp(make_report("none", REF), make_report("compact", FAST, observed=[[0], [0, 1]])))
    tables = [block for block in md.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 4  # runs, what differs, results, placement
    for t in tables:
        rows = t.splitlines()
        assert set(rows[1]) <= set("|-") and all(r.startswith("| ") and r.endswith(" |") for r in rows[2:])
        assert len({r.count(" | ") for r in [rows[0], *rows[2:]]}) == 1  # same number of cells in every row
    assert "Warnings:" in md and "pinned, but not where asked" in md


def test_ok_only_leaves_out_and_names_runs_that_did_not_finish(tmp_path):
    """What compare-reports.sbatch relies on after a job array where a task failed."""
    a = write(tmp_path / "a.json", make_report("none", REF))
    failed = make_report("scatter", FAST)
    failed.update(status="interrupted", error="interrupted by SIGUSR1")
    b = write(tmp_path / "b.json", failed)
    c = write(tmp_path / "c.json", make_report("compact", FAST))
    refused = run_cli("compare", str(a), str(b), str(c))
    assert refused.returncode == 2 and "has status 'interrupted'" in refused.stderr
    out = run_cli("compare", "--ok-only", "--labels", "u,s,p", str(a), str(b), str(c))
    assert out.returncode == 0, out.stderr
    assert f"note: leaving out {b}: status 'interrupted' (interrupted by SIGUSR1)" in out.stderr
    assert "[u]" in out.stdout and "[p]" in out.stdout and "[s]" not in out.stdout
    alone = run_cli("compare", "--ok-only", str(a), str(b))
    assert alone.returncode == 2 and "--ok-only left 1 report with status 'ok'; needs at least two" in alone.stderr
    mismatch = run_cli("compare", "--labels", "x", str(a), str(c))
    assert mismatch.returncode == 2 and "--labels: 1 labels for 2 reports" in mismatch.stderr


def test_slurm_variables_are_not_settings_that_differ():
    a, b = make_report("none", REF), make_report("compact", FAST)
    for i, r in enumerate((a, b)):
        r["host"]["env"] = {"OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(10 + i), "SLURM_SRUN_COMM_PORT": str(4000 + i)}
        r["slurm"] = {"job_id": 10 + i, "cpus_per_task": 2, "cpu_bind": {"SLURM_CPU_BIND_TYPE": "none,"}}
    cmp = compare_reports([("a", a), ("b", b)])
    assert "thread env" not in cmp.differs and "allocation" not in cmp.differs
    b["slurm"]["cpus_per_task"] = 4
    assert compare_reports([("a", a), ("b", b)]).differs["allocation"] == [
        "slurm, 2 CPUs per task, cpu-bind none",
        "slurm, 4 CPUs per task, cpu-bind none",
    ]


# -- the same run twice; timings that cannot be compared ------------------------------------------


def _with_segment(report: dict, name: str) -> dict:
    report["segment"] = {"name": name, "dir": "/dev/shm", "size_bytes": 4096}
    return report


def test_the_same_file_twice_is_refused_unless_forced(tmp_path):
    a = write(tmp_path / "a.json", make_report("none", REF))
    out = run_cli("compare", str(a), str(a))
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line == (
        f"error: compare: {a} and {a} are the same run (identical content); a run compared with itself says "
        "nothing; add --force to compare anyway"
    )
    forced = run_cli("compare", str(a), str(a), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"forced: {a} and {a} are the same run" in forced.stdout


def test_a_copy_or_an_edited_copy_of_one_run_is_the_same_run(tmp_path):
    run = _with_segment(make_report("none", REF), "shmhpc-u1000-p4242-j0-0123456789abcdef")
    edited = json.loads(json.dumps(run))
    edited["job"]["name"] = "renamed"
    edited["timings"]["repeat_s"] = FAST  # numbers changed by hand: still the run of that segment
    with pytest.raises(SpecError) as info:
        _cmp(run, edited)
    (msg,) = info.value.messages
    assert msg.startswith("compare: a.json and b.json are the same run (segment shmhpc-u1000-p4242-j0-0123456789abcdef")
    copy_ = write(tmp_path / "copy.json", run)
    orig = write(tmp_path / "orig.json", run)
    out = run_cli("compare", str(orig), str(copy_))
    assert out.returncode == 2 and "are the same run (segment shmhpc-u1000-p4242" in out.stderr


def test_different_runs_are_not_the_same_run():
    a = _with_segment(make_report("none", REF), "shmhpc-u1000-p4242-j0-0123456789abcdef")
    b = _with_segment(make_report("none", REF), "shmhpc-u1000-p4243-j0-fedcba9876543210")
    cmp = _cmp(a, b)  # identical settings and timings, but two launchers: two runs
    assert not any("same run" in w for w in cmp.warnings)
    other_host = _with_segment(make_report("none", REF), "shmhpc-u1000-p4242-j0-0123456789abcdef")
    other_host["host"]["hostname"] = "node2"  # the same segment name on another host is another run
    with pytest.raises(SpecError) as info:
        _cmp(a, other_host)
    assert not any("same run" in m for m in info.value.messages)


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("timings", "repeat_s", [0.04, 0.041, 0.042, -0.043, 0.044], "timings.repeat_s[3] is -0.043, not a positive"),
        ("timings", "repeat_s", [0.04, 0.0, 0.042, 0.043, 0.044], "timings.repeat_s[1] is 0.0, not a positive"),
        ("timings", "repeat_s", [], "status 'ok' but timings.repeat_s is empty"),
        ("timings", "repeat_s", None, "status 'ok' but timings.repeat_s is missing"),
        ("timings", "total_s", -1.0, "timings.total_s is -1.0, not a positive number"),
        ("timings", "load_s", 0.0, "timings.load_s is 0.0, not a positive number"),
        ("bandwidth", "gbps_per_repeat", [1.0, -2.0], "bandwidth.gbps_per_repeat[1] is -2.0, not a positive"),
    ],
)
def test_broken_timings_are_refused_even_with_force(tmp_path, section, key, value, needle):
    bad = make_report("compact", FAST)
    if value is None:
        del bad[section][key]
    else:
        bad[section][key] = value
    for force in (False, True):
        with pytest.raises(SpecError) as info:
            _cmp(make_report("none", REF), bad, force=force)
        (msg,) = info.value.messages
        assert msg.startswith("b.json: broken report: ") and needle in msg, msg
        assert msg.endswith("its timings cannot be compared, not even with --force")
    a = write(tmp_path / "a.json", make_report("none", REF))
    b = write(tmp_path / "b.json", bad)
    out = run_cli("compare", str(a), str(b), "--force")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"error: {b}: broken report: ") and needle in line


@pytest.mark.parametrize("value", [None, "nan", "inf"])
def test_null_and_non_finite_timings_are_refused_as_the_file_is_read(tmp_path, value):
    bad = make_report("compact", FAST)
    bad["timings"]["repeat_s"][2] = None if value is None else float(value)
    a = write(tmp_path / "a.json", make_report("none", REF))
    b = tmp_path / "b.json"
    b.write_text(json.dumps(bad))  # NaN and Infinity as Python's json writes them
    out = run_cli("compare", str(a), str(b), "--force")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"error: {b}: malformed report: timings.repeat_s is not a list of finite numbers")
    assert "timings.repeat_s[2] is" in line


def test_a_failed_run_without_timings_is_not_broken_and_can_be_forced():
    failed = make_report("compact", FAST, status="failed")
    del failed["timings"]
    del failed["bandwidth"]
    with pytest.raises(SpecError, match="has status 'failed'"):
        _cmp(make_report("none", REF), failed)
    cmp = _cmp(make_report("none", REF), failed, force=True)
    assert cmp.metrics[0].samples[1].n == 0
