"""NUMA memory policies (``numa.placement``) on this machine: planning the mbind ranges, judging sampled
pages, the report and summary, refusals, and real runs.

This machine has one NUMA node, so here every policy lands on node 0: the tests check the mechanics
(ranges, real ``mbind``/``get_mempolicy`` calls on a real segment, a real seccomp refusal, the report,
``strict``). Where pages go on 2 and 4 nodes is checked in QEMU guests: tests/test_numa_vm.py.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, load_json, run_cli, small_spec
from fakesys import memory_only_node, two_socket_smt

from shmhpc.numa import MPOL_BIND, MPOL_DEFAULT, MPOL_INTERLEAVE, policy_at
from shmhpc.numa_policy import PolicyRange, apply_ranges, check_nodes, judge, placement_line, policy_ranges
from shmhpc.placement import plan_job
from shmhpc.report import read_report
from shmhpc.shm import Segment
from shmhpc.spec import NumaSpec
from shmhpc.topology import read_topology

DENY = [str(ROOT / "tests" / "deny_syscall.py")]
PAGE = mmap.PAGESIZE


def _plan(root: Path, pinning: str = "scatter", workers: int = 4, n_rows: int = 1_000_003, row_bytes: int = 4):
    topo = read_topology(root)
    plan = plan_job(
        pinning=pinning,
        workers=workers,
        threads_per_worker=1,
        topology=topo,
        n_rows=n_rows,
        row_bytes=row_bytes,
        chunks_per_worker=2,
    )
    return plan, topo


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Path:
    return two_socket_smt(tmp_path_factory.mktemp("sys2"))


# -- planning the mbind ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [4096, 2 << 20])
def test_bind_ranges_cover_the_array_once_on_page_boundaries(two_nodes, page):
    plan, topo = _plan(two_nodes, n_rows=4 << 20)
    nbytes = plan.n_rows * plan.row_bytes
    ranges, notes = policy_ranges(plan, NumaSpec(placement="bind"), topo, nbytes, page)
    assert notes == []
    assert [r.nodes for r in ranges] == [(p.node,) for p in plan.partitions] == [(0,), (1,)]
    assert all(r.offset % page == 0 and r.length % page == 0 and r.mode == "bind" for r in ranges)
    assert ranges[0].offset == 0 and ranges[0].offset + ranges[0].length == ranges[1].offset
    assert ranges[-1].offset + ranges[-1].length == -(-nbytes // page) * page  # the last page, whole


def test_bind_to_named_nodes_and_interleave_over_the_workers_nodes(tmp_path):
    root = memory_only_node(tmp_path)  # nodes 0 and 1 have CPUs, node 2 memory only
    plan, topo = _plan(root, workers=2)
    nbytes = plan.n_rows * plan.row_bytes
    ranges, _ = policy_ranges(plan, NumaSpec(placement="bind", nodes=[2]), topo, nbytes, PAGE)
    assert {r.nodes for r in ranges} == {(2,)}
    (whole,) = policy_ranges(plan, NumaSpec(placement="interleave"), topo, nbytes, PAGE)[0]
    assert (whole.offset, whole.mode, whole.nodes) == (0, "interleave", (0, 1))
    (named,) = policy_ranges(plan, NumaSpec(placement="interleave", nodes=[2, 0]), topo, nbytes, PAGE)[0]
    assert named.nodes == (0, 2)
    assert check_nodes([2], topo) == []
    assert check_nodes([7], topo) == ["numa.nodes: 7 is not a NUMA node of this machine (nodes: 0-2)"]


def test_first_touch_and_none_set_no_policy_and_unpinned_rows_have_no_node(two_nodes):
    plan, topo = _plan(two_nodes)
    for placement in ("first-touch", "none"):
        assert policy_ranges(plan, NumaSpec(placement=placement), topo, 4_000_012, PAGE) == ([], [])
    unpinned, topo = _plan(two_nodes, pinning="none")
    ranges, notes = policy_ranges(unpinned, NumaSpec(placement="bind"), topo, 4_000_012, PAGE)
    assert ranges == [] and "no node to bind them to" in notes[0]


# -- judging sampled pages ---------------------------------------------------------------------------------


def _fake(nodes: list[int | None], pages: list[dict[str, int]]):
    parts = [SimpleNamespace(node=n, start=10 * i, stop=10 * (i + 1), ranks=(i,)) for i, n in enumerate(nodes)]
    plan = SimpleNamespace(partitions=parts, workers=[SimpleNamespace(cpus=(i,)) for i in range(len(nodes))])
    topo = SimpleNamespace(cpus={i: SimpleNamespace(node=n) for i, n in enumerate(nodes)})
    return plan, topo, [{"pages": p} for p in pages]


def test_the_summary_line_says_where_each_partition_is():
    plan, topo, loads = _fake([0, 1], [{"0": 1024}, {"1": 998, "0": 2}])
    sec = judge(plan, NumaSpec(), topo, loads, None, [])
    assert sec["summary"] == "placement: first-touch, 99.9 % local (node 0 100.0 %, node 1 99.8 %)"
    assert sec["passed"] is True and [p["passed"] for p in sec["partitions"]] == [True, True]
    assert placement_line(sec) == sec["summary"]


def test_a_partition_below_min_local_fails_and_error_samples_do_not_count():
    plan, topo, loads = _fake([0, 1], [{"0": 1000, "error": 24}, {"1": 900, "0": 100}])
    sec = judge(plan, NumaSpec(min_local=0.95), topo, loads, None, [])
    assert [p["fraction_intended"] for p in sec["partitions"]] == [1.0, 0.9]
    assert [p["passed"] for p in sec["partitions"]] == [True, False] and sec["passed"] is False
    assert sec["summary"].endswith("— BELOW numa.min_local 0.95")
    assert judge(plan, NumaSpec(min_local=0.9), topo, loads, None, [])["passed"] is True


def test_absent_pages_are_not_where_intended():
    plan, topo, loads = _fake([0], [{"0": 500, "absent": 500}])
    assert judge(plan, NumaSpec(), topo, loads, None, [])["partitions"][0]["fraction_intended"] == 0.5


def test_interleave_passes_when_even_and_fails_when_one_node_has_it_all():
    plan, topo, even = _fake([0, 1], [{"0": 510, "1": 514}, {"0": 520, "1": 504}])
    sec = judge(plan, NumaSpec(placement="interleave"), topo, even, {"applied": True, "reason": None}, [])
    assert sec["passed"] is True and sec["nodes"] == [0, 1]
    assert sec["summary"].startswith("placement: interleave over nodes 0-1, 100.0 % on them (node 0 50.")
    _, _, lopsided = _fake([0, 1], [{"0": 1024}, {"1": 1024}])  # first touch, not interleaved
    sec = judge(plan, NumaSpec(placement="interleave"), topo, lopsided, {"applied": False, "reason": "x"}, [])
    assert sec["passed"] is False and all(p["max_deviation_from_even"] == 0.5 for p in sec["partitions"])
    assert "NOT APPLIED (x)" in sec["summary"] and sec["summary"].endswith("— UNEVEN")


def test_nothing_sampled_is_not_measured_and_unpinned_is_not_judged():
    plan, topo, loads = _fake([0], [{"error": 1024}])
    sec = judge(plan, NumaSpec(), topo, loads, None, [])
    assert sec["passed"] is None and "not measured" in sec["summary"]
    plan, topo, loads = _fake([None], [{"0": 1024}])
    sec = judge(plan, NumaSpec(), topo, loads, None, [])
    assert sec["passed"] is None and "not judged" in sec["summary"]


def test_a_worker_whose_mapping_refused_the_policy_is_not_claimed():
    plan, topo, loads = _fake([0], [{"0": 1024}])
    sec = judge(
        plan, NumaSpec(placement="bind"), topo, loads, {"applied": True}, [], [{"applied": False, "reason": "r"}]
    )
    assert sec["applied"] is False and sec["reason"] == "in a worker: r"


# -- real mbind on a real segment --------------------------------------------------------------------------


def test_policies_are_set_and_read_back_on_a_shared_segment(no_leak):
    with Segment.create(8 * PAGE) as seg:
        try:
            addr = seg.address()
            got = apply_ranges(
                addr, [PolicyRange(0, 4 * PAGE, "bind", (0,)), PolicyRange(4 * PAGE, 4 * PAGE, "interleave", (0,))]
            )
            assert got == {"applied": True, "reason": None}
            assert policy_at(addr) == (MPOL_BIND, [0])
            assert policy_at(addr + 4 * PAGE) == (MPOL_INTERLEAVE, [0])
        finally:
            seg.unlink()


def test_a_refused_range_undoes_the_ones_before_it(no_leak):
    with Segment.create(8 * PAGE) as seg:
        try:
            addr = seg.address()
            got = apply_ranges(
                addr, [PolicyRange(0, 4 * PAGE, "bind", (0,)), PolicyRange(4 * PAGE, PAGE, "bind", (5,))]
            )
            assert got["applied"] is False
            assert got["reason"].startswith("mbind(bind, node 5) refused: Invalid argument (EINVAL)"), got
            assert "this process may only allocate on nodes 0 (cpuset mems)" in got["reason"]
            assert policy_at(addr)[0] == MPOL_DEFAULT, "no half-applied layout is left"
        finally:
            seg.unlink()


# -- real runs ---------------------------------------------------------------------------------------------


def _run(tmp_path: Path, numa: str, *prefix: str, name: str = "t", rc: int = 0) -> tuple[dict, str]:
    spec = small_spec(tmp_path, name=name, numa=numa)
    if prefix:
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, *prefix, "--", sys.executable, "-m", "shmhpc", "run", str(spec)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
    else:
        out = run_cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == rc, out.stdout + out.stderr
    path = tmp_path / "reports" / f"{name}.json"
    read_report(path)  # the typed report model accepts it
    return load_json(path), out.stdout + out.stderr


@pytest.mark.parametrize("policy", ["first-touch", "bind", "interleave", "none"])
def test_each_policy_runs_verifies_and_reports_its_placement(tmp_path, no_leak, policy):
    rep, out = _run(tmp_path, f"{{placement: {policy}, verify: strict}}")
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
    pl = rep["placement"]
    assert pl["policy"] == policy and pl["passed"] is True and pl["fraction_intended"] == 1.0
    assert pl["applied"] is (True if policy in ("bind", "interleave") else None) and pl["reason"] is None
    assert pl["writer"] == ("launcher" if policy == "none" else "owners")
    assert f"  {pl['summary']}\n" in out and pl["summary"].startswith(f"placement: {policy}")
    launcher = policy == "none"
    assert {w["reserved_by"] == "launcher" for w in rep["workers"]} == {launcher}
    assert ("launcher_write_s" in rep["timings"]) is launcher
    if len(read_topology().nodes) == 1:
        assert pl["note"] == "this machine has one NUMA node: every policy puts every page on it"


def test_bind_with_the_launcher_writing(tmp_path, no_leak):
    rep, out = _run(tmp_path, "{placement: bind, writer: launcher, verify: strict}")
    assert rep["placement"]["applied"] is True and rep["placement"]["writer"] == "launcher"
    assert "by the launcher" in out and rep["timings"]["launcher_write_s"] > 0


@pytest.mark.parametrize(("errno_name", "says"), [("EPERM", "a seccomp profile forbids it"), ("ENOSYS", "no NUMA")])
def test_a_refused_policy_is_recorded_with_why_and_the_run_goes_on(tmp_path, no_leak, errno_name, says):
    rep, out = _run(tmp_path, "{placement: bind, verify: strict}", *DENY, "--errno", errno_name, "mbind")
    pl = rep["placement"]
    assert rep["status"] == "ok" and pl["applied"] is False and errno_name in pl["reason"] and says in pl["reason"]
    assert pl["passed"] is True, "the owners' first touch still put the pages on their node"
    assert any(
        w.startswith("numa.placement: bind was not applied: mbind(bind, node 0) refused") for w in rep["warnings"]
    )
    assert "placement: bind NOT APPLIED (mbind(bind, node 0) refused" in out


def test_strict_fails_a_run_whose_placement_cannot_be_checked(tmp_path, no_leak):
    rep, out = _run(tmp_path, "{verify: strict}", *DENY, "move_pages", rc=1)
    assert rep["status"] == "failed" and rep["error"].startswith("placement (first-touch) could not be checked")
    assert rep["error"].endswith("(numa.verify: strict)") and not rep["timings"].get("repeat_s")
    assert out.count("Traceback") == 0


def test_warn_adds_a_warning_and_report_only_reports(tmp_path, no_leak):
    rep, _ = _run(tmp_path, "{verify: warn}", *DENY, "move_pages", name="w")
    assert rep["status"] == "ok" and any(
        w.startswith("placement (first-touch) could not be checked") for w in rep["warnings"]
    )
    rep, _ = _run(tmp_path, "{verify: report}", *DENY, "move_pages", name="r")
    assert rep["status"] == "ok" and not any(w.startswith("placement") for w in rep["warnings"])


@pytest.mark.parametrize(
    ("numa", "message"),
    [
        ("{nodes: [0]}", "numa.nodes: [0] is only used with placement bind or interleave (got 'first-touch')"),
        ("{placement: bind, nodes: [9]}", "numa.nodes: 9 is not a NUMA node of this machine (nodes: 0)"),
        ("{placement: spread}", "numa.placement: Input should be 'first-touch', 'bind', 'interleave' or 'none'"),
        ("{min_local: 0}", "numa.min_local: Input should be greater than 0"),
    ],
)
def test_bad_numa_settings_are_one_line_errors(tmp_path, numa, message):
    spec = small_spec(tmp_path, numa=numa)
    out = run_cli("plan", str(spec))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_compare_shows_each_runs_policy(tmp_path, no_leak):
    _run(tmp_path, "{placement: first-touch}", name="ft")
    _run(tmp_path, "{placement: interleave}", name="il")
    out = run_cli("compare", str(tmp_path / "reports" / "ft.json"), str(tmp_path / "reports" / "il.json"))
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.strip().startswith("numa.placement"))
    assert "first-touch" in row and "interleave" in row
    assert "pages: interleave: rows 0-" in out.stdout and "(node 0 100.0%)" in out.stdout


def test_a_sweep_over_the_four_policies_shows_where_the_pages_went(tmp_path, no_leak):
    spec = small_spec(tmp_path, name="sw", repeats=2, warmup=0)
    out = run_cli("sweep", str(spec), "--vary", "numa.placement=first-touch,bind,interleave,none", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (summary,) = (tmp_path / "sweeps").glob("*/sweep.json")
    runs = load_json(summary)["runs"]
    assert [r["values"]["numa.placement"] for r in runs] == ["first-touch", "bind", "interleave", "none"]
    assert [r["policy_applied"] for r in runs] == [None, True, True, None]
    assert all(r["status"] == "ok" and r["pages_where_intended"] == 1.0 for r in runs), runs
    table = out.stdout[out.stdout.index("pages placed") :]
    assert table.count("100.0 %") == 4
