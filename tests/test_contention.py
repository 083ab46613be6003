"""Was a run alone on its CPUs? The /proc/stat arithmetic, then real neighbours: a busy loop, another run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import load_json, run_cli, start_cli, write_spec

from shmhpc.contention import (
    FOREIGN_THRESHOLD,
    ContentionProbe,
    contention_warnings,
    load_fractions,
    other_runs,
    parse_proc_stat,
)
from shmhpc.shm import default_shm_dir, parse_segment_name

USABLE = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(not {0, 1} <= set(USABLE), reason="needs CPUs 0 and 1")

STAT = """cpu  {a} 0 0 0 0 0 0 0 0 0
cpu0 {c0} 1 2 {i0} 4 5 6 7 100 100
cpu1 {c1} 0 0 {i1} 0 0 0 0
intr 12345 0 0 1
ctxt 999
"""


def stat(c0: int, c1: int, i0: int = 0, i1: int = 0) -> str:
    return STAT.format(a=c0 + c1, c0=c0, c1=c1, i0=i0, i1=i1)


# -- the arithmetic, on given texts ----------------------------------------------------------


def test_proc_stat_parser_counts_busy_and_idle_columns():
    got = parse_proc_stat(stat(10, 20, i0=30, i1=40) + "cpu2 1 2 3\n")
    # cpu0: user 10 + nice 1 + system 2 + irq 5 + softirq 6 + steal 7; idle 30 + iowait 4; guest not twice
    assert got[0] == (31, 34)
    assert got[1] == (20, 40)
    assert got[2] == (6, 0), "an old kernel's short line still parses"
    assert set(got) == {0, 1, 2}, "the aggregate 'cpu' line and other counters are not CPUs"


def test_fractions_split_busy_time_into_ours_and_foreign():
    # 1 s window, 10 ms ticks: CPU 0 was busy all of it, CPU 1 half; each worker used 0.5 s.
    out = load_fractions(stat(0, 0), stat(100, 50), 1.0, [((0,), 0.5), ((1,), 0.5)], tick_s=0.01)
    assert out["cpus"] == [0, 1] and out["judged"] is True
    assert out["busy_fraction"] == pytest.approx(0.75)
    assert out["own_fraction"] == pytest.approx(0.5)
    assert out["foreign_fraction"] == pytest.approx(0.25)
    by = {tuple(g["cpus"]): g for g in out["by_cpus"]}
    assert by[(0,)]["foreign_fraction"] == pytest.approx(0.5) and by[(0,)]["significant"]
    assert by[(1,)]["foreign_fraction"] == 0.0
    lines = contention_warnings(out)
    assert lines == [
        "CPU 0 was 50 % busy with other work during the warmup and repeats: the timings were not measured alone"
    ]


def test_launcher_time_is_never_counted_as_foreign():
    # Without the launcher's 0.6 s, each CPU would look 30 % foreign.
    out = load_fractions(stat(0, 0), stat(100, 100), 1.0, [((0,), 0.7), ((1,), 0.7)], launcher_s=0.6, tick_s=0.01)
    assert out["foreign_fraction"] == pytest.approx(0.0, abs=1e-9)
    assert all(g["foreign_fraction"] == 0.0 for g in out["by_cpus"])
    assert contention_warnings(out) == []


def test_unpinned_workers_share_one_group_and_fractions_stay_in_range():
    # Unpinned workers may run on every CPU: their time cannot be split per CPU.
    out = load_fractions(stat(0, 0), stat(100, 100), 1.0, [((0, 1), 1.5), ((0, 1), 1.5)], tick_s=0.01)
    assert [g["cpus"] for g in out["by_cpus"]] == [[0, 1]]
    assert out["own_fraction"] == 1.0 and out["foreign_fraction"] == 0.0, "clamped: ticks and CPU times round apart"


def test_short_window_is_recorded_but_not_judged():
    out = load_fractions(stat(0, 0), stat(10, 0), 0.1, [((0,), 0.0), ((1,), 0.0)], tick_s=0.01)
    assert out["foreign_fraction"] == pytest.approx(0.5) and out["judged"] is False
    assert "too short" in out["note"]
    assert contention_warnings(out) == []


def test_tick_rounding_alone_is_not_significant():
    # 4 foreign ticks on a 0.2 s window are 20 %, but within what rounding of four samples can make.
    out = load_fractions(stat(0, 0), stat(20, 0), 0.2, [((0,), 0.16)], tick_s=0.01)
    assert out["judged"] and out["by_cpus"][0]["foreign_fraction"] > FOREIGN_THRESHOLD
    assert contention_warnings(out) == []


def test_cpus_missing_from_proc_stat_give_no_numbers_and_no_error():
    out = load_fractions(stat(0, 0), stat(10, 10), 1.0, [((5,), 0.0)], tick_s=0.01)
    assert out["foreign_fraction"] is None and out["judged"] is False and "5" in out["note"]


def test_warning_names_the_other_run_and_the_shared_cpus():
    section = {
        "other_runs": [
            {"pid": 1234, "uid": 0, "slurm_job": 17, "cpus": [0, 1, 2], "overlap": [0, 1]},
            {"pid": 99, "uid": 5, "slurm_job": 0, "cpus": [3], "overlap": []},
        ]
    }
    assert contention_warnings(section) == [
        "another shmhpc run (pid 1234, uid 0, Slurm job 17) uses CPUs 0-1, which this run also uses: "
        "the timings were not measured alone"
    ]


# -- probes on real processes, in a directory of our own --------------------------------------

PARENT_OF_PINNED = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import os, time; os.sched_setaffinity(0, {%d}); time.sleep(60)"])
print("ready", flush=True)
child.wait()
"""


