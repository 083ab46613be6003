"""Reading CPUs, cores, SMT siblings, NUMA nodes, caches and the usable CPU set from a sysfs root."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fakesys import build_sysfs, four_numa_one_socket, memory_only_node, offline_noncontiguous, two_socket_smt
from hypothesis import given, settings
from hypothesis import strategies as st

from shmhpc.errors import SpecError
from shmhpc.topology import Topology, default_sysfs_root, read_topology

KIB = 1024
MIB = 1024**2
GIB = 1024**3
FAKE_SOURCE = "all online CPUs of the sysfs root"


def _cpu_dir(root: Path) -> Path:
    return root / "devices" / "system" / "cpu"


def _node_dir(root: Path) -> Path:
    return root / "devices" / "system" / "node"


def _all_cpu_ids(topo: Topology) -> set[int]:
    """Every CPU id the topology mentions anywhere."""
    ids = set(topo.cpus) | set(topo.usable)
    for cpu in topo.cpus.values():
        ids |= {cpu.id, *cpu.siblings}
    for node in topo.nodes.values():
        ids |= set(node.cpus)
    for cache in topo.caches:
        ids |= set(cache.shared_cpus)
    return ids


def _assert_json_ready(value: object) -> None:
    """Only dicts with str keys, lists, str, int, float, bool and None: no tuples or sets."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str)
            _assert_json_ready(v)
    elif isinstance(value, list):
        for v in value:
            _assert_json_ready(v)
    else:
        assert value is None or isinstance(value, (str, int, float)), repr(value)


# -- the presets -------------------------------------------------------------------------


def test_two_socket_smt(tmp_path: Path) -> None:
    topo = read_topology(two_socket_smt(tmp_path))
    assert topo.root == str(tmp_path)
    assert topo.online == tuple(range(16))
    assert topo.usable == tuple(range(16))
    assert topo.usable_source == FAKE_SOURCE
    assert topo.cpu_quota is None
    assert topo.notes == []
    assert topo.packages() == [0, 1]
    assert sorted(topo.nodes) == [0, 1]
    assert topo.nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert topo.nodes[1].cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert topo.nodes[0].mem_total_bytes == 16 * GIB
    assert topo.nodes[0].mem_free_bytes == 8 * GIB
    for c in range(16):
        assert topo.node_of(c) == (0 if c % 8 < 4 else 1)


def test_two_socket_siblings_are_keyed_by_package_and_core_id(tmp_path: Path) -> None:
    topo = read_topology(two_socket_smt(tmp_path))
    # core_id 0 exists on both sockets: CPUs 0/8 (socket 0) and 4/12 (socket 1) are two cores.
    assert topo.cpus[0].core_id == topo.cpus[4].core_id == 0
    assert topo.cpus[0].core == (0, 0)
    assert topo.cpus[4].core == (1, 0)
    # Intel numbering: siblings i and i+8.
    for c in range(8):
        assert topo.cpus[c].siblings == (c, c + 8)
        assert topo.cpus[c + 8].siblings == (c, c + 8)
        assert topo.cpus[c].smt_index == 0
        assert topo.cpus[c + 8].smt_index == 1
        assert topo.cpus[c].core == topo.cpus[c + 8].core
    assert len({cpu.core for cpu in topo.cpus.values()}) == 8


def test_two_socket_usable_cores_order_and_count(tmp_path: Path) -> None:
    topo = read_topology(two_socket_smt(tmp_path))
    assert topo.usable_cores() == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_two_socket_caches(tmp_path: Path) -> None:
    topo = read_topology(two_socket_smt(tmp_path))
    by_level: dict[tuple[int, str], list] = {}
    for cache in topo.caches:
        by_level.setdefault((cache.level, cache.type), []).append(cache)
    # One instance per core for L1d, L1i and L2; one L3 per socket, shared by its 8 threads.
    assert {k: len(v) for k, v in by_level.items()} == {
        (1, "Data"): 8,
        (1, "Instruction"): 8,
        (2, "Unified"): 8,
        (3, "Unified"): 2,
    }
    assert {c.size_bytes for c in by_level[(1, "Data")]} == {48 * KIB}
    assert {c.size_bytes for c in by_level[(1, "Instruction")]} == {32 * KIB}
    assert {c.size_bytes for c in by_level[(2, "Unified")]} == {2 * MIB}
    assert sorted(c.shared_cpus for c in by_level[(3, "Unified")]) == [
        (0, 1, 2, 3, 8, 9, 10, 11),
        (4, 5, 6, 7, 12, 13, 14, 15),
    ]
    assert sorted(c.shared_cpus for c in by_level[(1, "Data")]) == [(c, c + 8) for c in range(8)]
    assert [c.level for c in topo.caches] == sorted(c.level for c in topo.caches)
    assert topo.llc_bytes() == 2 * 32 * MIB


