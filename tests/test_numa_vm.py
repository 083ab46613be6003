"""NUMA placement, checked where there really are several NUMA nodes: in QEMU guests (tests/numa_vm/).

This machine (and CI's) has one NUMA node, where every page is on node 0 whatever shmhpc does. So
the module boots two throw-away guests, once each — 2 nodes × 2 CPUs × 1 GiB, and 4 nodes × 2 CPUs
× 256 MiB plus a fifth, memory-only node (as CXL or HBM memory shows up) — under software emulation,
the host's ``/`` shared read-only so each guest runs this repository with this very interpreter.
Each runs one script (topology, plans, a negative control, then every placement policy's runs in
one Python process: tests/numa_vm/guest_runs.py), and the tests below read the files it leaves in a
shared directory. Python is 25–40× slower in a guest: the runs are small, and only placement is
checked, never speed (emulated NUMA has no real distances).

Needs ``bash tests/numa_vm/setup.sh`` once (apt packages and Debian's kernel, ~20 s); without it
the tests skip, except under CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # boots QEMU guests (~1 min each)

ROOT = Path(__file__).resolve().parent.parent
VM_SCRIPTS = ROOT / "tests" / "numa_vm"
NUMAVM_DIR = Path(os.environ.get("NUMAVM_DIR") or "/tmp/shmhpc-numa-vm")
# Boot (~5 s) plus the script (~1 min under TCG on 2 host cores, more on a busy host); killed after this.
VM_TIMEOUT_S = 300
NODE_CPUS = {0: [0, 1], 1: [2, 3]}  # what run-in-vm.sh's defaults give the guest
NODE_CPUS4 = {0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6, 7], 4: []}  # -n 4 -c 2 -x 256: node 4 has memory only
MEMORY_NODE = 4
MIN_FRACTION_ON_NODE = 0.99

# 4,000,000 float32 = 16 MB: ~1,000 pages per worker, so move_pages samples every page.
SPEC = """\
name: numa-{name}
data: {{source: generate, size: 4_000_000, dtype: float32, seed: 0}}
workers: {workers}
threads_per_worker: 1
pinning: {pinning}
numa: {numa}
chunks_per_worker: 2
kernel: sum
repeats: 2
warmup: 0
start_method: {start_method}
timeout_s: 120
"""
STRICT = "verify: strict"


@dataclass(frozen=True)
class Run:
    """One job in a guest: its pinning, workers, ``numa:`` mapping, start method and expected exit status."""

    pinning: str
    numa: str
    workers: int = 4
    start_method: str = "auto"
    rc: int = 0


# 2 nodes × 2 CPUs. compact: ranks 0,1 on node 0 and 2,3 on node 1; scatter: 0,2 and 1,3.
RUNS = {
    "compact": Run("compact", f"{{partition: true, {STRICT}}}", start_method="forkserver"),
    "scatter": Run("scatter", f"{{partition: true, {STRICT}}}", start_method="fork"),
    "unpinned": Run("none", "{partition: false}", start_method="fork"),
    "bind-compact": Run("compact", f"{{placement: bind, {STRICT}}}"),
    "bind-scatter": Run("scatter", f"{{placement: bind, {STRICT}}}"),
    # one process writes everything: only the policy puts the pages where their readers are
    "bind-launcher": Run("compact", f"{{placement: bind, writer: launcher, {STRICT}}}"),
    "interleave": Run("compact", f"{{placement: interleave, {STRICT}}}"),
    # the naive way: the launcher writes the array, nothing places it; strict must refuse the run
    "none-strict": Run("compact", f"{{placement: none, {STRICT}}}", rc=1),
    # after the guest's seccomp filter refuses mbind (the last job): the run goes on, first-touched
    "refused-bind": Run("compact", f"{{placement: bind, {STRICT}}}"),
}
PINNED = ["compact", "scatter"]
# 4 nodes × 2 CPUs + memory-only node 4. compact with 8 workers: two per node; scatter with 4: one per node.
RUNS4 = {
    "compact": Run("compact", f"{{{STRICT}}}", workers=8),
    "scatter": Run("scatter", f"{{{STRICT}}}"),
    "bind-compact": Run("compact", f"{{placement: bind, {STRICT}}}", workers=8),
    "bind-scatter": Run("scatter", f"{{placement: bind, {STRICT}}}"),
    "bind-launcher": Run("scatter", f"{{placement: bind, writer: launcher, {STRICT}}}"),
    "interleave": Run("scatter", f"{{placement: interleave, {STRICT}}}"),
    "bind-memory-node": Run("scatter", f"{{placement: bind, nodes: [{MEMORY_NODE}], {STRICT}}}"),
    "interleave-memory-node": Run("scatter", f"{{placement: interleave, nodes: [3, {MEMORY_NODE}], {STRICT}}}"),
    "none-strict": Run("scatter", f"{{placement: none, {STRICT}}}", rc=1),
    # refused, the owners' first touch leaves each partition on its own node: not even, so only warned
    "refused-interleave": Run("scatter", "{placement: interleave, verify: warn}"),
}
# Jobs whose workers' /proc/<pid>/numa_maps are read while they are alive (guest_runs.py, session API).
MAPS = {"maps-bind-launcher": "bind-launcher", "maps-interleave": "interleave"}
MAPS4 = {"maps-interleave": "interleave", "maps-memory-node": "interleave-memory-node"}
DENY = "refused-"  # jobs from the first one named so run after mbind is refused (seccomp, as in a container)

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


def _jobs(runs: dict[str, Run], maps: dict[str, str]) -> list[dict]:
    """guest_runs.py's job list: the runs, the numa_maps reads, then (mbind refused) the refused runs."""
    jobs: list[dict] = []
    for name in runs:
        if name.startswith(DENY):
            continue
        jobs.append({"name": f"run-{name}", "argv": ["run", f"{name}.yaml", "--report", f"{name}.json", "-q"]})
    jobs += [{"name": name, "numa_maps": f"{run}.yaml"} for name, run in maps.items()]
    jobs.append({"deny": ["mbind"]})
    jobs += [
        {"name": f"run-{name}", "argv": ["run", f"{name}.yaml", "--report", f"{name}.json", "-q"]}
        for name in runs
        if name.startswith(DENY)
    ]
    return jobs


