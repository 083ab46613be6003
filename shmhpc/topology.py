"""What the machine looks like: CPUs, physical cores, SMT siblings, packages,
NUMA nodes, caches and the CPUs this process may use.

Everything is parsed from a sysfs root laid out like the kernel's
``devices/system/cpu`` and ``devices/system/node``, so tests can point it at a
fake tree. The default root is ``/sys`` (or ``$SHMHPC_SYSFS_ROOT``).

Hardware facts handled here (see the Linux ABI docs,
https://www.kernel.org/doc/Documentation/ABI/stable/sysfs-devices-system-cpu):

* physical cores are keyed by ``(physical_package_id, core_id)``: ``core_id``
  repeats across sockets;
* SMT siblings may be numbered ``i`` and ``i+N`` (Intel) or adjacently (AMD);
* CPU ids and NUMA node ids need not be contiguous, CPUs can be offline and a
  node can have memory but no CPUs (CXL, HBM).
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .cpulist import format_cpulist, parse_cpulist, parse_cpumask
from .errors import SpecError

__all__ = ["Cache", "Cpu", "Node", "Topology", "default_sysfs_root", "read_topology"]

DEFAULT_ROOT = "/sys"


def default_sysfs_root() -> str:
    """The sysfs root to read: ``$SHMHPC_SYSFS_ROOT`` or ``/sys``."""
    return os.environ.get("SHMHPC_SYSFS_ROOT") or DEFAULT_ROOT


@dataclass(frozen=True)
class Cpu:
    """One logical CPU (hardware thread)."""

    id: int
    package: int
    core_id: int
    node: int
    siblings: tuple[int, ...]  # all hardware threads of this physical core, this one included
    die: int = 0  # die within the package (topology/die_id), 0 where the kernel does not say

    @property
    def core(self) -> tuple[int, int]:
        """The physical core key ``(package, core_id)``."""
        return (self.package, self.core_id)

    @property
    def smt_index(self) -> int:
        """0 for the first hardware thread of its core, 1 for the next, …"""
        return self.siblings.index(self.id)


@dataclass(frozen=True)
class Node:
    """One NUMA node; ``cpus`` may be empty (memory-only node)."""

    id: int
    cpus: tuple[int, ...]
    mem_total_bytes: int | None
    mem_free_bytes: int | None
    # ACPI SLIT distances to every node in id order (10 = local), from nodeN/distance; None if unknown
    distances: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Cache:
    level: int
    type: str
    size_bytes: int | None
    shared_cpus: tuple[int, ...]


@dataclass
class Topology:
    """A machine as shmhpc sees it.

    ``usable`` is the set of CPUs this process may run workers on (affinity ∩
    cgroup cpuset for the real machine, all online CPUs for a fake root, or an
    explicit override); ``usable_source`` says which.
    """

    root: str
    cpus: dict[int, Cpu]
    nodes: dict[int, Node]
    caches: list[Cache]
    usable: tuple[int, ...]
    usable_source: str
    cpu_quota: float | None = None  # cgroup cpu.max quota in CPUs, when limited
    notes: list[str] = field(default_factory=list)
    # The base page size, and the huge page size when shared memory gets huge pages (transparent
    # huge pages for shmem: always, within_size, advise — segments ask with MADV_HUGEPAGE — or force).
    # NUMA placement is per page: no page may hold rows of two partitions (aarch64 and ppc64le often
    # run with 64 KiB base pages; a 2 MiB huge page spans 512 of x86's 4 KiB ones).
    page_bytes: int = mmap.PAGESIZE
    huge_page_bytes: int | None = None

    # -- derived views ---------------------------------------------------------------
    @property
    def online(self) -> tuple[int, ...]:
        return tuple(sorted(self.cpus))

    def usable_cores(self) -> list[tuple[int, int]]:
        """Physical cores that have at least one usable CPU, in (node, package, core) order."""
        seen: dict[tuple[int, int], int] = {}
        for c in sorted(self.usable, key=self._cpu_order_key):
            seen.setdefault(self.cpus[c].core, self.cpus[c].node)
        return list(seen)

    def _cpu_order_key(self, cpu: int) -> tuple[int, int, int, int]:
        c = self.cpus[cpu]
        return (c.node, c.package, c.core_id, c.smt_index)

    def node_of(self, cpu: int) -> int:
        return self.cpus[cpu].node

    def packages(self) -> list[int]:
        return sorted({c.package for c in self.cpus.values()})

    def llc_bytes(self) -> int | None:
        """Total last-level cache, summed over distinct cache instances."""
        if not self.caches:
            return None
        top = max(c.level for c in self.caches)
        inst = {c.shared_cpus: c.size_bytes or 0 for c in self.caches if c.level == top and c.type != "Instruction"}
        return sum(inst.values()) or None

    def distance_matrix(self) -> dict | None:
        """``{"nodes": [ids], "matrix": [[d]]}`` (row i: node i's distance to each node), or None if unknown."""
        rows = [n.distances for n in self.nodes.values()]
        if not rows or any(r is None for r in rows):
            return None
        return {"nodes": list(self.nodes), "matrix": [list(r) for r in rows if r is not None]}

    def to_dict(self) -> dict:
        """JSON-ready description (CPU lists as integer lists)."""
        return {
            "root": self.root,
            "online": list(self.online),
            "usable": list(self.usable),
            "usable_source": self.usable_source,
            "cpu_quota": self.cpu_quota,
            "packages": self.packages(),
            "dies": len({(c.package, c.die) for c in self.cpus.values()}),
            "physical_cores": len({c.core for c in self.cpus.values()}),
            "usable_physical_cores": len(self.usable_cores()),
            "nodes": [
                {
                    "id": n.id,
                    "cpus": list(n.cpus),
                    "mem_total_bytes": n.mem_total_bytes,
                    "mem_free_bytes": n.mem_free_bytes,
                    "distances": None if n.distances is None else list(n.distances),
                }
                for n in self.nodes.values()
            ],
            "numa_distances": self.distance_matrix(),
            "cpus": [
                {
                    "id": c.id,
                    "package": c.package,
                    "die": c.die,
                    "core_id": c.core_id,
                    "node": c.node,
                    "siblings": list(c.siblings),
                }
                for c in self.cpus.values()
            ],
            "caches": [
                {"level": k.level, "type": k.type, "size_bytes": k.size_bytes, "shared_cpus": list(k.shared_cpus)}
                for k in self.caches
            ],
            "llc_bytes": self.llc_bytes(),
            "page_bytes": self.page_bytes,
            "huge_page_bytes": self.huge_page_bytes,
            "notes": list(self.notes),
        }


# -- reading -------------------------------------------------------------------------


def read_text(path: str | os.PathLike[str]) -> str | None:
    """A small kernel file (sysfs, procfs) stripped, or None when absent, unreadable or not text."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


_SIZE_RE = re.compile(r"^(\d+)\s*([KMG]?)$", re.IGNORECASE)


def _parse_size(text: str | None) -> int | None:
    if not text:
        return None
    m = _SIZE_RE.match(text.strip())
    if not m:
        return None
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    return int(m.group(1)) * mult


def _read_cpulist(path: Path) -> list[int] | None:
    """A CPU-list file, ``None`` when absent; a malformed one is a ``SpecError`` naming the file."""
    return _read_cpu_file(path, parse_cpulist)


def _read_cpumask(path: Path) -> list[int] | None:
    """A hex CPU-mask file (``cpumap``), ``None`` when absent; a malformed one is a ``SpecError``."""
    return _read_cpu_file(path, parse_cpumask)


def _read_cpu_file(path: Path, parse: Callable[[str], list[int]]) -> list[int] | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        # Some kernels pad the file with NUL bytes after the list (seen on a 128-core ARM server).
        return parse(text.strip("\x00 \t\n"))
    except ValueError as e:
        raise SpecError(f"sysfs: {path}: {e}") from None


def _meminfo(path: Path) -> tuple[int | None, int | None]:
    text = read_text(path)
    if text is None:
        return None, None
    total = free = None
    for line in text.splitlines():
        # "Node 0 MemTotal:       32768 kB"
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("MemTotal:", "MemFree:") and parts[3].isdigit():
            val = int(parts[3]) * (1024 if parts[-1] == "kB" else 1)
            if parts[2] == "MemTotal:":
                total = val
            else:
                free = val
    return total, free


def read_topology(root: str | os.PathLike[str] | None = None, allowed_cpus: list[int] | None = None) -> Topology:
    """Read the machine under ``root`` (default: ``default_sysfs_root()``).

    Parameters
    ----------
    root:
        A sysfs root. For the real ``/sys`` the usable CPUs are this process's
        affinity ∩ the cgroup cpuset; for any other root, all online CPUs.
    allowed_cpus:
        Overrides the usable set (to plan for another machine or allocation).
        Every id must be an online CPU of the tree.
    """
    root_s = str(root) if root is not None else default_sysfs_root()
    base = Path(root_s)
    cpu_dir = base / "devices" / "system" / "cpu"
    notes: list[str] = []
    online = _read_online(cpu_dir, root_s, notes)
    node_cpus, node_mem = _read_nodes(base / "devices" / "system" / "node", online, notes)
    cpu_node = {c: nid for nid, cs in node_cpus.items() for c in cs}
    cpus, caches = _read_cpus(cpu_dir, online, cpu_node, notes)
    node_dir = base / "devices" / "system" / "node"
    dist = _read_distances(node_dir, sorted(node_cpus), notes) if node_dir.is_dir() else {}
    nodes = {
        nid: Node(nid, tuple(sorted(node_cpus[nid])), node_mem[nid][0], node_mem[nid][1], dist.get(nid))
        for nid in sorted(node_cpus)
    }
    usable, source, quota = _usable(root_s, online, allowed_cpus, notes)
    cache_list = sorted(caches.values(), key=lambda k: (k.level, k.shared_cpus, k.type))
    huge = _shmem_huge_page_bytes(base / "kernel" / "mm" / "transparent_hugepage")
    return Topology(root_s, cpus, nodes, cache_list, tuple(usable), source, quota, notes, mmap.PAGESIZE, huge)


def _shmem_huge_page_bytes(thp: Path) -> int | None:
    """The huge page size shared memory may get, or None (``shmem_enabled`` is never, deny or absent)."""
    text = read_text(thp / "shmem_enabled") or ""
    active = re.search(r"\[(\w+)\]", text)
    if not active or active.group(1) not in ("always", "within_size", "advise", "force"):
        return None
    size = _read_int(thp / "hpage_pmd_size")
    return size if size and size > 0 else None


def _read_online(cpu_dir: Path, root_s: str, notes: list[str]) -> list[int]:
    online_list = _read_cpulist(cpu_dir / "online")
    if online_list is None:
        if not cpu_dir.is_dir():
            raise SpecError(f"sysfs root: {root_s!r} has no devices/system/cpu; expected a sysfs tree like /sys")
        present = sorted(int(m.group(1)) for p in cpu_dir.iterdir() if (m := re.fullmatch(r"cpu(\d+)", p.name)))
        # Each CPU's own cpuN/online says 0 when it is offline (cpu0 often has no such file: always online).
        online = [c for c in present if read_text(cpu_dir / f"cpu{c}" / "online") != "0"]
        notes.append("cpu/online missing: a cpuN directory is online unless its own cpuN/online says 0")
    else:
        online = online_list
    if not online:
        raise SpecError(f"sysfs root: {root_s!r} lists no online CPUs")
    return online


def _read_distances(node_dir: Path, ids: list[int], notes: list[str]) -> dict[int, tuple[int, ...] | None]:
    """Each node's ``distance`` file: one value per node, in node id order (the kernel's format)."""
    out: dict[int, tuple[int, ...] | None] = {}
    for nid in ids:
        text = read_text(node_dir / f"node{nid}" / "distance")
        try:
            values = tuple(int(v) for v in text.split()) if text is not None else None
        except ValueError:
            values = None
        if text is not None and (values is None or len(values) != len(ids)):
            notes.append(
                f"node {nid}: distance {text.strip()!r} does not give one number per node ({len(ids)}); ignored"
            )
            values = None
        out[nid] = values
    return out


def _read_nodes(
    node_dir: Path, online: list[int], notes: list[str]
) -> tuple[dict[int, list[int]], dict[int, tuple[int | None, int | None]]]:
    """NUMA nodes: their online CPUs and memory (ids need not be contiguous; a node may have no CPUs)."""
    online_set = set(online)
    node_cpus: dict[int, list[int]] = {}
    node_mem: dict[int, tuple[int | None, int | None]] = {}
    if node_dir.is_dir():
        for p in sorted(node_dir.iterdir(), key=lambda p: p.name):
            m = re.fullmatch(r"node(\d+)", p.name)
            if not m:
                continue
            nid = int(m.group(1))
            # Offline CPUs are dropped here as everywhere else.
            listed = _read_cpulist(p / "cpulist")
            if listed is None:  # older kernels (and some dumps) have only the hex mask
                listed = _read_cpumask(p / "cpumap")
                if listed is not None:
                    notes.append(f"node {nid}: no cpulist, CPUs read from cpumap")
            node_cpus[nid] = [c for c in listed or [] if c in online_set]
            node_mem[nid] = _meminfo(p / "meminfo")
    if not node_cpus:
        node_cpus = {0: list(online)}
        node_mem = {0: (None, None)}
        notes.append("no NUMA information under devices/system/node: one node assumed")
    claimed = {c for cs in node_cpus.values() for c in cs}
    for c in online:
        if c not in claimed:
            # A CPU that no node claims: attach it to the lowest node with CPUs.
            fallback = min((n for n, cs in node_cpus.items() if cs), default=min(node_cpus))
            node_cpus[fallback].append(c)
            notes.append(f"cpu {c} is in no node's cpulist: counted on node {fallback}")
    return node_cpus, node_mem


def _read_cpus(
    cpu_dir: Path, online: list[int], cpu_node: dict[int, int], notes: list[str]
) -> tuple[dict[int, Cpu], dict[tuple[int, str, tuple[int, ...]], Cache]]:
    """Each online CPU's package, die, core and siblings, and the distinct caches."""
    online_set = set(online)
    cpus: dict[int, Cpu] = {}
    no_core_id: list[int] = []
    kernel_siblings: dict[int, tuple[int, ...]] = {}
    caches: dict[tuple[int, str, tuple[int, ...]], Cache] = {}
    for c in online:
        t = cpu_dir / f"cpu{c}" / "topology"
        package = _read_int(t / "physical_package_id")
        core_id = _read_int(t / "core_id")
        die = _read_int(t / "die_id")
        if package is None or package < 0:
            package = 0
        if core_id is None:
            no_core_id.append(c)
            core_id = -1  # replaced below
        # Which CPUs share this core, as the kernel says (core_cpus_list; thread_siblings_list on older kernels).
        listed = _read_cpulist(t / "core_cpus_list") or _read_cpulist(t / "thread_siblings_list")
        if listed and c in listed:
            kernel_siblings[c] = tuple(x for x in listed if x in online_set)
        # Provisional; the siblings are rebuilt from (package, core_id) below.
        cpus[c] = Cpu(c, package, core_id, cpu_node[c], (c,), die if die is not None and die >= 0 else 0)
        _read_caches(cpu_dir / f"cpu{c}" / "cache", c, online_set, caches)

    # No core_id (no topology files): every such CPU is its own core. Its id is the CPU
    # id, shifted past the package's real core_ids so it cannot join another core.
    if no_core_id:
        top: dict[int, int] = {}
        for cpu in cpus.values():
            top[cpu.package] = max(top.get(cpu.package, -1), cpu.core_id)  # missing ones hold -1
        for c in no_core_id:
            cpu = cpus[c]
            cpus[c] = replace(cpu, core_id=top[cpu.package] + 1 + c)
    _split_repeated_core_ids(cpus, kernel_siblings, notes)

    # SMT siblings are the online CPUs sharing (package, core_id): core_id alone
    # repeats across sockets (loky#639), and siblings may be i and i+N (Intel) or
    # adjacent (AMD). Without topology files every CPU is its own core.
    by_core: dict[tuple[int, int], list[int]] = {}
    for cpu in cpus.values():
        by_core.setdefault(cpu.core, []).append(cpu.id)
    for members in by_core.values():
        for member in members:
            cpus[member] = replace(cpus[member], siblings=tuple(sorted(members)))
    return cpus, caches