def test_four_numa_one_socket(tmp_path: Path) -> None:
    topo = read_topology(four_numa_one_socket(tmp_path))
    assert topo.online == tuple(range(16))
    assert topo.packages() == [0]
    assert {n: node.cpus for n, node in topo.nodes.items()} == {n: tuple(range(4 * n, 4 * n + 4)) for n in range(4)}
    for c in range(16):
        assert topo.cpus[c].node == c // 4
        assert topo.cpus[c].siblings == (c,)  # no SMT
        assert topo.cpus[c].smt_index == 0
    assert topo.usable_cores() == [(0, c) for c in range(16)]
    # One L3 shared by all 16 cores, counted once.
    assert topo.llc_bytes() == 32 * MIB
    assert [k.shared_cpus for k in topo.caches if k.level == 3] == [tuple(range(16))]


def test_memory_only_node(tmp_path: Path) -> None:
    topo = read_topology(memory_only_node(tmp_path))
    assert sorted(topo.nodes) == [0, 1, 2]
    assert topo.nodes[2].cpus == ()
    assert topo.nodes[2].mem_total_bytes == 64 * GIB
    assert topo.nodes[2].mem_free_bytes == 32 * GIB
    assert topo.nodes[0].mem_total_bytes == 16 * GIB
    assert {cpu.node for cpu in topo.cpus.values()} == {0, 1}
    assert topo.usable == tuple(range(8))
    assert len(topo.usable_cores()) == 8
    assert topo.notes == []
    d = topo.to_dict()
    assert d["nodes"][2] == {
        "id": 2,
        "cpus": [],
        "mem_total_bytes": 64 * GIB,
        "mem_free_bytes": 32 * GIB,
        "distances": [21, 21, 10],
    }


def test_offline_noncontiguous(tmp_path: Path) -> None:
    topo = read_topology(offline_noncontiguous(tmp_path))
    assert topo.online == (0, 1, 2, 3, 4, 5)
    assert topo.usable == (0, 1, 2, 3, 4, 5)
    assert sorted(topo.nodes) == [0, 2]  # no node 1
    assert topo.nodes[0].cpus == (0, 1, 2, 3)
    assert topo.nodes[2].cpus == (4, 5)
    assert topo.cpus[4].node == 2
    # AMD-style adjacent siblings; the core of offline CPUs 6-7 is gone entirely.
    assert [topo.cpus[c].siblings for c in range(6)] == [(0, 1), (0, 1), (2, 3), (2, 3), (4, 5), (4, 5)]
    assert topo.usable_cores() == [(0, 0), (0, 1), (0, 2)]
    assert topo.notes == []


def test_offline_cpus_appear_nowhere(tmp_path: Path) -> None:
    topo = read_topology(offline_noncontiguous(tmp_path))
    assert _all_cpu_ids(topo) == {0, 1, 2, 3, 4, 5}
    # The fake tree's L3 shared_cpu_list still names 6-7; the shared set is the online part.
    assert [k.shared_cpus for k in topo.caches if k.level == 3] == [(0, 1, 2, 3, 4, 5)]
    d = topo.to_dict()
    listed = set(d["online"]) | set(d["usable"])
    for node in d["nodes"]:
        listed |= set(node["cpus"])
    for cpu in d["cpus"]:
        listed |= {cpu["id"], *cpu["siblings"]}
    for cache in d["caches"]:
        listed |= set(cache["shared_cpus"])
    assert listed == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("preset", [two_socket_smt, four_numa_one_socket, memory_only_node, offline_noncontiguous])
