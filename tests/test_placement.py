"""Placement: which worker runs on which CPUs, which NUMA partition and which rows it owns.

Everything here is pure planning over fake sysfs trees (``fakesys``); nothing is pinned.
The presets:

* ``two_socket_smt``: 2 sockets x 4 cores x 2 threads, siblings ``i``/``i+8``;
  node 0 = 0-3,8-11, node 1 = 4-7,12-15;
* ``four_numa_one_socket``: 16 cores, no SMT, nodes of 4;
* ``memory_only_node``: nodes 0 (0-3) and 1 (4-7), node 2 has memory and no CPUs;
* ``offline_noncontiguous``: CPUs 6-7 offline, nodes 0 and 2, SMT pairs (0,1) (2,3) (4,5).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakesys import build_sysfs, four_numa_one_socket, memory_only_node, offline_noncontiguous, two_socket_smt
from hypothesis import given, settings
from hypothesis import strategies as st

from shmhpc.errors import SpecError
from shmhpc.placement import Plan, expand_likwid, plan_job, resolve_cpus, split_rows
from shmhpc.topology import Topology, read_topology

PRESETS: dict[str, Callable[[Path], Path]] = {
    "two_socket_smt": two_socket_smt,
    "four_numa_one_socket": four_numa_one_socket,
    "memory_only_node": memory_only_node,
    "offline_noncontiguous": offline_noncontiguous,
}


def _wide_machine(root: Path) -> Path:
    """1 socket x 16 cores x 2 threads, siblings ``i``/``i+16``; nodes 0 (cores 0-7) and 1 (cores 8-15).

    Used with an allowed set such as {4,5,20,21}: ids that neither start at 0 nor are contiguous.
    """
    cores = {c: (0, c % 16) for c in range(32)}
    nodes = {0: [*range(0, 8), *range(16, 24)], 1: [*range(8, 16), *range(24, 32)]}
    return build_sysfs(root, cores=cores, nodes=nodes)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sysfs")
    out = {name: make(base / name) for name, make in PRESETS.items()}
    out["wide"] = _wide_machine(base / "wide")
    return out


@pytest.fixture(scope="module")
def topos(roots: dict[str, Path]) -> dict[str, Topology]:
    return {name: read_topology(root) for name, root in roots.items()}


def _plan(topo: Topology, pinning: Any = "compact", workers: Any = "auto", **kw: Any) -> Plan:
    args: dict[str, Any] = {
        "threads_per_worker": 1,
        "n_rows": 1_000_000,
        "row_bytes": 8,
        "chunks_per_worker": 2,
    }
    args.update(kw)
    return plan_job(pinning=pinning, workers=workers, topology=topo, **args)


def _cpus(plan: Plan) -> list[list[int]]:
    return [list(w.cpus) for w in plan.workers]


def _nodes(plan: Plan) -> list[int | None]:
    return [w.node for w in plan.workers]


def _spec_error(fn: Callable[[], object]) -> list[str]:
    with pytest.raises(SpecError) as info:
        fn()
    return info.value.messages


def check_invariants(plan: Plan, topo: Topology, *, chunks_per_worker: int, partition: bool) -> None:
    """What every plan must satisfy, whatever the policy."""
    n_rows, row_bytes = plan.n_rows, plan.row_bytes
    n = len(plan.workers)
    align = 4096 // math.gcd(4096, row_bytes)
    usable = set(topo.usable)
    assert plan.usable == topo.usable
    assert [w.rank for w in plan.workers] == list(range(n))

    # CPUs: sorted, each once, all usable.
    for w in plan.workers:
        assert w.cpus, w
        assert list(w.cpus) == sorted(set(w.cpus))
        assert set(w.cpus) <= usable
        if plan.pinned:
            assert w.node in {topo.cpus[c].node for c in w.cpus}

    # Rows: contiguous, non-empty, tiling [0, n_rows) exactly once.
    by_start = sorted(plan.workers, key=lambda w: w.rows)
    assert by_start[0].rows[0] == 0
    assert by_start[-1].rows[1] == n_rows
    for a, b in itertools.pairwise(by_start):
        assert a.rows[1] == b.rows[0]
    for w in plan.workers:
        lo, hi = w.rows
        assert lo < hi
    _check_alignment([w.rows for w in by_start], n_rows, align)

    # Chunks: min(chunks_per_worker, rows) of them, tiling the worker's rows in order.
    for w in plan.workers:
        lo, hi = w.rows
        assert len(w.chunks) == min(chunks_per_worker, hi - lo)
        assert w.chunks[0][0] == lo
        assert w.chunks[-1][1] == hi
        for (a0, a1), (b0, b1) in zip(w.chunks, w.chunks[1:]):
            assert a0 < a1 == b0 < b1
        _check_alignment(list(w.chunks), hi - lo, align)

    # Partitions: contiguous ranges tiling [0, n_rows), each the union of its ranks' rows.
    parts = plan.partitions
    assert parts[0].start == 0
    assert parts[-1].stop == n_rows
    for a, b in itertools.pairwise(parts):
        assert a.stop == b.start
    assert sorted(r for p in parts for r in p.ranks) == list(range(n))
    cpu_nodes = {nid for nid, node in topo.nodes.items() if node.cpus}
    for p in parts:
        assert p.node is None or p.node in cpu_nodes  # never a memory-only node
        assert list(p.ranks) == sorted(p.ranks)
        assert min(plan.workers[r].rows[0] for r in p.ranks) == p.start
        assert max(plan.workers[r].rows[1] for r in p.ranks) == p.stop
        assert sum(plan.workers[r].rows[1] - plan.workers[r].rows[0] for r in p.ranks) == p.stop - p.start
    if partition and plan.pinned:
        worker_nodes = sorted({w.node for w in plan.workers})  # type: ignore[type-var]
        assert [p.node for p in parts] == worker_nodes  # one per node with workers, ordered by node
        for p in parts:
            assert list(p.ranks) == [w.rank for w in plan.workers if w.node == p.node]
            share = n_rows * len(p.ranks) / n
            assert abs((p.stop - p.start) - share) <= align + 1
    elif not partition or len({w.node for w in plan.workers}) > 1 or None in _nodes(plan):
        assert len(parts) == 1
        assert list(parts[0].ranks) == list(range(n))


def _check_alignment(ranges: list[tuple[int, int]], size: int, align: int) -> None:
    """Interior boundaries are page-aligned whenever that can leave no range empty, else an exact split."""
    start = ranges[0][0]
    inner = [r[0] for r in ranges[1:]]
    parts = len(ranges)
    aligned = all(b % align == 0 for b in inner)
    exact = [start + size * k // parts for k in range(1, parts)]
    assert aligned or inner == exact, (ranges, align)
    if size // parts >= align:
        assert aligned, (ranges, align)


# -- compact ------------------------------------------------------------------------------


def test_compact_fills_physical_cores_node_by_node(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, workers=4)
    assert _cpus(plan) == [[0], [1], [2], [3]]
    assert _nodes(plan) == [0, 0, 0, 0]
    assert plan.pinned
    assert plan.policy == "compact"
    plan = _plan(topo, workers=8)
    assert _cpus(plan) == [[c] for c in range(8)]
    assert _nodes(plan) == [0] * 4 + [1] * 4
    assert plan.warnings == []


def test_compact_uses_smt_siblings_only_past_the_physical_cores(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    # 10 > 8 cores: every first thread, then the second threads of cores 0 and 1.
    assert _cpus(_plan(topo, workers=10)) == [[c] for c in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert _cpus(_plan(topo, workers=16)) == [[c] for c in range(16)]
    # offline_noncontiguous: cores (0,1) (2,3) (4,5): first threads 0, 2, 4, then 1, 3.
    topo = topos["offline_noncontiguous"]
    plan = _plan(topo, workers=5)
    assert _cpus(plan) == [[0], [2], [4], [1], [3]]
    assert _nodes(plan) == [0, 0, 2, 0, 0]


def test_compact_threads_per_worker(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    assert _cpus(_plan(topo, workers=4, threads_per_worker=2)) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _cpus(_plan(topo, workers=3, threads_per_worker=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    plan = _plan(topos["four_numa_one_socket"], workers=2, threads_per_worker=3)
    assert _cpus(plan) == [[0, 1, 2], [3, 4, 5]]
    assert _nodes(plan) == [0, 1]  # worker 1 has more CPUs on node 1
    assert any("worker 1 spans NUMA nodes 0-1" in w for w in plan.warnings)


def test_compact_counts_a_core_by_its_first_usable_thread(roots: dict[str, Path]) -> None:
    # CPU 10 is the second thread of core 2, but its sibling 2 is not allowed: it is that
    # core's first usable thread, so it comes before the SMT siblings 8 and 9.
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[0, 1, 8, 9, 10])
    assert topo.usable_cores() == [(0, 0), (0, 1), (0, 2)]
    assert _cpus(_plan(topo, workers=3)) == [[0], [1], [10]]
    assert _cpus(_plan(topo, workers=4)) == [[0], [1], [10], [8]]
    assert _cpus(_plan(topo, "scatter", workers=3)) == [[0], [1], [10]]
    assert expand_likwid("N:0-4", topo) == [0, 1, 10, 8, 9]
    assert expand_likwid("E:N:5", topo) == [0, 8, 1, 9, 10]


# -- scatter ------------------------------------------------------------------------------


def test_scatter_round_robins_over_nodes_then_cores(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, "scatter", workers=4)
    assert _cpus(plan) == [[0], [4], [1], [5]]
    assert _nodes(plan) == [0, 1, 0, 1]
    # First threads of every core before any sibling.
    assert _cpus(_plan(topo, "scatter", workers=10)) == [[c] for c in [0, 4, 1, 5, 2, 6, 3, 7, 8, 12]]
    assert _cpus(_plan(topo, "scatter", workers=2, threads_per_worker=2)) == [[0, 1], [4, 5]]
    assert _cpus(_plan(topos["four_numa_one_socket"], "scatter", workers=6)) == [[0], [4], [8], [12], [1], [5]]
    plan = _plan(topos["offline_noncontiguous"], "scatter", workers=4)
    assert _cpus(plan) == [[0], [4], [2], [5]]
    assert _nodes(plan) == [0, 2, 0, 2]


def test_scatter_uses_every_physical_core_before_a_sibling(roots: dict[str, Path]) -> None:
    # Node 0 has three cores here (0-2, siblings 8-10), node 1 one core (4, sibling 12):
    # once node 1's core is taken, round-robin skips it rather than put a worker on 12.
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[0, 1, 2, 8, 9, 10, 4, 12])
    assert _cpus(_plan(topo, "scatter", workers=4)) == [[0], [4], [1], [2]]
    assert _cpus(_plan(topo, "scatter", workers=6)) == [[0], [4], [1], [2], [8], [12]]
    # A worker with more threads than its node has cores continues on the next node.
    offline = read_topology(roots["offline_noncontiguous"])
    assert _cpus(_plan(offline, "scatter", threads_per_worker=3)) == [[0, 2, 4]]


def test_scatter_skips_memory_only_nodes(topos: dict[str, Topology]) -> None:
    plan = _plan(topos["memory_only_node"], "scatter", workers=4)
    assert _cpus(plan) == [[0], [4], [1], [5]]
    assert [p.node for p in plan.partitions] == [0, 1]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scatter_on_one_node_equals_compact(roots: dict[str, Path], threads: int) -> None:
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[0, 1, 2, 3, 8, 9, 10, 11])
    for workers in range(1, 8 // threads + 1):
        compact = _plan(topo, "compact", workers, threads_per_worker=threads).to_dict()
        scatter = _plan(topo, "scatter", workers, threads_per_worker=threads).to_dict()
        compact.pop("policy")
        scatter.pop("policy")
        assert compact == scatter


# -- none ---------------------------------------------------------------------------------


def test_none_gives_every_worker_every_usable_cpu(topos: dict[str, Topology], roots: dict[str, Path]) -> None:
    plan = _plan(topos["two_socket_smt"], "none", workers=3)
    assert not plan.pinned
    assert plan.policy == "none"
    assert _cpus(plan) == [list(range(16))] * 3
    assert _nodes(plan) == [None] * 3
    assert [(p.node, p.start, p.stop, p.ranks) for p in plan.partitions] == [(None, 0, 1_000_000, (0, 1, 2))]
    assert _plan(topos["two_socket_smt"], "none").to_dict()["workers"].__len__() == 8  # auto = physical cores
    # Unpinned, but on one node: that node is known.
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[4, 5, 6, 7])
    plan = _plan(topo, "none", workers=2)
    assert _cpus(plan) == [[4, 5, 6, 7]] * 2
    assert [p.node for p in plan.partitions] == [1]


# -- explicit lists -----------------------------------------------------------------------


def test_explicit_lists(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, [[4], [0]], workers=2)
    assert plan.policy == "explicit"
    assert _cpus(plan) == [[4], [0]]
    assert _nodes(plan) == [1, 0]
    # Data follows the node order: rank 1 (node 0) owns the first rows.
    assert [(p.node, p.ranks) for p in plan.partitions] == [(0, (1,)), (1, (0,))]
    assert plan.workers[1].rows[0] == 0
    assert _cpus(_plan(topo, [[0, 8], [1, 9]], threads_per_worker=2)) == [[0, 8], [1, 9]]  # auto = 2 lists
    assert len(_plan(topo, [[0], [1], [2]]).workers) == 3


def test_explicit_lists_thread_mismatch_is_a_warning(topos: dict[str, Topology]) -> None:
    plan = _plan(topos["two_socket_smt"], [[0, 1], [2]], workers=2, threads_per_worker=2)
    assert plan.warnings == ["worker 1 has 1 CPUs for threads_per_worker 2"]


def test_explicit_lists_errors_name_each_bad_list(topos: dict[str, Topology], roots: dict[str, Path]) -> None:
    topo = topos["two_socket_smt"]
    assert _spec_error(lambda: _plan(topo, [[0], [99]], workers=2)) == [
        "pinning[1]: cpu 99 is not usable here; usable CPUs: 0-15"
    ]
    msgs = _spec_error(lambda: _plan(topo, [[98], [0], [16, 17]], workers=3))
    assert [m.split(":")[0] for m in msgs] == ["pinning[0]", "pinning[2]"]
    assert "cpu 16-17 is not usable" in msgs[1]
    msgs = _spec_error(lambda: _plan(topo, [[0], [1]], workers=3))
    assert msgs == ["workers: 3, but pinning lists 2 CPU sets (one per worker)"]
    # Everything wrong is said at once.
    assert len(_spec_error(lambda: _plan(topo, [[0], [99]], workers=5))) == 2
    restricted = read_topology(roots["two_socket_smt"], allowed_cpus=[4, 5, 6, 7])
    assert _spec_error(lambda: _plan(restricted, [[4], [0]])) == [
        "pinning[1]: cpu 0 is not usable here; usable CPUs: 4-7"
    ]


def test_explicit_lists_sharing_a_cpu(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    msgs = _spec_error(lambda: _plan(topo, [[0, 1], [1, 2]]))
    assert len(msgs) == 1
    assert msgs[0].startswith("pinning[1]: cpu 1 is also pinned by worker 0")
    plan = _plan(topo, [[0, 1], [1, 2]], oversubscribe=True, threads_per_worker=2)
    assert _cpus(plan) == [[0, 1], [1, 2]]


# -- likwid-style expressions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("N:0-3", [0, 1, 2, 3]),
        ("N:7-9", [7, 8, 9]),  # logical 8 = first SMT thread = CPU 8
        ("N:3,1", [3, 1]),  # written order is kept
        ("S0:0-3", [0, 1, 2, 3]),
        ("S1:0-3", [4, 5, 6, 7]),
        ("S1:4", [12]),
        ("M1:0,4", [4, 12]),
        ("C1:0-1", [4, 5]),  # last-level cache groups: one per socket
        ("S0:0-1@S1:0-1", [0, 1, 4, 5]),
        ("E:N:8:1:2", [0, 1, 2, 3, 4, 5, 6, 7]),  # one thread per core
        ("E:N:4", [0, 8, 1, 9]),  # siblings adjacent
        ("E:S1:4:2:4", [4, 12, 6, 14]),
        ("0-3,8", [0, 1, 2, 3, 8]),  # bare list: physical ids
        ("0-14:2", [0, 2, 4, 6, 8, 10, 12, 14]),
    ],
)
def test_expand_likwid(topos: dict[str, Topology], expr: str, expected: list[int]) -> None:
    assert expand_likwid(expr, topos["two_socket_smt"]) == expected


def test_expand_likwid_other_machines(topos: dict[str, Topology], roots: dict[str, Path]) -> None:
    topo = topos["offline_noncontiguous"]
    assert expand_likwid("N:0-5", topo) == [0, 2, 4, 1, 3, 5]
    assert expand_likwid("M2:0-1", topo) == [4, 5]
    assert expand_likwid("E:M0:4", topo) == [0, 1, 2, 3]
    assert expand_likwid("E:N:3:1:2", topo) == [0, 2, 4]
    wide = read_topology(roots["wide"], allowed_cpus=[4, 5, 20, 21])
    assert expand_likwid("N:0-3", wide) == [4, 5, 20, 21]
    assert expand_likwid("E:N:2:1:2", wide) == [4, 5]
    # The last block may be short when only the remainder is needed (3 of chunk 2).
    three = read_topology(roots["four_numa_one_socket"], allowed_cpus=[0, 1, 2])
    assert expand_likwid("E:N:3:2:2", three) == [0, 1, 2]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("S2:0", "socket S2 does not exist; sockets: S0, S1"),
        ("M5:0", "NUMA domain M5 does not exist; domains: M0, M1"),
        ("C9:0", "cache group C9 does not exist"),
        ("N:16", "index 16 is out of range; N has 16 usable CPUs (indices 0-15)"),
        ("S1:8", "index 8 is out of range; S1 has 8 usable CPUs"),
        ("E:N:17", "asks for 17 CPUs but N runs out after 16"),
        ("E:S0:5:1:2", "asks for 5 CPUs but S0 runs out after 4"),
        ("E:N:4:2:1", "stride >= chunk"),
        ("E:N", "must be E:DOMAIN:COUNT"),
        ("N:0@", "empty term"),
        ("S0", "must be DOMAIN:LIST"),
        ("X1:0", "is not a policy"),
        ("compactt", "is not a policy"),
    ],
)
def test_expand_likwid_errors(topos: dict[str, Topology], expr: str, fragment: str) -> None:
    msgs = _spec_error(lambda: expand_likwid(expr, topos["two_socket_smt"]))
    assert len(msgs) == 1
    assert msgs[0].startswith("pinning: ")
    assert fragment in msgs[0]


def test_expand_likwid_empty_domains(topos: dict[str, Topology]) -> None:
    msgs = _spec_error(lambda: expand_likwid("M2:0", topos["memory_only_node"]))
    assert msgs == ["pinning: domain M2 has no usable CPUs (usable: 0-7)"]
    msgs = _spec_error(lambda: expand_likwid("M1:0", topos["offline_noncontiguous"]))
    assert "domains: M0, M2" in msgs[0]


def test_likwid_plans(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, "S0:0-1@S1:0-1", workers=4)
    assert plan.policy == "S0:0-1@S1:0-1"
    assert _cpus(plan) == [[0], [1], [4], [5]]
    assert _nodes(plan) == [0, 0, 1, 1]
    # workers auto = CPUs / threads_per_worker; worker i gets CPUs [i*t, (i+1)*t) of the list.
    plan = _plan(topo, "E:N:6:1:2", threads_per_worker=2)
    assert _cpus(plan) == [[0, 1], [2, 3], [4, 5]]
    assert _cpus(_plan(topo, "N:8,0", workers=1, threads_per_worker=2)) == [[0, 8]]


def test_likwid_count_must_match_workers(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    msgs = _spec_error(lambda: _plan(topo, "N:0-3", workers=3))
    assert len(msgs) == 1
    assert msgs[0].startswith("pinning: 'N:0-3' selects 4 CPUs but workers × threads_per_worker = 3 × 1 = 3")
    msgs = _spec_error(lambda: _plan(topo, "N:0-5", threads_per_worker=4))
    assert "not a multiple of threads_per_worker 4" in msgs[0]
    msgs = _spec_error(lambda: _plan(topo, "N:0@N:0", workers=2))
    assert "selects cpu 0 more than once" in msgs[0]
    assert _cpus(_plan(topo, "N:0@N:0", workers=2, oversubscribe=True)) == [[0], [0]]
    msgs = _spec_error(lambda: _plan(topo, "0,99", workers=2))
    assert msgs == ["pinning: cpu 99 is not usable here; usable CPUs: 0-15"]


# -- oversubscription and workers: auto ---------------------------------------------------


@pytest.mark.parametrize("policy", ["compact", "scatter", "none"])
def test_too_many_threads_is_an_error_naming_workers(topos: dict[str, Topology], policy: str) -> None:
    topo = topos["two_socket_smt"]
    msgs = _spec_error(lambda: _plan(topo, policy, workers=17))
    assert len(msgs) == 1
    assert msgs[0].startswith("workers: 17 workers × 1 threads need 17 CPUs but only 16 are usable (0-15")
    assert "oversubscribe: true" in msgs[0]
    assert "--cpu-bind" not in msgs[0]
    msgs = _spec_error(lambda: _plan(topo, policy, workers=5, threads_per_worker=4))
    assert msgs[0].startswith("workers: ")


@pytest.mark.parametrize("policy", ["compact", "scatter"])
def test_oversubscribe_wraps_and_warns(topos: dict[str, Topology], policy: str) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, policy, workers=17, oversubscribe=True)
    assert len(plan.workers) == 17
    assert all(len(w.cpus) == 1 for w in plan.workers)
    assert sorted(c for w in plan.workers[:16] for c in w.cpus) == list(range(16))
    assert plan.workers[16].cpus == plan.workers[0].cpus
    assert any("oversubscribed: 17 threads on 16 usable CPUs" in w for w in plan.warnings)


def test_one_usable_cpu_mentions_slurm(roots: dict[str, Path]) -> None:
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[5])
    msgs = _spec_error(lambda: _plan(topo, workers=2))
    assert msgs[0].startswith("workers: ")
    assert "only 1 is usable (5, override)" in msgs[0]
    assert "--cpu-bind" in msgs[0]
    # Oversubscribed: every worker on the one CPU, each CPU listed once per worker.
    plan = _plan(topo, workers=2, threads_per_worker=2, oversubscribe=True)
    assert _cpus(plan) == [[5], [5]]
    assert "all 2 workers share one CPU" in plan.warnings


@pytest.mark.parametrize(
    ("preset", "threads", "expected"),
    [
        ("two_socket_smt", 1, 8),  # physical cores, not hardware threads
        ("two_socket_smt", 3, 2),
        ("two_socket_smt", 16, 1),
        ("four_numa_one_socket", 1, 16),
        ("four_numa_one_socket", 5, 3),
        ("memory_only_node", 1, 8),
        ("offline_noncontiguous", 1, 3),
        ("offline_noncontiguous", 4, 1),  # at least one
    ],
)
def test_workers_auto_is_physical_cores_over_threads(
    topos: dict[str, Topology], preset: str, threads: int, expected: int
) -> None:
    for policy in ("compact", "scatter", "none"):
        plan = _plan(topos[preset], policy, threads_per_worker=threads)
        assert len(plan.workers) == expected


def test_workers_auto_with_more_threads_than_cpus(topos: dict[str, Topology]) -> None:
    msgs = _spec_error(lambda: _plan(topos["two_socket_smt"], threads_per_worker=20))
    assert msgs[0].startswith("workers: 1 workers × 20 threads need 20 CPUs")


# -- the allowed CPU set ------------------------------------------------------------------


def test_allowed_cpus_restrict_every_policy(roots: dict[str, Path]) -> None:
    topo = read_topology(roots["two_socket_smt"], allowed_cpus=[4, 5, 6, 7, 12, 13, 14, 15])
    plan = _plan(topo)
    assert _cpus(plan) == [[4], [5], [6], [7]]
    assert _nodes(plan) == [1, 1, 1, 1]
    assert plan.usable_source == "override"
    assert _cpus(_plan(topo, "scatter", workers=2)) == [[4], [5]]
    assert _cpus(_plan(topo, "none", workers=1)) == [[4, 5, 6, 7, 12, 13, 14, 15]]
    assert expand_likwid("S1:0-4", topo) == [4, 5, 6, 7, 12]
    assert _spec_error(lambda: expand_likwid("S0:0", topo)) == [
        "pinning: domain S0 has no usable CPUs (usable: 4-7,12-15)"
    ]


def test_allowed_cpus_need_not_start_at_zero_or_be_contiguous(roots: dict[str, Path]) -> None:
    topo = read_topology(roots["wide"], allowed_cpus=[4, 5, 20, 21])
    assert _cpus(_plan(topo)) == [[4], [5]]  # auto = 2 physical cores
    assert _cpus(_plan(topo, workers=4)) == [[4], [5], [20], [21]]
    assert _cpus(_plan(topo, "scatter", workers=4)) == [[4], [5], [20], [21]]
    assert _cpus(_plan(topo, workers=2, threads_per_worker=2)) == [[4, 5], [20, 21]]
    assert _cpus(_plan(topo, "none", workers=2)) == [[4, 5, 20, 21]] * 2
    assert _cpus(_plan(topo, "E:N:4", workers=2, threads_per_worker=2)) == [[4, 20], [5, 21]]
    assert [p.node for p in _plan(topo, workers=4).partitions] == [0]
    msgs = _spec_error(lambda: _plan(topo, workers=5))
    assert "only 4 are usable (4-5,20-21" in msgs[0]
    assert _spec_error(lambda: _plan(topo, [[4], [6]])) == [
        "pinning[1]: cpu 6 is not usable here; usable CPUs: 4-5,20-21"
    ]


# -- rows, chunks, partitions -------------------------------------------------------------


def test_split_rows() -> None:
    assert split_rows(10, 3, 1) == [(0, 3), (3, 6), (6, 10)]
    assert split_rows(10, 3, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_rows(5, 3, 4) == [(0, 1), (1, 3), (3, 5)]  # aligning would empty a range
    assert split_rows(7, 1, 4, start=9) == [(9, 16)]
    # Half-way boundaries round up, the same way each time, so none merge.
    assert split_rows(3072, 3, 1024, start=512) == [(512, 2048), (2048, 3072), (3072, 3584)]


@pytest.mark.parametrize(("row_bytes", "align"), [(1, 4096), (3, 4096), (4, 1024), (8, 512), (24, 512), (8192, 1)])
def test_row_boundaries_are_page_aligned(topos: dict[str, Topology], row_bytes: int, align: int) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, "scatter", workers=6, row_bytes=row_bytes, n_rows=999_983, chunks_per_worker=3)
    inner = [w.rows[0] for w in plan.workers if w.rows[0]] + [c[0] for w in plan.workers for c in w.chunks[1:]]
    assert inner
    assert all(b % align == 0 for b in inner)
    assert all(p.start % align == 0 for p in plan.partitions)
    check_invariants(plan, topo, chunks_per_worker=3, partition=True)


def test_chunk_count_is_capped_by_rows(topos: dict[str, Topology]) -> None:
    plan = _plan(topos["two_socket_smt"], workers=4, n_rows=9, chunks_per_worker=5)
    assert [w.rows for w in plan.workers] == [(0, 2), (2, 4), (4, 6), (6, 9)]
    assert [len(w.chunks) for w in plan.workers] == [2, 2, 2, 3]
    assert plan.workers[3].chunks == ((6, 7), (7, 8), (8, 9))


def test_fewer_rows_than_workers(topos: dict[str, Topology]) -> None:
    msgs = _spec_error(lambda: _plan(topos["two_socket_smt"], workers=4, n_rows=3))
    assert msgs == ["data: 3 rows cannot be shared by 4 workers; use more data or fewer workers"]
    assert len(_plan(topos["two_socket_smt"], workers=4, n_rows=4).workers) == 4


def test_partitions_one_per_node_sized_by_worker_count(topos: dict[str, Topology]) -> None:
    topo = topos["four_numa_one_socket"]
    plan = _plan(topo, [[8], [0], [1], [2]], n_rows=4096 * 100, row_bytes=1)
    assert [(p.node, p.ranks) for p in plan.partitions] == [(0, (1, 2, 3)), (2, (0,))]
    sizes = [p.stop - p.start for p in plan.partitions]
    assert abs(sizes[0] - 3 * sizes[1]) <= 4 * 4096
    assert plan.workers[0].rows == (plan.partitions[1].start, plan.n_rows)
    check_invariants(plan, topo, chunks_per_worker=2, partition=True)
    plan = _plan(topo, "scatter", workers=8)
    assert [p.node for p in plan.partitions] == [0, 1, 2, 3]
    assert [p.ranks for p in plan.partitions] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert [w.rows[0] for w in plan.workers[:4]] == [p.start for p in plan.partitions]


def test_memory_only_nodes_get_no_partition(topos: dict[str, Topology]) -> None:
    for policy in ("compact", "scatter", "N:0-7", "E:N:8"):
        plan = _plan(topos["memory_only_node"], policy)
        assert [p.node for p in plan.partitions] == [0, 1], policy


def test_one_partition_without_partitioning_or_pinning(topos: dict[str, Topology]) -> None:
    topo = topos["two_socket_smt"]
    plan = _plan(topo, "scatter", workers=4, partition=False)
    assert [(p.node, p.start, p.stop, p.ranks) for p in plan.partitions] == [(None, 0, 1_000_000, (0, 1, 2, 3))]
    assert [w.rows[0] for w in plan.workers] == sorted(w.rows[0] for w in plan.workers)  # rank order
    plan = _plan(topo, workers=2, partition=False)  # both on node 0
    assert [(p.node, p.ranks) for p in plan.partitions] == [(0, (0, 1))]
    plan = _plan(topo, "none", workers=2)
    assert [(p.node, p.ranks) for p in plan.partitions] == [(None, (0, 1))]


# -- output -------------------------------------------------------------------------------


def test_to_dict_is_json_with_integer_lists(topos: dict[str, Topology]) -> None:
    plan = _plan(topos["two_socket_smt"], "scatter", workers=3, threads_per_worker=2)
    d = plan.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["workers"][1] == {
        "rank": 1,
        "cpus": [4, 5],
        "node": 1,
        "rows": list(plan.workers[1].rows),
        "chunks": [list(c) for c in plan.workers[1].chunks],
    }
    assert d["usable_cpus"] == list(range(16))
    assert d["partitions"][0]["ranks"] == [0, 2]
    assert d["policy"] == "scatter"
    assert d["pinned"] is True


def test_format_table(topos: dict[str, Topology]) -> None:
    plan = _plan(topos["two_socket_smt"], "N:0-3@N:8@S1:0-4", workers=2, threads_per_worker=5)
    assert _cpus(plan) == [[0, 1, 2, 3, 8], [4, 5, 6, 7, 12]]
    lines = plan.format_table().splitlines()
    assert lines[0].startswith("2 workers × 5 threads, pinning N:0-3@N:8@S1:0-4")
    assert lines[1] == "usable CPUs: 0-15 (all online CPUs of the sysfs root)"
    assert lines[2].split() == ["rank", "cpus", "node", "rows", "chunks"]
    worker_lines = lines[3:5]
    assert not lines[5].startswith("1 ")  # one line per worker
    assert worker_lines[0].split()[:3] == ["0", "0-3,8", "0"]
    assert worker_lines[1].split()[:3] == ["1", "4-7,12", "1"]
    assert sum(ln.startswith("partition node") for ln in lines) == 2
    unpinned = _plan(topos["two_socket_smt"], "none", workers=1).format_table()
    assert "(not pinned)" in unpinned
    assert "partition any node" in unpinned
    warned = _plan(topos["two_socket_smt"], [[0, 1], [2]], workers=2, threads_per_worker=2).format_table()
    assert warned.splitlines()[-1] == "warning: worker 1 has 1 CPUs for threads_per_worker 2"


def test_resolve_cpus_returns_the_sets_alone(topos: dict[str, Topology]) -> None:
    sets, pinned, label, warnings = resolve_cpus("scatter", 2, 1, topos["two_socket_smt"])
    assert (sets, pinned, label, warnings) == ([(0,), (4,)], True, "scatter", [])


# -- properties ---------------------------------------------------------------------------

_EXPRESSIONS = ["N:0-3", "E:N:4:1:2", "N:0@N:1", "M0:0-1", "0-1"]


@st.composite
def _jobs(draw: st.DrawFn) -> dict[str, Any]:
    pinning: Any = draw(st.sampled_from(["compact", "scatter", "none", "likwid", "explicit"]))
    threads = draw(st.integers(1, 3))
    workers: Any = draw(st.one_of(st.just("auto"), st.integers(1, 20)))
    if pinning == "likwid":
        pinning = draw(st.sampled_from(_EXPRESSIONS))
    elif pinning == "explicit":
        lists = draw(st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True), min_size=1, max_size=4))
        pinning = [sorted(c) for c in lists]
    return {
        "preset": draw(st.sampled_from(sorted(PRESETS))),
        "pinning": pinning,
        "workers": workers,
        "threads_per_worker": threads,
        "n_rows": draw(st.one_of(st.integers(1, 64), st.integers(1, 3_000_000))),
        "row_bytes": draw(st.sampled_from([1, 4, 8, 24, 1000, 4096, 8192])),
        "chunks_per_worker": draw(st.integers(1, 6)),
        "partition": draw(st.booleans()),
        "oversubscribe": draw(st.booleans()),
    }


def _plan_or_error(topo: Topology, job: dict[str, Any]) -> Plan | SpecError:
    args = {k: v for k, v in job.items() if k != "preset"}
    try:
        return plan_job(topology=topo, **args)
    except SpecError as exc:
        return exc


@settings(max_examples=200, deadline=None)
@given(_jobs())
def test_every_plan_keeps_the_invariants(topos: dict[str, Topology], job: dict[str, Any]) -> None:
    topo = topos[job["preset"]]
    result = _plan_or_error(topo, job)
    if isinstance(result, SpecError):
        assert result.messages
        for msg in result.messages:
            assert "\n" not in msg
            assert msg.split(":")[0] in {"workers", "data", "pinning"} or msg.startswith("pinning[")
        return
    plan = result
    t = job["threads_per_worker"]
    n = len(plan.workers)
    check_invariants(plan, topo, chunks_per_worker=job["chunks_per_worker"], partition=job["partition"])
    if job["workers"] != "auto":
        assert n == job["workers"]
    if job["pinning"] in ("compact", "scatter"):
        if job["workers"] == "auto":
            assert n == max(1, len(topo.usable_cores()) // t)
        if n * t <= len(topo.usable):
            assert all(len(w.cpus) == t for w in plan.workers)
            assert len({c for w in plan.workers for c in w.cpus}) == n * t  # no CPU shared
        if n * t <= len(topo.usable_cores()):  # one hardware thread per core
            cores = [topo.cpus[c].core for w in plan.workers for c in w.cpus]
            assert len(set(cores)) == len(cores)
    if not job["oversubscribe"] and plan.pinned:
        all_cpus = [c for w in plan.workers for c in w.cpus]
        assert len(all_cpus) == len(set(all_cpus))
    if job["pinning"] == "none":
        assert not plan.pinned
        assert all(w.cpus == topo.usable for w in plan.workers)


@settings(max_examples=100, deadline=None)
@given(_jobs())
def test_same_inputs_give_the_same_plan(
    topos: dict[str, Topology], roots: dict[str, Path], job: dict[str, Any]
) -> None:
    first = _plan_or_error(topos[job["preset"]], job)
    again = _plan_or_error(read_topology(roots[job["preset"]]), job)  # a fresh read of the same tree
    if isinstance(first, SpecError):
        assert isinstance(again, SpecError)
        assert again.messages == first.messages
        return
    assert isinstance(again, Plan)
    assert again.to_dict() == first.to_dict()
    assert again.format_table() == first.format_table()
    assert json.loads(json.dumps(first.to_dict())) == first.to_dict()


# -- one notion of page size: no page holds rows of two workers ------------------------------------


def _boundaries_bytes(plan: Plan) -> list[int]:
    return [w.rows[0] * plan.row_bytes for w in plan.workers[1:]] + [
        c[0] * plan.row_bytes for w in plan.workers for c in w.chunks[1:]
    ]


@pytest.mark.parametrize(
    ("page", "huge", "row_bytes"),
    [(4096, None, 4), (65536, None, 4), (65536, None, 12), (4096, 2 << 20, 4), (65536, 512 << 20, 8)],
)
def test_worker_boundaries_fall_on_the_real_page_size(topos, page, huge, row_bytes):
    """64 KiB base pages (aarch64, ppc64le) or huge pages for shmem: boundaries move with them."""
    import dataclasses

    topo = dataclasses.replace(topos["two_socket_smt"], page_bytes=page, huge_page_bytes=huge)
    n_rows = (4 << 30) // row_bytes  # 4 GiB: room for a whole huge page per worker
    plan = _plan(topo, "scatter", 4, n_rows=n_rows, row_bytes=row_bytes)
    unit = huge or page
    assert plan.align_bytes == unit
    assert all(b % unit == 0 for b in _boundaries_bytes(plan)), (unit, _boundaries_bytes(plan))
    assert len({p.node for p in plan.partitions}) == 2
    assert plan.to_dict()["align_bytes"] == unit


def test_too_little_data_for_huge_pages_falls_back_to_base_pages_and_says_so(topos):
    import dataclasses

    topo = dataclasses.replace(topos["two_socket_smt"], page_bytes=4096, huge_page_bytes=2 << 20)
    plan = _plan(topo, "scatter", 4, n_rows=1_000_000, row_bytes=4)  # 4 MB: 1 MB per worker < 2 MiB
    assert plan.align_bytes == 4096
    assert all(b % 4096 == 0 for b in _boundaries_bytes(plan))
    assert any("fewer than one 2048 KiB huge page" in w for w in plan.warnings)
    small = _plan(topo, "scatter", 2, n_rows=100_000, row_bytes=4)  # under 2 MiB: no huge pages at all
    assert small.align_bytes == 4096 and not any("huge" in w for w in small.warnings)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("always within_size advise [never] deny force", None),
        ("always [advise] never", 2 << 20),
        ("[always] never", 2 << 20),
        (None, None),
    ],
)
def test_topology_reads_whether_shared_memory_gets_huge_pages(tmp_path, mode, expected):
    root = two_socket_smt(tmp_path / "sys")
    if mode is not None:
        thp = root / "kernel" / "mm" / "transparent_hugepage"
        thp.mkdir(parents=True)
        (thp / "shmem_enabled").write_text(mode + "\n")
        (thp / "hpage_pmd_size").write_text(f"{2 << 20}\n")
    topo = read_topology(root)
    assert topo.huge_page_bytes == expected
    assert topo.to_dict()["huge_page_bytes"] == expected and topo.page_bytes > 0