def _guest_script(plans: list[str], negative: bool) -> str:
    """The one script a guest runs (cwd = the share): each step leaves NAME.out, NAME.err, NAME.rc.

    The quick steps run side by side (the host's cores run the guest's vCPUs in parallel; each
    Python start with numpy takes seconds under emulation); then the runs, one at a time, in one
    Python process.
    """
    quick = [
        'step topology "$PY" -m shmhpc topology --json',
        *(f'step plan-{name} "$PY" -m shmhpc plan {name}.yaml --json' for name in plans),
        *(['step negative "$PY" negative_control.py'] if negative else []),
    ]
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
        f'"$PY" {shlex.quote(str(VM_SCRIPTS / "guest_runs.py"))} jobs.json',
        'echo "runs done at $(cut -d" " -f1 /proc/uptime) s of guest uptime"',
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Guest:
    share: Path
    log: str

    def step(self, name: str, rc: int = 0) -> str:
        """A step's stdout; fails the test with its stderr if it did not exit ``rc``."""
        if not (self.share / f"{name}.rc").exists():
            pytest.fail(f"guest step {name} did not finish; the guest's log:\n{self.log}")
        got = (self.share / f"{name}.rc").read_text().strip()
        err = (self.share / f"{name}.err").read_text()
        assert got == str(rc), f"guest step {name} exited {got}, not {rc}:\n{err[-3000:]}"
        return (self.share / f"{name}.out").read_text()

    def json(self, name: str) -> dict:
        return json.loads((self.share / name).read_text())

    def report(self, name: str, rc: int = 0) -> dict:
        """The report of run ``name``, after checking the run exited ``rc``."""
        self.step(f"run-{name}", rc)
        return self.json(f"{name}.json")