def _split_repeated_core_ids(
    cpus: dict[int, Cpu], kernel_siblings: dict[int, tuple[int, ...]], notes: list[str]
) -> None:
    """Multi-die packages restart core_id in each die: two real cores then share (package, core_id).

    Where the kernel lists a CPU's core siblings, that list decides which CPUs share a core; a
    (package, core_id) already taken by another sibling group gets a fresh core_id in its package.
    """
    owner: dict[tuple[int, int], tuple[int, ...]] = {}
    top: dict[int, int] = {}
    for cpu in cpus.values():
        top[cpu.package] = max(top.get(cpu.package, -1), cpu.core_id)
    split: set[int] = set()
    rekeyed: dict[tuple[int, ...], int] = {}
    for c in sorted(cpus):
        group = kernel_siblings.get(c)
        if group is None:
            continue
        cpu = cpus[c]
        if group in rekeyed:
            cpus[c] = replace(cpu, core_id=rekeyed[group])
            continue
        taken = owner.setdefault(cpu.core, group)
        if taken != group:
            top[cpu.package] += 1
            rekeyed[group] = top[cpu.package]
            owner[(cpu.package, rekeyed[group])] = group
            cpus[c] = replace(cpu, core_id=rekeyed[group])
            split.add(cpu.package)
    for pkg in sorted(split):
        dies = sorted({x.die for x in cpus.values() if x.package == pkg})
        notes.append(
            f"package {pkg}: core_id repeats across its dies ({', '.join(map(str, dies))}): "
            "cores told apart by the kernel's core siblings lists"
        )