def test_to_dict_is_json_with_integer_lists(tmp_path: Path, preset: Callable[[Path], Path]) -> None:
    topo = read_topology(preset(tmp_path))
    d = topo.to_dict()
    _assert_json_ready(d)
    # Tuples would come back as lists and break this equality.
    assert json.loads(json.dumps(d, sort_keys=True)) == d
    assert d["online"] == list(topo.online)
    assert d["usable"] == list(topo.usable)
    assert d["usable_source"] == FAKE_SOURCE
    assert d["root"] == str(tmp_path)
    assert d["packages"] == topo.packages()
    assert d["physical_cores"] == len({c.core for c in topo.cpus.values()})
    assert d["usable_physical_cores"] == len(topo.usable_cores())
    assert d["llc_bytes"] == topo.llc_bytes()
    assert [n["id"] for n in d["nodes"]] == sorted(topo.nodes)
    assert [c["id"] for c in d["cpus"]] == list(topo.online)
    for cpu in d["cpus"]:
        assert all(type(s) is int for s in cpu["siblings"])
    for key in ("online", "usable"):
        assert all(type(c) is int for c in d[key])


def test_to_dict_values_two_socket(tmp_path: Path) -> None:
    d = read_topology(two_socket_smt(tmp_path), allowed_cpus=[0, 8, 4]).to_dict()
    assert d["physical_cores"] == 8
    assert d["usable_physical_cores"] == 2
    assert d["usable"] == [0, 4, 8]
    assert d["usable_source"] == "override"
    assert d["packages"] == [0, 1]
    assert d["llc_bytes"] == 64 * MIB
    assert d["cpus"][12] == {"id": 12, "package": 1, "die": 0, "core_id": 0, "node": 1, "siblings": [4, 12]}
    assert d["dies"] == 2
    assert d["notes"] == []


# -- usable_cores order ------------------------------------------------------------------


def test_usable_cores_follow_node_order_not_cpu_ids(tmp_path: Path) -> None:
    # Node 0 holds the higher-numbered cores: order is by node first.
    cores = {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3)}
    topo = read_topology(build_sysfs(tmp_path, cores=cores, nodes={0: [2, 3], 1: [0, 1]}))
    assert topo.usable_cores() == [(0, 2), (0, 3), (0, 0), (0, 1)]


def test_usable_cores_order_package_then_core_id_within_a_node(tmp_path: Path) -> None:
    # CPU ids say nothing about order: package 1 owns CPUs 0-1, and core_ids run backwards.
    cores = {0: (1, 1), 1: (1, 0), 2: (0, 5), 3: (0, 4)}
    topo = read_topology(build_sysfs(tmp_path, cores=cores, nodes={0: [0, 1, 2, 3]}))
    assert topo.usable_cores() == [(0, 4), (0, 5), (1, 0), (1, 1)]


@pytest.mark.parametrize(
    ("allowed", "cores"),
    [
        ([8], [(0, 0)]),  # the second thread alone still gives its core
        ([0, 8], [(0, 0)]),  # both threads of one core count once
        ([12, 1], [(0, 1), (1, 0)]),
        ([15, 7, 3], [(0, 3), (1, 3)]),
        (list(range(16)), [(p, c) for p in (0, 1) for c in range(4)]),
    ],
)
def test_usable_cores_of_a_subset(tmp_path: Path, allowed: list[int], cores: list[tuple[int, int]]) -> None:
    topo = read_topology(two_socket_smt(tmp_path), allowed_cpus=allowed)
    assert topo.usable_cores() == cores


# -- degraded trees ----------------------------------------------------------------------


