"""sweep: axes and combinations, a small real sweep through the CLI, progress, and interrupts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import load_json, run_cli, run_in_pty, start_cli, write_spec
from fakesys import two_socket_smt

from shmhpc.errors import SpecError
from shmhpc.sweep import _slug, combinations, parse_vary

USABLE = len(os.sched_getaffinity(0))

SLOW_KERNEL = """
import time
import numpy as np

def slow(chunk):
    time.sleep(0.1)
    return float(np.sum(chunk, dtype=np.float64))
"""


def tiny_spec(tmp_path: Path, **fields) -> Path:
    body = {
        "name": "tiny",
        "data": "{source: generate, size: 200000, dtype: float32, seed: 1}",
        "workers": 1,
        "repeats": 2,
        "warmup": 1,
        "start_method": "forkserver",
    }
    body.update(fields)
    return write_spec(tmp_path / "tiny.yaml", "\n".join(f"{k}: {v}" for k, v in body.items()) + "\n")


# -- axes ------------------------------------------------------------------------------------------


def test_parse_vary_splits_outside_brackets_and_quotes():
    axes = parse_vary(["pinning=none,compact,[[0],[1]]", "numa.partition=true,false", "kernel='a,b',sum"])
    assert axes == [
        ("pinning", ["none", "compact", "[[0],[1]]"]),
        ("numa.partition", ["true", "false"]),
        ("kernel", ["'a,b'", "sum"]),
    ]


def test_combinations_are_the_cartesian_product_first_axis_slowest():
    combos = combinations(parse_vary(["pinning=none,compact", "workers=1,2,4"]))
    assert len(combos) == 6
    assert combos[0] == ["pinning=none", "workers=1"] and combos[1] == ["pinning=none", "workers=2"]
    assert combos[-1] == ["pinning=compact", "workers=4"]
    assert _slug(["pinning=[[0],[1]]", "numa.partition=true"]) == "pinning-0_1_numa.partition-true"


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        (["workers"], "is not key=v1,v2"),
        (["=1,2"], "is not key=v1,v2"),
        (["workers=1,,2"], "empty value"),
        (["workers=1", "workers=2"], "given twice"),
        ([], "nothing to vary"),
    ],
)
def test_bad_vary_items(items, needle):
    with pytest.raises(SpecError, match=needle):
        parse_vary(items)


def test_values_the_spec_refuses_stop_the_sweep_before_it_starts(tmp_path):
    out = run_cli(
        "sweep",
        str(tiny_spec(tmp_path)),
        "--vary",
        "workers=1,0",
        "--vary",
        "pinnig=none",
        "--out",
        str(tmp_path / "sw"),
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert "error: --vary workers=0 pinnig=none: " in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "sw").exists()


def test_every_combination_impossible_is_bad_input(tmp_path):
    out = run_cli(
        "sweep",
        str(tiny_spec(tmp_path)),
        "--vary",
        f"workers={USABLE + 1},{USABLE + 2}",
        "--out",
        str(tmp_path / "sw"),
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "every combination is impossible on this machine" in out.stderr
    assert load_json(tmp_path / "sw" / "sweep.json")["runs"][0]["status"] == "skipped"


def test_sweep_plans_against_the_sysfs_root_it_is_given(tmp_path):
    """--sysfs-root: combinations are planned for that machine (16 CPUs), whatever this one has."""
    tree = two_socket_smt(tmp_path / "sysfs")
    out = run_cli(
        "sweep",
        str(tiny_spec(tmp_path)),
        "--vary",
        "workers=17,32",
        "--sysfs-root",
        str(tree),
        "--out",
        str(tmp_path / "sw"),
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    runs = load_json(tmp_path / "sw" / "sweep.json")["runs"]
    assert [r["status"] for r in runs] == ["skipped", "skipped"]
    for r, w in zip(runs, (17, 32)):
        assert f"need {w} CPUs but only 16 are usable (0-15," in r["reason"], r
    assert "need 17 CPUs but only 16 are usable" in out.stderr


def test_sweep_plans_and_runs_within_allowed_cpus(tmp_path, no_leak):
    """--allowed-cpus: one CPU allowed, so workers=2 is skipped and workers=1 runs pinned to that CPU."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    out_dir = tmp_path / "sw"
    out = run_cli(
        "sweep",
        str(tiny_spec(tmp_path, pinning="compact")),
        "--vary",
        "workers=1,2",
        "--allowed-cpus",
        str(cpu),
        "--out",
        str(out_dir),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    one, two = load_json(out_dir / "sweep.json")["runs"]
    assert one["status"] == "ok", one
    assert two["status"] == "skipped" and f"need 2 CPUs but only 1 is usable ({cpu}," in two["reason"], two
    assert f"only 1 is usable ({cpu}," in out.stdout  # the summary table gives the reason
    rep = load_json(out_dir / one["report"])
    assert rep["topology"]["usable"] == [cpu]
    assert [w["cpus_observed"] for w in rep["workers"]] == [[cpu]]


# -- a real sweep, end to end -------------------------------------------------------------------


@pytest.mark.slow
def test_small_real_sweep_through_the_cli(tmp_path, no_leak):
    spec = tiny_spec(tmp_path)
    out_dir = tmp_path / "sw"
    out = run_cli(
        "sweep",
        str(spec),
        "--vary",
        "pinning=none,compact",
        "--vary",
        "workers=1,2,3",
        "--out",
        str(out_dir),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = load_json(out_dir / "sweep.json")
    assert summary["kind"] == "shmhpc-sweep" and summary["version"] == 1 and summary["status"] == "ok"
    assert summary["vary"] == [
        {"key": "pinning", "values": ["none", "compact"]},
        {"key": "workers", "values": ["1", "2", "3"]},
    ]
    runs = summary["runs"]
    assert [r["overrides"] for r in runs][:2] == [["pinning=none", "workers=1"], ["pinning=none", "workers=2"]]
    for r in runs:
        w = r["values"]["workers"]
        if w <= USABLE:
            assert r["status"] == "ok", r
            rep = load_json(out_dir / r["report"])
            assert rep["status"] == "ok" and len(rep["workers"]) == w
            assert rep["plan"]["policy"] == r["values"]["pinning"] == r["pinning"]
            assert r["median_repeat_s"] == rep["timings"]["repeat"]["median"]
            assert r["median_gbps"] == rep["bandwidth"]["gbps"]["median"]
        else:
            assert r["status"] == "skipped" and r["report"] is None
            assert f"need {w} CPUs but only {USABLE}" in r["reason"]
    n_ok = sum(r["status"] == "ok" for r in runs)
    assert len(list(out_dir.glob("0*.json"))) == n_ok
    md = (out_dir / "sweep.md").read_text()
    assert "| # | pinning | workers | status | median repeat | median GB/s | pages placed | report / reason |" in md
    assert md.count("| skipped |") == len(runs) - n_ok
    # progress without a terminal: one plain line per finished or skipped run
    for i in range(1, len(runs) + 1):
        assert f"[sweep {i}/{len(runs)}] " in out.stderr
    assert "\r" not in out.stderr
    assert "summary: " in out.stdout

    # the reports feed compare and plot as they are
    cmp = run_cli("compare", str(out_dir), cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stderr
    assert "[none w=1]" in cmp.stdout and "unpinned: workers could run on" in cmp.stdout
    png = tmp_path / "sweep.png"
    plot = run_cli("plot", str(out_dir), "-o", str(png), cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_cli("sweep", str(spec), "--vary", "workers=1", "--out", str(out_dir), cwd=tmp_path)
    assert again.returncode == 2 and "already holds a sweep" in again.stderr


def test_live_progress_line_on_a_tty(tmp_path, no_leak):
    spec = tiny_spec(tmp_path)
    rc, text = run_in_pty(["sweep", str(spec), "--vary", "data.seed=1,2", "--out", str(tmp_path / "sw")], cwd=tmp_path)
    assert rc == 0
    assert "\rsweep [" in text and "2/2  data.seed=2" in text and "repeat 2/2" in text
    assert "[sweep 2/2] data.seed=2: ok" in text


def _first_run_ok(summary: Path) -> bool:
    try:
        return load_json(summary)["runs"][0]["status"] == "ok"
    except FileNotFoundError:  # not written yet (it is replaced atomically, never read half-written)
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_finished_reports_and_the_summary(tmp_path, signum, no_leak):
    (tmp_path / "slowk.py").write_text(SLOW_KERNEL)
    spec = tiny_spec(tmp_path, kernel="slowk:slow", chunks_per_worker=1, repeats=3, warmup=0)
    out_dir = tmp_path / "sw"
    proc = start_cli("sweep", str(spec), "--vary", "data.seed=1,2,3,4,5,6", "--out", str(out_dir), cwd=tmp_path)
    try:
        # Once the summary counts the first run ok, the sweep is past it (its report is written before
        # the summary): the signal lands in the second run or between runs.
        deadline = time.monotonic() + 60
        while not _first_run_ok(out_dir / "sweep.json"):
            assert proc.poll() is None and time.monotonic() < deadline, "the first run never finished"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "sweep interrupted" in err
    summary = load_json(out_dir / "sweep.json")
    assert summary["status"] == "interrupted" and summary["finished_at"]
    statuses = [r["status"] for r in summary["runs"]]
    assert statuses[0] == "ok"
    stop = next(i for i, s in enumerate(statuses) if s != "ok")
    assert statuses[stop] in ("interrupted", "not run")
    assert all(s == "not run" for s in statuses[stop + 1 :]) and statuses[-1] == "not run"
    for r in summary["runs"][:stop]:
        assert load_json(out_dir / r["report"])["status"] == "ok"
    if statuses[stop] == "interrupted":
        rep = load_json(out_dir / summary["runs"][stop]["report"])
        assert rep["status"] == "interrupted" and signal.Signals(signum).name in rep["error"]
    assert "interrupted" in (out_dir / "sweep.md").read_text()