def _read_caches(
    cdir: Path, cpu: int, online_set: set[int], caches: dict[tuple[int, str, tuple[int, ...]], Cache]
) -> None:
    if not cdir.is_dir():
        return
    for idx in sorted(cdir.glob("index*")):
        level = _read_int(idx / "level")
        if level is None:
            continue
        ctype = read_text(idx / "type") or "Unified"
        # Keep online CPUs only: a fake (or racing) tree may still list offline ones.
        listed = _read_cpulist(idx / "shared_cpu_list") or [cpu]
        shared = tuple(s for s in listed if s in online_set) or (cpu,)
        key = (level, ctype, shared)
        if key not in caches:
            caches[key] = Cache(level, ctype, _parse_size(read_text(idx / "size")), shared)


def _usable(
    root_s: str, online: list[int], allowed_cpus: list[int] | None, notes: list[str]
) -> tuple[list[int], str, float | None]:
    """The CPUs workers may use: an explicit override, or (for the real /sys) affinity ∩ cgroup."""
    quota = None
    if allowed_cpus is not None:
        online_set = set(online)
        bad = [c for c in allowed_cpus if isinstance(c, bool) or c not in online_set]
        if bad:
            shown = ",".join(str(c) for c in dict.fromkeys(bad))
            raise SpecError(
                f"--allowed-cpus: CPU {shown} is not online in {root_s}; online CPUs: {format_cpulist(online)}"
            )
        usable = sorted({int(c) for c in allowed_cpus})
        source = "override"
    elif os.path.realpath(root_s) == os.path.realpath(DEFAULT_ROOT):
        usable, source, quota, more = _usable_here(online)
        notes.extend(more)
    else:
        usable = list(online)
        source = "all online CPUs of the sysfs root"
    if not usable:
        raise SpecError(f"usable CPUs: none (online {format_cpulist(online)}, source: {source})")
    return usable, source, quota