def test_no_node_directory_gives_one_node_with_a_note(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    shutil.rmtree(_node_dir(root))
    topo = read_topology(root)
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == tuple(range(16))
    assert topo.nodes[0].mem_total_bytes is None
    assert {cpu.node for cpu in topo.cpus.values()} == {0}
    assert len(topo.notes) == 1
    assert "one node" in topo.notes[0]
    # The rest of the topology is unaffected.
    assert topo.cpus[0].siblings == (0, 8)
    assert topo.usable_cores() == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_node_directory_without_nodes_gives_one_node(tmp_path: Path) -> None:
    root = four_numa_one_socket(tmp_path)
    for p in _node_dir(root).glob("node*"):
        shutil.rmtree(p)
    topo = read_topology(root)
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == tuple(range(16))
    assert any("one node" in n for n in topo.notes)


def test_no_topology_files_makes_each_cpu_its_own_core(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    for c in range(16):
        shutil.rmtree(_cpu_dir(root) / f"cpu{c}" / "topology")
    topo = read_topology(root)
    assert topo.online == tuple(range(16))
    for c in range(16):
        assert topo.cpus[c].siblings == (c,)
        assert topo.cpus[c].core == (0, c)
        assert topo.cpus[c].smt_index == 0
    assert len(topo.usable_cores()) == 16
    # Nodes still come from the node directory.
    assert topo.cpus[12].node == 1
    assert topo.usable_cores()[:8] == [(0, c) for c in (0, 1, 2, 3, 8, 9, 10, 11)]


def test_missing_core_id_only(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    for c in range(16):
        (_cpu_dir(root) / f"cpu{c}" / "topology" / "core_id").unlink()
    topo = read_topology(root)
    assert all(cpu.siblings == (cpu.id,) for cpu in topo.cpus.values())
    assert len(topo.usable_cores()) == 16
    assert topo.packages() == [0, 1]


def test_no_cache_directories(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    for c in range(16):
        shutil.rmtree(_cpu_dir(root) / f"cpu{c}" / "cache")
    topo = read_topology(root)
    assert topo.caches == []
    assert topo.llc_bytes() is None
    assert topo.to_dict()["llc_bytes"] is None


def test_llc_bytes_uses_the_tree_sizes(tmp_path: Path) -> None:
    cores = {c: (c // 2, c % 2) for c in range(6)}  # 3 packages of 2 cores
    root = build_sysfs(tmp_path, cores=cores, nodes={0: list(range(6))}, llc_kb_per_package=1536)
    assert read_topology(root).llc_bytes() == 3 * 1536 * KIB


def test_missing_online_file_uses_cpu_directories(tmp_path: Path) -> None:
    root = four_numa_one_socket(tmp_path)
    (_cpu_dir(root) / "online").unlink()
    topo = read_topology(root)
    assert topo.online == tuple(range(16))
    assert any("cpu/online missing" in n for n in topo.notes)


def test_cpu_in_no_node_is_counted_on_the_lowest_node_with_cpus(tmp_path: Path) -> None:
    cores = {c: (0, c) for c in range(4)}
    root = build_sysfs(tmp_path, cores=cores, nodes={0: [], 3: [0, 1], 5: [2]})
    topo = read_topology(root)
    assert topo.cpus[3].node == 3
    assert topo.nodes[3].cpus == (0, 1, 3)
    assert topo.nodes[0].cpus == ()
    assert any("cpu 3" in n for n in topo.notes)


def test_garbage_meminfo_leaves_memory_unknown(tmp_path: Path) -> None:
    root = memory_only_node(tmp_path)
    (_node_dir(root) / "node2" / "meminfo").write_text("Node 2 MemTotal: lots kB\n")
    (_node_dir(root) / "node1" / "meminfo").unlink()
    topo = read_topology(root)
    assert topo.nodes[2].mem_total_bytes is None
    assert topo.nodes[1].mem_total_bytes is None
    assert topo.nodes[0].mem_total_bytes == 16 * GIB


# -- roots that are not sysfs trees ------------------------------------------------------


def _one_line_spec_error(root: object, *expected: str) -> str:
    with pytest.raises(SpecError) as info:
        read_topology(root)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg
    assert len(info.value.messages) == 1
    for part in expected:
        assert part in msg
    return msg


def test_empty_directory_is_not_a_sysfs_tree(tmp_path: Path) -> None:
    _one_line_spec_error(tmp_path, str(tmp_path), "devices/system/cpu")


def test_missing_root_is_not_a_sysfs_tree(tmp_path: Path) -> None:
    _one_line_spec_error(tmp_path / "nope", "nope", "devices/system/cpu")


def test_a_file_is_not_a_sysfs_tree(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_spec_error(f, "devices/system/cpu")


def test_tree_with_no_online_cpus(tmp_path: Path) -> None:
    _cpu_dir(tmp_path).mkdir(parents=True)
    (_cpu_dir(tmp_path) / "online").write_text("\n")
    _one_line_spec_error(tmp_path, "no online CPUs")


def test_malformed_online_file_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    (_cpu_dir(root) / "online").write_text("0-3,x\n")
    _one_line_spec_error(root, "online", "'x'")


def test_malformed_node_cpulist_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    (_node_dir(root) / "node1" / "cpulist").write_text("7-4\n")
    _one_line_spec_error(root, "node1", "cpulist", "7-4")


def test_binary_file_is_treated_as_missing(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    (_cpu_dir(root) / "cpu3" / "topology" / "core_id").write_bytes(b"\xff\xfe\x00")
    topo = read_topology(root)
    assert topo.cpus[3].siblings == (3,)  # its own core
    assert topo.cpus[11].siblings == (11,)  # so its sibling is alone
    assert topo.cpus[0].siblings == (0, 8)  # the rest unchanged
    assert len(topo.usable_cores()) == 9


def test_some_cpus_without_core_id_never_join_another_core(tmp_path: Path) -> None:
    # A CPU whose topology could not be read must not collide with a real core_id:
    # falling back to core_id = cpu id would put CPU 1 on core (0, 1) beside CPUs 2 and 3.
    cores = {0: (0, 0), 1: (0, 7), 2: (0, 1), 3: (0, 1)}
    root = build_sysfs(tmp_path, cores=cores, nodes={0: [0, 1, 2, 3]})
    (_cpu_dir(root) / "cpu1" / "topology" / "core_id").unlink()
    topo = read_topology(root)
    assert [topo.cpus[c].siblings for c in range(4)] == [(0,), (1,), (2, 3), (2, 3)]
    assert topo.cpus[1].core not in {topo.cpus[c].core for c in (0, 2, 3)}
    assert len(topo.usable_cores()) == 3


# -- the usable set ----------------------------------------------------------------------


def test_override_becomes_usable(tmp_path: Path) -> None:
    topo = read_topology(two_socket_smt(tmp_path), allowed_cpus=[13, 2, 2, 5])
    assert topo.usable == (2, 5, 13)
    assert topo.usable_source == "override"
    # The machine description itself is not narrowed.
    assert topo.online == tuple(range(16))
    assert topo.nodes[1].cpus == (4, 5, 6, 7, 12, 13, 14, 15)


@pytest.mark.parametrize("allowed", [[6], [0, 7], [99]])
def test_override_with_an_offline_or_missing_cpu(tmp_path: Path, allowed: list[int]) -> None:
    root = offline_noncontiguous(tmp_path)
    with pytest.raises(SpecError) as info:
        read_topology(root, allowed_cpus=allowed)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"CPU {allowed[-1]} " in msg
    assert "online CPUs: 0-5" in msg


def test_override_names_every_bad_cpu(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"CPU 16,40 is not online.*online CPUs: 0-15"):
        read_topology(two_socket_smt(tmp_path), allowed_cpus=[0, 16, 40, 16])


@pytest.mark.parametrize("allowed", [[-1], [True]])
def test_override_with_non_cpu_values_is_a_spec_error(tmp_path: Path, allowed: list) -> None:
    with pytest.raises(SpecError, match="online CPUs: 0-15"):
        read_topology(two_socket_smt(tmp_path), allowed_cpus=allowed)


def test_empty_override_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="usable CPUs: none"):
        read_topology(two_socket_smt(tmp_path), allowed_cpus=[])


def test_override_accepts_any_iterable_of_ints(tmp_path: Path) -> None:
    root = two_socket_smt(tmp_path)
    assert read_topology(root, allowed_cpus=(3, 1)).usable == (1, 3)  # type: ignore[arg-type]
    assert read_topology(root, allowed_cpus={9}).usable == (9,)  # type: ignore[arg-type]


# -- hypothesis: random machines ---------------------------------------------------------


@st.composite
def _machines(draw: st.DrawFn) -> tuple[dict[int, tuple[int, int]], list[int]]:
    packages = draw(st.integers(1, 3))
    cores_per = draw(st.integers(1, 4))
    threads = draw(st.integers(1, 2))
    intel = draw(st.booleans())
    physical = [(p, draw(st.integers(0, 40))) for p in range(packages) for _ in range(cores_per)]
    physical = list(dict.fromkeys(physical))  # drop duplicate core_ids in a package
    n = len(physical)
    cores: dict[int, tuple[int, int]] = {}
    for i, key in enumerate(physical):
        for t in range(threads):
            cores[i + t * n if intel else i * threads + t] = key
    present = sorted(cores)
    online = draw(st.lists(st.sampled_from(present), min_size=1, unique=True))
    return cores, sorted(online)


@settings(max_examples=30, deadline=None)
@given(_machines())
def test_random_machines(machine: tuple[dict[int, tuple[int, int]], list[int]]) -> None:
    cores, online = machine
    nodes: dict[int, list[int]] = {}
    for c, (pkg, _) in cores.items():
        nodes.setdefault(pkg * 2, []).append(c)  # node ids 0, 2, 4: never contiguous
    with tempfile.TemporaryDirectory() as d:
        topo = read_topology(build_sysfs(Path(d), cores=cores, nodes=nodes, online=online))
    assert topo.online == tuple(online)
    assert topo.usable == tuple(online)
    assert _all_cpu_ids(topo) == set(online)
    for c in online:
        expected = tuple(s for s in online if cores[s] == cores[c])
        assert topo.cpus[c].siblings == expected
        assert topo.cpus[c].core == cores[c]
        assert topo.cpus[c].node == cores[c][0] * 2
    usable_cores = topo.usable_cores()
    assert len(usable_cores) == len(set(usable_cores)) == len({cores[c] for c in online})
    assert usable_cores == sorted(usable_cores)  # node follows package here, so (package, core_id) order
    assert sorted(topo.nodes) == sorted(nodes)


# -- the real machine and the environment ------------------------------------------------

needs_real_sysfs = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not hasattr(os, "sched_getaffinity")
    or not Path("/sys/devices/system/cpu/online").is_file(),
    reason="needs Linux /sys and sched_getaffinity",
)


@needs_real_sysfs
def test_real_root_usable_is_within_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHMHPC_SYSFS_ROOT", raising=False)
    topo = read_topology("/sys")
    affinity = os.sched_getaffinity(0)
    assert topo.usable
    assert set(topo.usable) <= affinity
    assert set(topo.usable) <= set(topo.online)
    assert "affinity" in topo.usable_source
    assert set(topo.usable) <= {c for n in topo.nodes.values() for c in n.cpus}
    json.dumps(topo.to_dict())
    # The default root is the real one too.
    assert read_topology().usable == topo.usable


@needs_real_sysfs
def test_real_root_follows_narrowed_affinity() -> None:
    before = os.sched_getaffinity(0)
    cpu = max(before)  # not 0 where possible: CPU ids need not start at 0
    try:
        os.sched_setaffinity(0, {cpu})
        topo = read_topology("/sys")
        assert topo.usable == (cpu,)
        assert len(topo.usable_cores()) == 1
        # A fake root describes another machine: this process's affinity does not narrow it.
        with tempfile.TemporaryDirectory() as d:
            assert read_topology(two_socket_smt(Path(d))).usable == tuple(range(16))
    finally:
        os.sched_setaffinity(0, before)
    assert os.sched_getaffinity(0) == before


@needs_real_sysfs
def test_symlink_to_sys_counts_as_the_real_root(tmp_path: Path) -> None:
    link = tmp_path / "sys"
    link.symlink_to("/sys")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        os.sched_setaffinity(0, {cpu})
        assert read_topology(link).usable == (cpu,)
    finally:
        os.sched_setaffinity(0, before)


@needs_real_sysfs
def test_override_applies_to_the_real_root_too() -> None:
    online = read_topology("/sys").online
    topo = read_topology("/sys", allowed_cpus=[online[0]])
    assert topo.usable == (online[0],)
    assert topo.usable_source == "override"


def test_env_var_changes_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = offline_noncontiguous(tmp_path)
    monkeypatch.setenv("SHMHPC_SYSFS_ROOT", str(root))
    assert default_sysfs_root() == str(root)
    topo = read_topology()
    assert topo.root == str(root)
    assert topo.online == (0, 1, 2, 3, 4, 5)
    assert topo.usable_source == FAKE_SOURCE
    # An explicit root still wins over the variable.
    other = two_socket_smt(tmp_path / "other")
    assert read_topology(other).online == tuple(range(16))


@pytest.mark.parametrize("value", [None, ""])
def test_default_root_is_sys(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SHMHPC_SYSFS_ROOT", raising=False)
    else:
        monkeypatch.setenv("SHMHPC_SYSFS_ROOT", value)
    assert default_sysfs_root() == "/sys"


def test_env_var_pointing_nowhere_is_a_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMHPC_SYSFS_ROOT", str(tmp_path / "missing"))
    with pytest.raises(SpecError, match="missing"):
        read_topology()


# -- real machines' sysfs quirks -------------------------------------------------------------------


def test_cpulist_padded_with_nul_bytes_reads(tmp_path: Path) -> None:
    """Seen on a 128-core ARM server: node*/cpulist ends in NUL padding."""
    root = build_sysfs(tmp_path, cores={c: (0, c) for c in range(4)}, nodes={0: [0, 1], 1: [2, 3]})
    node1 = root / "devices" / "system" / "node" / "node1" / "cpulist"
    node1.write_bytes(b"2-3\n" + b"\x00" * 64)
    topo = read_topology(root)
    assert topo.nodes[1].cpus == (2, 3)


def test_nodes_with_only_a_cpumap_are_read(tmp_path: Path) -> None:
    """Older kernels and some dumps have node*/cpumap (hex mask) and no cpulist: still 4 nodes."""
    nodes = {n: list(range(4 * n, 4 * n + 4)) for n in range(4)}
    root = build_sysfs(tmp_path, cores={c: (0, c) for c in range(16)}, nodes=nodes)
    for n, cpus in nodes.items():
        d = root / "devices" / "system" / "node" / f"node{n}"
        (d / "cpulist").unlink()
        mask = sum(1 << c for c in cpus)
        (d / "cpumap").write_text(f"00000000,{mask:08x}\n")
    topo = read_topology(root)
    assert {n: node.cpus for n, node in topo.nodes.items()} == {n: tuple(c) for n, c in nodes.items()}
    assert any("node 3: no cpulist, CPUs read from cpumap" in note for note in topo.notes)


def test_a_malformed_cpumap_names_the_file(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path, cores={0: (0, 0)}, nodes={0: [0]})
    d = root / "devices" / "system" / "node" / "node0"
    (d / "cpulist").unlink()
    (d / "cpumap").write_text("zz\n")
    with pytest.raises(SpecError, match=r"node0/cpumap: 'zz' is not a hex CPU mask"):
        read_topology(root)


def test_without_cpu_online_each_cpu_says_whether_it_is_online(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path, cores={c: (0, c) for c in range(4)}, nodes={0: [0, 1, 2, 3]}, online=[0, 1, 2])
    (root / "devices" / "system" / "cpu" / "online").unlink()
    topo = read_topology(root)
    assert topo.online == (0, 1, 2), "cpu3/online says 0"
    assert any("unless its own cpuN/online says 0" in n for n in topo.notes)


@pytest.mark.parametrize("smt", [False, True])
def test_multi_die_packages_where_core_id_restarts_keep_their_cores(tmp_path: Path, smt: bool) -> None:
    """One package, 2 dies × 4 cores, core_id 0-3 in each die (multi-die Intel/AMD parts).

    (package, core_id) alone would merge die 0's core k with die 1's core k into one "SMT pair";
    the kernel's core siblings lists say which CPUs really share a core.
    """
    n_cores = 8
    threads = 2 if smt else 1
    cores = {c: (0, (c % n_cores) % 4) for c in range(n_cores * threads)}  # core_id restarts per die
    root = build_sysfs(tmp_path, cores=cores, nodes={0: list(cores)})
    for c in cores:
        t = root / "devices" / "system" / "cpu" / f"cpu{c}" / "topology"
        core = c % n_cores
        siblings = [core, core + n_cores] if smt else [core]
        text = ",".join(map(str, siblings)) + "\n"
        (t / "thread_siblings_list").write_text(text)
        (t / "core_cpus_list").write_text(text)
        (t / "die_id").write_text(f"{core // 4}\n")
    topo = read_topology(root)
    assert len({cpu.core for cpu in topo.cpus.values()}) == n_cores
    assert topo.cpus[0].siblings == ((0, 8) if smt else (0,))
    assert topo.cpus[4].siblings == ((4, 12) if smt else (4,)), "die 1's core 0 is not die 0's core 0"
    assert len(topo.usable_cores()) == n_cores
    d = topo.to_dict()
    assert d["dies"] == 2 and d["physical_cores"] == n_cores
    assert any("core_id repeats across its dies (0, 1)" in n for n in topo.notes)
