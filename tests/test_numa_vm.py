"""NUMA placement, checked where there really are two NUMA nodes: in a QEMU guest (tests/numa_vm/).

This machine (and CI's) has one NUMA node, where every page is on node 0 whatever shmhpc does. So
the module boots a throw-away guest once — 2 nodes × 2 CPUs × 1 GiB, software emulation, the
host's ``/`` shared read-only so the guest runs this repository with this very interpreter — runs
one script in it (topology, plans, three small runs, a negative control), and the tests below read
the files it leaves in a shared directory. Python is 25–40× slower in the guest: the runs are
small, and only placement is checked, never speed.

Needs ``bash tests/numa_vm/setup.sh`` once (apt packages and Debian's kernel, ~20 s); without it
the tests skip, except under CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # boots a QEMU guest (~1 min)

ROOT = Path(__file__).resolve().parent.parent
VM_SCRIPTS = ROOT / "tests" / "numa_vm"
NUMAVM_DIR = Path(os.environ.get("NUMAVM_DIR") or "/tmp/shmhpc-numa-vm")
# Boot (~5 s) plus the script (~55 s under TCG on 2 host cores, more on a busy host); killed after this.
VM_TIMEOUT_S = 240
NODE_CPUS = {0: [0, 1], 1: [2, 3]}  # what run-in-vm.sh's defaults give the guest
MIN_FRACTION_ON_NODE = 0.99

# 4,000,000 float32 = 16 MB: ~1,000 pages per worker, so move_pages samples every page.
SPEC = """\
name: numa-{name}
data: {{source: generate, size: 4_000_000, dtype: float32, seed: 0}}
workers: 4
threads_per_worker: 1
pinning: {pinning}
numa: {{partition: {partition}}}
chunks_per_worker: 2
kernel: sum
repeats: 2
warmup: 0
start_method: {start_method}
timeout_s: 120
"""
# name -> (pinning, numa.partition, start method); forkserver is the default, fork the other one.
RUNS = {
    "compact": ("compact", "true", "forkserver"),
    "scatter": ("scatter", "true", "fork"),
    "unpinned": ("none", "false", "fork"),
}
PINNED = ["compact", "scatter"]

# Runs in the guest: what a user's mistake would do — the launcher (pinned to node 0) touches the
# whole array itself — so the half meant for node 1 lands on node 0. The report's check must see it.
NEGATIVE_CONTROL = """\
import json, os
from shmhpc.numa import page_nodes
from shmhpc.shm import Segment
from shmhpc.topology import read_topology

topo = read_topology()
os.sched_setaffinity(0, topo.nodes[0].cpus)
size = 8 << 20
with Segment.create(size) as seg:
    seg.reserve(0, size)  # first touch of everything, from node 0
    half = size // 2
    print(json.dumps({"node0_half": page_nodes(seg.address(), half),
                      "node1_half": page_nodes(seg.address() + half, size - half)}))