# -- the CPUs this process may use (cgroups, affinity, Slurm) -------------------------


def cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, from /proc/self/cgroup (joblib/loky#634)."""
    text = read_text(Path("/proc/self/cgroup"))
    if not text:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            return Path("/sys/fs/cgroup") / parts[2].lstrip("/")
    return None


def _usable_here(online: list[int]) -> tuple[list[int], str, float | None, list[str]]:
    notes: list[str] = []
    usable = set(online)
    sources = []
    if hasattr(os, "sched_getaffinity"):
        aff = os.sched_getaffinity(0)
        usable &= aff
        sources.append("affinity")
    quota = None
    cg = cgroup_dir()
    if cg is not None:
        eff = read_text(cg / "cpuset.cpus.effective")
        if eff:
            usable &= set(parse_cpulist(eff))
            sources.append("cgroup cpuset")
        # cpu.max bounds how many CPUs can run at once, whatever the cpuset says.
        cmax = read_text(cg / "cpu.max")
        if cmax and not cmax.startswith("max"):
            try:
                q, period = cmax.split()
                quota = int(q) / int(period)
                notes.append(f"cgroup cpu.max limits this job to {quota:g} CPUs at a time")
            except ValueError:
                pass
    if os.environ.get("SLURM_JOB_ID"):
        notes.append(
            "inside Slurm job " + os.environ["SLURM_JOB_ID"] + ": the allocation is the affinity/cgroup set above"
        )
    return sorted(usable), " ∩ ".join(sources) or "online", quota, notes