def _boot(
    request: pytest.FixtureRequest, share: Path, runs: dict[str, Run], maps: dict[str, str], vm_args: list[str]
) -> Guest:
    reason = _not_ready()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} — under CI this must not skip: .ci/run runs the setup")
        pytest.skip(reason)
    # A guest takes ~1 min (more on a busy host), pyproject's faulthandler_timeout is 120 s: move
    # this test's stack dump past our own bound, so a slow but healthy boot dumps nothing and a
    # stuck one is still dumped after QEMU was killed (pytest re-arms it for the next test).
    if float(request.config.getini("faulthandler_timeout") or 0) > 0 and sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(VM_TIMEOUT_S + 60, file=sys.__stderr__)
    for name, run in runs.items():
        (share / f"{name}.yaml").write_text(
            SPEC.format(
                name=name, pinning=run.pinning, workers=run.workers, numa=run.numa, start_method=run.start_method
            )
        )
    (share / "jobs.json").write_text(json.dumps(_jobs(runs, maps), indent=1))
    env = dict(os.environ, NUMAVM_DIR=str(NUMAVM_DIR))
    # Own session, so that however this ends (timeout, Ctrl-C) QEMU goes down with its launcher.
    proc = subprocess.Popen(
        ["bash", str(VM_SCRIPTS / "run-in-vm.sh"), "-t", str(VM_TIMEOUT_S), *vm_args, str(share)],
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


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Guest:
    """The 2-node guest (run-in-vm.sh's defaults)."""
    share = tmp_path_factory.mktemp("numa-vm")
    (share / "negative_control.py").write_text(NEGATIVE_CONTROL)
    (share / "cmd.sh").write_text(_guest_script(PINNED, negative=True))
    return _boot(request, share, RUNS, MAPS, [])


@pytest.fixture(scope="module")
def guest4(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Guest:
    """The 4-node guest with a fifth, memory-only node."""
    share = tmp_path_factory.mktemp("numa-vm4")
    (share / "cmd.sh").write_text(_guest_script([], negative=False))
    return _boot(request, share, RUNS4, MAPS4, ["-n", "4", "-c", "2", "-m", "256", "-x", "256"])


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


# -- memory policies (numa.placement), 2 nodes ------------------------------------------------------


def _assert_placed(rep: dict, policy: str, applied: bool | None = True) -> dict:
    """The run is ok, its policy held as asked, and every partition passed (≥ 99 % where intended)."""
    assert rep["status"] == "ok" and rep["result"]["verified"], rep.get("error")
    pl = rep["placement"]
    assert pl["policy"] == policy and pl["applied"] is applied, pl
    assert pl["passed"] is True and pl["verify"] == "strict", pl
    for p in pl["partitions"]:
        assert p["sampled"] > 0 and p["fraction_intended"] >= MIN_FRACTION_ON_NODE and p["passed"], p
    return pl


@pytest.mark.parametrize("name", ["compact", "scatter", "bind-compact", "bind-scatter", "bind-launcher"])
def test_first_touch_and_bind_put_every_partition_on_its_readers_node(guest, name):
    rep = guest.report(name)
    policy = "bind" if name.startswith("bind") else "first-touch"
    pl = _assert_placed(rep, policy, applied=True if policy == "bind" else None)
    assert sorted(p["node"] for p in pl["partitions"]) == [0, 1]
    for p in pl["partitions"]:
        assert p["intended_nodes"] == [p["node"]], p
    line = next(x for x in guest.step(f"run-{name}").splitlines() if "placement:" in x)
    assert re.fullmatch(rf"  placement: {policy}(, written by the launcher)?, \d+\.\d % local "
                        r"\(node 0 \d+\.\d %, node 1 \d+\.\d %\)", line), line  # fmt: skip


def test_bind_holds_when_the_launcher_writes_all_the_data(guest):
    rep = guest.report("bind-launcher")
    pl = _assert_placed(rep, "bind")
    assert pl["writer"] == "launcher" and rep["timings"]["launcher_write_s"] > 0
    assert {w["reserved_by"] for w in rep["workers"]} == {"launcher"}


def test_interleave_spreads_pages_evenly_over_the_workers_nodes(guest):
    pl = _assert_placed(guest.report("interleave"), "interleave")
    assert pl["nodes"] == [0, 1]
    for p in pl["partitions"]:
        assert p["intended_nodes"] == [0, 1]
        assert all(abs(share - 0.5) <= 0.05 for share in p["shares"].values()), p


def test_none_with_a_launcher_written_array_is_misplaced_and_strict_fails_it(guest):
    rep = guest.report("none-strict", rc=1)
    assert rep["status"] == "failed" and "numa.verify: strict" in rep["error"], rep.get("error")
    assert "timings" not in rep or not rep["timings"].get("repeat_s"), "strict must stop before the rounds"
    pl = rep["placement"]
    assert pl["policy"] == "none" and pl["writer"] == "launcher" and pl["applied"] is None and pl["passed"] is False
    assert min(p["fraction_intended"] for p in pl["partitions"]) < 0.5, pl  # one writer: one node has it all
    assert "BELOW numa.min_local" in guest.step("run-none-strict", rc=1)


def test_refused_mbind_degrades_to_first_touch_and_says_why(guest):
    rep = guest.report("refused-bind")
    pl = _assert_placed(rep, "bind", applied=False)  # the owners' first touch still placed every page
    assert "EPERM" in pl["reason"] and "seccomp" in pl["reason"], pl
    assert any("bind was not applied" in w for w in rep["warnings"]), rep["warnings"]
    assert "NOT APPLIED" in guest.step("run-refused-bind")


def _numa_maps_agree(maps: dict) -> None:
    """Each worker's sampled page counts agree with the kernel's own count in /proc/<pid>/numa_maps."""
    for w in maps["workers"]:
        sampled = {k: v for k, v in w["sampled"].items() if k.isdigit()}
        listed = w["pages_by_node"]
        assert sum(listed.values()) >= sum(sampled.values()) > 0, w
        for node in set(sampled) | set(listed):
            frac_s = sampled.get(node, 0) / sum(sampled.values())
            frac_l = listed.get(node, 0) / sum(listed.values())
            assert abs(frac_s - frac_l) <= 0.02, (node, w)


@pytest.mark.parametrize(("name", "policy"), [("maps-bind-launcher", "bind"), ("maps-interleave", "interleave")])
def test_sampled_pages_agree_with_numa_maps(guest, name, policy):
    guest.step(name)
    maps = guest.json(f"{name}.json")
    _numa_maps_agree(maps)
    assert maps["placement"]["passed"] is True
    want = {"bind": {"bind:0", "bind:1"}, "interleave": {"interleave:0-1"}}[policy]
    for w in maps["workers"]:
        assert want & set(w["policies"]), w  # the kernel lists the policy on the data's mapping


# -- 4 nodes and a memory-only node ----------------------------------------------------------------


def test_four_node_guest_has_a_memory_only_node(guest4):
    topo = json.loads(guest4.step("topology"))
    nodes = {n["id"]: n for n in topo["nodes"]}
    assert {i: n["cpus"] for i, n in nodes.items()} == NODE_CPUS4
    assert nodes[MEMORY_NODE]["mem_total_bytes"] > 0
    assert topo["numa_distances"]["nodes"] == [0, 1, 2, 3, 4] and len(topo["numa_distances"]["matrix"]) == 5


@pytest.mark.parametrize("name", ["compact", "scatter", "bind-compact", "bind-scatter", "bind-launcher"])
def test_four_nodes_first_touch_and_bind_are_local(guest4, name):
    rep = guest4.report(name)
    policy = "bind" if name.startswith("bind") else "first-touch"
    pl = _assert_placed(rep, policy, applied=True if policy == "bind" else None)
    assert sorted(p["node"] for p in pl["partitions"]) == [0, 1, 2, 3]
    assert all(p["intended_nodes"] == [p["node"]] for p in pl["partitions"])


def test_four_nodes_interleave_is_even(guest4):
    pl = _assert_placed(guest4.report("interleave"), "interleave")
    assert pl["nodes"] == [0, 1, 2, 3]
    for p in pl["partitions"]:
        assert all(abs(share - 0.25) <= 0.05 for share in p["shares"].values()), p


def test_bind_to_the_memory_only_node(guest4):
    rep = guest4.report("bind-memory-node")
    pl = _assert_placed(rep, "bind")
    assert pl["nodes"] == [MEMORY_NODE]
    assert all(p["intended_nodes"] == [MEMORY_NODE] for p in pl["partitions"])
    assert {w["node"] for w in rep["workers"]} == {0, 1, 2, 3}  # workers run on CPU nodes, data is on node 4


def test_interleave_over_a_cpu_node_and_the_memory_only_node(guest4):
    pl = _assert_placed(guest4.report("interleave-memory-node"), "interleave")
    assert pl["nodes"] == [3, MEMORY_NODE]
    for p in pl["partitions"]:
        assert all(abs(share - 0.5) <= 0.05 for share in p["shares"].values()), p


def test_four_nodes_none_strict_fails(guest4):
    rep = guest4.report("none-strict", rc=1)
    assert rep["status"] == "failed" and rep["placement"]["passed"] is False


def test_four_nodes_refused_interleave_is_not_claimed(guest4):
    rep = guest4.report("refused-interleave")
    pl = rep["placement"]
    assert rep["status"] == "ok" and pl["applied"] is False and "EPERM" in pl["reason"], pl
    # not interleaved: the owners' first touch put each partition on its own node — not even, and said so
    assert pl["passed"] is False and all(max(p["shares"].values()) > 0.9 for p in pl["partitions"]), pl
    assert any(w.startswith("placement (interleave) is not as intended") for w in rep["warnings"]), rep["warnings"]


@pytest.mark.parametrize("name", ["maps-interleave", "maps-memory-node"])
def test_four_nodes_sampled_pages_agree_with_numa_maps(guest4, name):
    guest4.step(name)
    maps = guest4.json(f"{name}.json")
    _numa_maps_agree(maps)
    assert maps["placement"]["passed"] is True
