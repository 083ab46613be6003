"""Build fake sysfs trees (``devices/system/cpu`` + ``devices/system/node``) for tests.

Each preset mirrors a real machine shape; ``build_sysfs`` makes any other.
"""

from __future__ import annotations

from pathlib import Path

from shmhpc.cpulist import format_cpulist


def build_sysfs(
    root: Path,
    *,
    cores: dict[int, tuple[int, int]],
    nodes: dict[int, list[int]],
    online: list[int] | None = None,
    mem_kb: dict[int, int] | None = None,
    llc_kb_per_package: int = 32768,
    distances: dict[int, list[int]] | None = None,
) -> Path:
    """Write a tree under ``root``.

    cores: cpu id -> (physical_package_id, core_id) for every *present* CPU.
    nodes: node id -> CPU ids (empty list: memory-only node).
    online: online CPUs (default: all present).
    distances: node id -> its ``distance`` line (default: 10 to itself, 21 to every other node).
    """
    cpu_dir = root / "devices" / "system" / "cpu"
    node_dir = root / "devices" / "system" / "node"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    node_dir.mkdir(parents=True, exist_ok=True)
    present = sorted(cores)
    online = sorted(present if online is None else online)
    (cpu_dir / "online").write_text(format_cpulist(online) + "\n")
    (cpu_dir / "possible").write_text(format_cpulist(present) + "\n")
    by_core: dict[tuple[int, int], list[int]] = {}
    for c, key in cores.items():
        by_core.setdefault(key, []).append(c)
    by_pkg: dict[int, list[int]] = {}
    for c, (pkg, _) in cores.items():
        by_pkg.setdefault(pkg, []).append(c)
    for c in present:
        d = cpu_dir / f"cpu{c}"
        d.mkdir(exist_ok=True)
        if c not in online:
            (d / "online").write_text("0\n")
            continue  # offline CPUs have no topology directory
        pkg, core = cores[c]
        t = d / "topology"
        t.mkdir(exist_ok=True)
        (t / "physical_package_id").write_text(f"{pkg}\n")
        (t / "core_id").write_text(f"{core}\n")
        (t / "thread_siblings_list").write_text(format_cpulist(by_core[(pkg, core)]) + "\n")
        (t / "core_cpus_list").write_text(format_cpulist(by_core[(pkg, core)]) + "\n")
        for idx, (level, ctype, size, shared) in enumerate(
            [
                (1, "Data", "48K", by_core[(pkg, core)]),
                (1, "Instruction", "32K", by_core[(pkg, core)]),
                (2, "Unified", "2048K", by_core[(pkg, core)]),
                (3, "Unified", f"{llc_kb_per_package}K", by_pkg[pkg]),
            ]
        ):
            cd = d / "cache" / f"index{idx}"
            cd.mkdir(parents=True, exist_ok=True)
            (cd / "level").write_text(f"{level}\n")
            (cd / "type").write_text(ctype + "\n")
            (cd / "size").write_text(size + "\n")
            (cd / "shared_cpu_list").write_text(format_cpulist(shared) + "\n")
    mem_kb = mem_kb or {}
    for nid, cpus in nodes.items():
        nd = node_dir / f"node{nid}"
        nd.mkdir(exist_ok=True)
        (nd / "cpulist").write_text(format_cpulist(cpus) + "\n")
        row = (distances or {}).get(nid) or [10 if other == nid else 21 for other in sorted(nodes)]
        (nd / "distance").write_text(" ".join(map(str, row)) + "\n")
        total = mem_kb.get(nid, 16 * 1024 * 1024)
        (nd / "meminfo").write_text(
            f"Node {nid} MemTotal:       {total} kB\nNode {nid} MemFree:        {total // 2} kB\n"
        )
    (node_dir / "online").write_text(format_cpulist(sorted(nodes)) + "\n")
    return root


def two_socket_smt(root: Path) -> Path:
    """2 sockets x 4 cores x 2 threads, Intel numbering: siblings i and i+8.

    node 0 = socket 0 = CPUs 0-3,8-11; node 1 = socket 1 = CPUs 4-7,12-15.
    core_id repeats across sockets (0-3 on each).
    """
    cores = {}
    for c in range(16):
        phys = c % 8
        cores[c] = (phys // 4, phys % 4)
    return build_sysfs(root, cores=cores, nodes={0: [0, 1, 2, 3, 8, 9, 10, 11], 1: [4, 5, 6, 7, 12, 13, 14, 15]})


def four_numa_one_socket(root: Path) -> Path:
    """1 socket, 16 cores without SMT, 4 NUMA nodes of 4 cores (SNC/NPS4-like)."""
    cores = {c: (0, c) for c in range(16)}
    return build_sysfs(root, cores=cores, nodes={n: list(range(4 * n, 4 * n + 4)) for n in range(4)})


def memory_only_node(root: Path) -> Path:
    """Nodes 0 and 1 with 4 CPUs each, node 2 has memory and no CPUs (CXL/HBM)."""
    cores = {c: (0, c) for c in range(8)}
    return build_sysfs(root, cores=cores, nodes={0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: []}, mem_kb={2: 64 * 1024 * 1024})


def offline_noncontiguous(root: Path) -> Path:
    """8 present CPUs, 6-7 offline; node ids 0 and 2 (no node 1); adjacent SMT pairs (AMD style)."""
    cores = {c: (0, c // 2) for c in range(8)}
    return build_sysfs(root, cores=cores, nodes={0: [0, 1, 2, 3], 2: [4, 5, 6, 7]}, online=[0, 1, 2, 3, 4, 5])