@needs_two
def test_other_runs_reads_the_cpus_of_a_launchers_children(tmp_path):
    """A live launcher's workers' affinity is its CPUs; dead, own and foreign names are skipped."""
    proc = subprocess.Popen([sys.executable, "-c", PARENT_OF_PINNED % 1], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while not any(c.cpu_affinity() == [1] for c in psutil.Process(proc.pid).children()):
            assert time.monotonic() < deadline, "the child never pinned itself"
            time.sleep(0.02)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        for pid in (proc.pid, int(dead.stdout), os.getpid()):
            (tmp_path / f"shmhpc-u{os.getuid()}-p{pid}-j17-{'ab' * 8}").touch()
        (tmp_path / "not-ours").touch()
        found = other_runs(str(tmp_path), [0, 1])
    finally:
        for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
            p.kill()
        proc.communicate()
    assert found == [{"pid": proc.pid, "uid": os.getuid(), "slurm_job": 17, "cpus": [1], "overlap": [1]}]


def test_probe_errors_become_notes(tmp_path):
    probe = ContentionProbe([(USABLE[0],)], str(tmp_path / "missing"), proc_root=str(tmp_path))
    probe.check_others()
    probe.start([os.getpid()])
    probe.stop()
    section, lines = probe.result()
    assert lines == [] and section["judged"] is False and section["foreign_fraction"] is None
    assert len(section["notes"]) == 2 and section["other_runs"] == []


# -- end to end: real runs beside real neighbours ------------------------------------------------

# Spins a fixed amount of CPU time per chunk, so each round lasts ~0.1 s alone and ~0.2 s on a shared CPU.
SPIN = """
import time

def spin(chunk):
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    return float(chunk.sum(dtype="float64"))

def slow(chunk):
    time.sleep(0.2)
    return float(chunk.sum(dtype="float64"))
"""


def spin_spec(tmp_path: Path, name: str, kernel: str = "k:spin", repeats: int = 10) -> Path:
    (tmp_path / "k.py").write_text(SPIN)
    return write_spec(
        tmp_path / f"{name}.yaml",
        f"name: {name}\ndata: {{source: generate, size: 200000, dtype: float64, seed: 1}}\nworkers: 2\n"
        f"pinning: compact\nchunks_per_worker: 1\nkernel: {kernel}\nrepeats: {repeats}\nwarmup: 1\n"
        f"report: {tmp_path}/reports/{{name}}.json\n",
    )


def _live_other_segments() -> set[int]:
    """Launcher pids of other shmhpc runs alive now (a shared machine may have some)."""
    d = default_shm_dir()
    owners = [parse_segment_name(n) for n in os.listdir(d)]
    return {o.pid for o in owners if o is not None and os.path.exists(f"/proc/{o.pid}")}


@pytest.mark.slow
@needs_two
def test_a_busy_loop_on_cpu_0_is_reported(tmp_path, no_leak):
    hog = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        deadline = time.monotonic() + 10
        spinning = psutil.Process(hog.pid)
        while not (spinning.cpu_affinity() == [0] and spinning.cpu_times().user > 0.05):
            assert hog.poll() is None and time.monotonic() < deadline, "the busy loop never started on CPU 0"
            time.sleep(0.02)
        out = run_cli("run", str(spin_spec(tmp_path, "busy")), cwd=tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert out.returncode == 0, out.stdout + out.stderr
    rep = load_json(tmp_path / "reports" / "busy.json")
    c = rep["contention"]
    assert c["judged"] is True and c["window_s"] > 1.0
    assert c["foreign_fraction"] > FOREIGN_THRESHOLD
    cpu0 = next(g for g in c["by_cpus"] if g["cpus"] == [0])
    assert cpu0["foreign_fraction"] > 0.3, c
    warning = next(w for w in rep["warnings"] if w.startswith("CPU 0 was"))
    assert "busy with other work" in warning and "not measured alone" in warning
    assert f"warning: {warning}" in out.stdout


@pytest.mark.slow
@needs_two
def test_two_runs_on_the_same_cpus_see_each_other(tmp_path, no_leak):
    first = start_cli("run", str(spin_spec(tmp_path, "first", "k:slow", repeats=200)), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not any(f"-p{first.pid}-" in n for n in os.listdir(default_shm_dir())):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never made its segment"
            time.sleep(0.05)
        out = run_cli("run", str(spin_spec(tmp_path, "second", repeats=3)), cwd=tmp_path)
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.communicate(timeout=30)
        finally:
            first.kill()
    assert out.returncode == 0, out.stdout + out.stderr
    rep = load_json(tmp_path / "reports" / "second.json")
    seen = {r["pid"]: r for r in rep["contention"]["other_runs"]}
    assert first.pid in seen, rep["contention"]
    assert seen[first.pid]["uid"] == os.getuid() and seen[first.pid]["overlap"]
    assert set(seen[first.pid]["overlap"]) <= {0, 1} <= set(seen[first.pid]["cpus"])
    assert any(f"another shmhpc run (pid {first.pid}," in w for w in rep["warnings"])
    assert f"another shmhpc run (pid {first.pid}," in out.stdout


def test_a_run_alone_reports_the_fields_and_no_other_run(tmp_path, no_leak):
    """The machine is shared: only what another run cannot change is asserted about load."""
    others_before = _live_other_segments()
    out = run_cli("run", str(spin_spec(tmp_path, "alone", repeats=3)), cwd=tmp_path)
    others_after = _live_other_segments()
    assert out.returncode == 0, out.stdout + out.stderr
    rep = load_json(tmp_path / "reports" / "alone.json")
    c = rep["contention"]
    assert c["method"] and c["cpus"] == sorted({x for w in rep["workers"] for x in w["cpus_requested"]})
    assert isinstance(c["judged"], bool) and c["window_s"] > 0
    for key in ("busy_fraction", "own_fraction", "foreign_fraction"):
        assert 0.0 <= c[key] <= 1.0
    assert c["own_fraction"] > 0.3, "the spinning workers' own time is counted as theirs"
    pids = {r["pid"] for r in c["other_runs"]}
    assert not pids & {os.getpid(), *(w["pid"] for w in rep["workers"])}
    if not (others_before or others_after):  # nobody else's run was alive around ours
        assert c["other_runs"] == []
        assert not any("another shmhpc run" in w for w in rep["warnings"])
