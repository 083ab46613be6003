"""``shmhpc bench``: STREAM kernels in shmhpc's own pinned pool, counted as STREAM counts, validated, saved
per host, and the share of that ceiling in every run's report. No speed is asserted (benchmarks/ does that)."""

from __future__ import annotations

import json

import pytest
from conftest import TWO, USABLE, load_json, run_cli, small_spec

from shmhpc.bench import KERNELS, _expected, _stats, ceiling_for, parse_size
from shmhpc.errors import SpecError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("64M", 64 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("512KB", 512 << 10), ("1e8", 10**8)],
)
def test_sizes_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12Q", "", "-1M", "1", "2000T", "9" * 5000])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(SpecError) as err:
        parse_size(text)
    (msg,) = err.value.messages
    assert msg.startswith("--size: ") and len(msg) < 200


def test_bytes_are_counted_as_stream_does_and_write_allocate_separately():
    n = 1000
    counted = {
        k: (_stats(n, k, [2.0, 1.0, 1.5])["bytes"], _stats(n, k, [2.0, 1.0])["bytes_write_allocate"]) for k in KERNELS
    }
    assert counted == {
        "read": (8000, 8000),
        "copy": (16000, 24000),
        "scale": (16000, 24000),
        "add": (24000, 32000),
        "triad": (24000, 32000),
    }
    s = _stats(n, "copy", [0.5, 2.0, 1.0, 4.0])  # the first (fastest here) is discarded
    assert s["min_s"] == 1.0 and s["best_gbps"] == 16000 / 1.0 / 1e9 and s["max_s"] == 4.0 and s["spread"] == 3.0


def test_the_validation_recurrence_is_streams():
    a, b, c = _expected(1)
    assert (a, b, c) == (3.0 * 1.0 + 3.0 * 4.0, 3.0, 4.0)  # c=a=1; b=3c=3; c=a+b=4; a=b+3c=15


def test_the_ceiling_for_a_run_is_its_worker_count_or_the_largest_below():
    bench = {"runs": [{"workers": w, "kernels": {"read": {"best_gbps": 10.0 * w}}} for w in (1, 2, 4)]}
    assert ceiling_for(2, bench)["gbps"] == 20.0
    assert ceiling_for(3, bench)["workers"] == 2
    assert ceiling_for(16, bench)["gbps"] == 40.0
    assert ceiling_for(0, bench) is None and ceiling_for(2, None) is None


def test_bench_measures_validates_and_pins(tmp_path, no_leak):
    counts = "1-2" if TWO else "1"
    out = run_cli("bench", "--size", "4M", "--workers", counts, "--iterations", "3", "--json", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["kind"] == "shmhpc-bench" and res["array_bytes"] == 4 << 20 and res["iterations"] == 3
    n = res["array_bytes"] // 8
    assert [r["workers"] for r in res["runs"]] == ([1, 2] if TWO else [1])
    for run in res["runs"]:
        assert "equal STREAM's recurrence after 3 iterations" in run["validated"]
        assert sorted(run["kernels"]) == sorted(KERNELS)
        for k, s in run["kernels"].items():
            assert s["bytes"] == KERNELS[k][0] * n and len(s["seconds"]) == 3 and s["best_gbps"] > 0
        assert run["cpus"] == [[c] for c in USABLE[: run["workers"]]]  # compact: one CPU each, in order


def test_saved_ceiling_is_in_every_run_report_and_summary(tmp_path, no_leak):
    env = {"SHMHPC_CEILING_DIR": str(tmp_path / "ceil")}
    out = run_cli("bench", "--size", "4M", "--workers", "1", "--iterations", "3", "--save", "-q", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "saved: " in out.stdout, out.stderr
    (saved,) = (tmp_path / "ceil").glob("ceiling-*.json")
    read_best = load_json(saved)["runs"][0]["kernels"]["read"]["best_gbps"]
    spec = small_spec(tmp_path, workers=1)
    out = run_cli("run", str(spec), "-q", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    bw = load_json(tmp_path / "reports" / "t.json")["bandwidth"]
    assert bw["ceiling_gbps"] == read_best and bw["ceiling"]["workers"] == 1 and bw["ceiling"]["kernel"] == "read"
    assert "of this machine's measured ceiling (" in out.stdout and "bench read, 1 worker)" in out.stdout


def test_without_a_saved_ceiling_runs_say_nothing_of_it(tmp_path, no_leak):
    out = run_cli("run", str(small_spec(tmp_path)), "-q", cwd=tmp_path, env={"SHMHPC_CEILING_DIR": str(tmp_path)})
    assert out.returncode == 0 and "measured ceiling" not in out.stdout
    assert load_json(tmp_path / "reports" / "t.json")["bandwidth"]["ceiling_gbps"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "12Q"], "error: --size: '12Q' is not a size"),
        (["--workers", "0"], "error: --workers: '0'; allowed: worker counts from 1"),
        (["--workers", "x"], "error: --workers: "),
        (["--iterations", "1"], "error: --iterations: 1; allowed: 2 or more"),
    ],
)
def test_bad_bench_arguments_are_one_line_errors(tmp_path, args, message, no_leak):
    out = run_cli("bench", *args, "-q", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