"""


def _not_ready() -> str | None:
    """Why the guest cannot boot here (run-in-vm.sh --check says what is missing), or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the NUMA test VM needs a Linux x86_64 host (this is {platform.system()} {platform.machine()})"
    if shutil.which("bash") is None:
        return "the NUMA test VM needs bash"
    check = subprocess.run(
        ["bash", str(VM_SCRIPTS / "run-in-vm.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, NUMAVM_DIR=str(NUMAVM_DIR)),
    )
    if check.returncode != 0:
        return f"the NUMA test VM is not set up (NUMAVM_DIR={NUMAVM_DIR}): {check.stderr.strip()}"
    return None


def _guest_script() -> str:
    """The one script the guest runs (cwd = the share): each step leaves NAME.out, NAME.err, NAME.rc.

    The quick steps run side by side (the host's cores run the guest's vCPUs in parallel; each
    Python start with numpy takes seconds under emulation); the runs go one at a time.
    """
    quick = [
        'step topology "$PY" -m shmhpc topology --json',
        *(f'step plan-{name} "$PY" -m shmhpc plan {name}.yaml --json' for name in PINNED),
        'step negative "$PY" negative_control.py',
    ]
    runs = [f'step run-{name} "$PY" -m shmhpc run {name}.yaml --report {name}.json -q' for name in RUNS]
    lines = [
        "# written by tests/test_numa_vm.py; runs inside the guest with the share as cwd",
        f"export PYTHONPATH={shlex.quote(str(ROOT))} PYTHONDONTWRITEBYTECODE=1",
        f"PY={shlex.quote(sys.executable)}",
        "step() {",
        '    name=$1; shift; "$@" > "$name.out" 2> "$name.err"; rc=$?; echo $rc > "$name.rc"',
        '    echo "$name: exit $rc at $(cut -d" " -f1 /proc/uptime) s of guest uptime"',
        "}",
        *(f"{cmd} &" for cmd in quick),
        "wait",
        *runs,
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Guest:
    share: Path
    log: str

    def step(self, name: str) -> str:
        """A step's stdout; fails the test with its stderr if it did not exit 0."""
        if not (self.share / f"{name}.rc").exists():
            pytest.fail(f"guest step {name} did not finish; the guest's log:\n{self.log}")
        rc = (self.share / f"{name}.rc").read_text().strip()
        err = (self.share / f"{name}.err").read_text()
        assert rc == "0", f"guest step {name} exited {rc}:\n{err[-3000:]}"
        return (self.share / f"{name}.out").read_text()

    def json(self, name: str) -> dict:
        return json.loads((self.share / name).read_text())


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Guest:
    reason = _not_ready()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} — under CI this must not skip: .ci/run runs the setup")
        pytest.skip(reason)
    # The guest takes ~1 min (more on a busy host), pyproject's faulthandler_timeout is 120 s: move
    # this test's stack dump past our own bound, so a slow but healthy boot dumps nothing and a
    # stuck one is still dumped after QEMU was killed (pytest re-arms it for the next test).
    if float(request.config.getini("faulthandler_timeout") or 0) > 0 and sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(VM_TIMEOUT_S + 60, file=sys.__stderr__)
    share = tmp_path_factory.mktemp("numa-vm")
    for name, (pinning, partition, start_method) in RUNS.items():
        (share / f"{name}.yaml").write_text(
            SPEC.format(name=name, pinning=pinning, partition=partition, start_method=start_method)
        )
    (share / "negative_control.py").write_text(NEGATIVE_CONTROL)
    (share / "cmd.sh").write_text(_guest_script())
    env = dict(os.environ, NUMAVM_DIR=str(NUMAVM_DIR))
    # Own session, so that however this ends (timeout, Ctrl-C) QEMU goes down with its launcher.
    proc = subprocess.Popen(
        ["bash", str(VM_SCRIPTS / "run-in-vm.sh"), "-t", str(VM_TIMEOUT_S), str(share)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=VM_TIMEOUT_S + 30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    out = (share / "out.txt").read_text() if (share / "out.txt").exists() else ""
    if proc.returncode != 0:
        pytest.fail(f"the guest run failed (exit {proc.returncode}, files in {share}):\n{log}\n{out[-3000:]}")
    return Guest(share, f"{log}{out}")


def _cpu_nodes(topology: dict) -> dict[int, int]:
    return {c["id"]: c["node"] for c in topology["cpus"]}


def test_guest_sees_two_numa_nodes_with_two_cpus_each(guest):
    topo = json.loads(guest.step("topology"))
    assert {n["id"]: n["cpus"] for n in topo["nodes"]} == NODE_CPUS
    assert topo["usable"] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", PINNED)
def test_plan_gives_one_page_aligned_partition_per_node(guest, name):
    plan = json.loads(guest.step(f"plan-{name}"))
    parts = plan["partitions"]
    assert sorted(p["node"] for p in parts) == [0, 1]
    assert parts[0]["start"] == 0 and parts[0]["stop"] == parts[1]["start"] and parts[1]["stop"] == plan["n_rows"]
    assert (parts[0]["stop"] * plan["row_bytes"]) % 4096 == 0, "a page would straddle the two partitions"
    workers = {w["rank"]: w for w in plan["workers"]}
    for p in parts:
        for r in p["ranks"]:
            w = workers[r]
            assert w["node"] == p["node"] and all(c in NODE_CPUS[p["node"]] for c in w["cpus"])
            assert p["start"] <= w["rows"][0] < w["rows"][1] <= p["stop"]
    # compact fills node 0 first; scatter deals workers out node by node.
    expected = {"compact": [[0, 1], [2, 3]], "scatter": [[0, 2], [1, 3]]}[name]
    assert [sorted(p["ranks"]) for p in sorted(parts, key=lambda p: p["node"])] == expected


@pytest.mark.parametrize("name", PINNED)
def test_pinned_workers_run_on_their_planned_node(guest, name):
    guest.step(f"run-{name}")
    rep = guest.json(f"{name}.json")
    assert rep["status"] == "ok" and rep["result"]["verified"]
    assert rep["plan"]["partitions"] == json.loads(guest.step(f"plan-{name}"))["partitions"]
    node_of = _cpu_nodes(rep["topology"])
    planned = {w["rank"]: w["node"] for w in rep["plan"]["workers"]}
    assert len(rep["workers"]) == 4
    for w in rep["workers"]:
        assert w["cpus_observed"] == w["cpus_requested"], w
        assert {node_of[c] for c in w["cpus_observed"]} == {planned[w["rank"]]} == {w["node"]}, w
        assert set(w["cpus_ran_on"]) <= set(w["cpus_requested"]), w


@pytest.mark.parametrize("name", PINNED)
def test_first_touch_puts_each_partition_on_its_node(guest, name):
    guest.step(f"run-{name}")
    rep = guest.json(f"{name}.json")
    parts = rep["pages"]["partitions"]
    assert sorted(p["node"] for p in parts) == [0, 1]
    for p in parts:
        assert sum(p["sampled_pages_by_node"].values()) > 0, p
        assert p["fraction_on_node"] >= MIN_FRACTION_ON_NODE, p
    # ... and each worker's own rows too (sampled by that worker).
    for w in rep["workers"]:
        pages = w["pages"]
        assert pages.get(str(w["node"]), 0) >= MIN_FRACTION_ON_NODE * sum(pages.values()), w


def test_unpinned_unpartitioned_run_still_reports_its_pages(guest):
    guest.step("run-unpinned")
    rep = guest.json("unpinned.json")
    assert rep["status"] == "ok" and rep["result"]["verified"]
    assert all(w["cpus_observed"] == [0, 1, 2, 3] for w in rep["workers"])
    (part,) = rep["pages"]["partitions"]  # one partition, on no node in particular
    assert part["node"] is None and part["fraction_on_node"] is None
    counts = part["sampled_pages_by_node"]
    assert set(counts) <= {"0", "1"} and sum(counts.values()) > 0, counts


def test_negative_control_wrong_first_touch_is_visible(guest):
    """Touched by a process on node 0, the half meant for node 1 is on node 0: the check can fail."""
    got = json.loads(guest.step("negative"))
    for half in ("node0_half", "node1_half"):
        counts = got[half]
        assert counts.get("0", 0) >= MIN_FRACTION_ON_NODE * sum(counts.values()) > 0, got
    node1 = got["node1_half"]
    assert node1.get("1", 0) / sum(node1.values()) < MIN_FRACTION_ON_NODE, got
