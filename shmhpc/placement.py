"""Pure planning: which worker runs on which CPUs, which NUMA partition and
which chunks of rows it owns. Same inputs, same plan; nothing here starts a
process or touches hardware.

Policies
--------
compact
    Fill physical cores node by node, one hardware thread per core; SMT
    siblings are used only when workers × threads exceed the usable cores.
scatter
    Round-robin over NUMA nodes (that have usable CPUs), then cores.
none
    No pinning: every worker may run on every usable CPU.
explicit lists
    ``[[0, 1], [2, 3]]`` (or ``["0-1", "2-3"]``): worker *i* gets list *i*.
likwid-style expressions (https://github.com/RRZE-HPC/likwid/wiki/Likwid-Pin)
    ``N:0-3`` (node = whole machine), ``S<n>:…`` (socket), ``M<n>:…`` (NUMA
    domain), ``C<n>:…`` (last-level cache group), with logical indices that
    count physical cores first and SMT threads after; ``E:<domain>:<count>[:<chunk>:<stride>]``
    walks the domain core by core with siblings adjacent (``E:N:4:1:2`` = one
    thread per core on a 2-way SMT machine); ``@`` concatenates; a bare ``0-3,8``
    is physical CPU ids. Worker *i* gets CPUs ``[i·t, (i+1)·t)`` of the list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .cpulist import format_cpulist, parse_cpulist
from .errors import SpecError
from .topology import Topology

__all__ = [
    "Partition",
    "Plan",
    "WorkerPlan",
    "cpus_needed",
    "expand_likwid",
    "plan_job",
    "resolve_cpus",
    "split_rows",
]


@dataclass(frozen=True)
class WorkerPlan:
    rank: int
    cpus: tuple[int, ...]
    node: int | None
    rows: tuple[int, int]
    chunks: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Partition:
    node: int | None
    start: int
    stop: int
    ranks: tuple[int, ...]


@dataclass
class Plan:
    """Where every worker runs and what it owns."""

    policy: str
    pinned: bool
    threads_per_worker: int
    workers: list[WorkerPlan]
    partitions: list[Partition]
    n_rows: int
    row_bytes: int
    usable: tuple[int, ...]
    usable_source: str
    warnings: list[str] = field(default_factory=list)
    align_bytes: int = 4096  # worker boundaries fall on multiples of this (the page, or huge page, size)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "pinned": self.pinned,
            "threads_per_worker": self.threads_per_worker,
            "n_rows": self.n_rows,
            "row_bytes": self.row_bytes,
            "usable_cpus": list(self.usable),
            "usable_source": self.usable_source,
            "align_bytes": self.align_bytes,
            "workers": [
                {
                    "rank": w.rank,
                    "cpus": list(w.cpus),
                    "node": w.node,
                    "rows": list(w.rows),
                    "chunks": [list(c) for c in w.chunks],
                }
                for w in self.workers
            ],
            "partitions": [
                {"node": p.node, "start": p.start, "stop": p.stop, "ranks": list(p.ranks)} for p in self.partitions
            ],
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        """Readable table of the plan."""
        mb = self.n_rows * self.row_bytes / 1e6
        t = self.threads_per_worker
        lines = [
            f"{len(self.workers)} worker{'s' * (len(self.workers) != 1)} × {t} thread{'s' * (t != 1)}, "
            f"pinning {self.policy}{'' if self.pinned else ' (not pinned)'}, "
            f"{self.n_rows:,} rows × {self.row_bytes} B = {mb:,.1f} MB",
            f"usable CPUs: {format_cpulist(self.usable)} ({self.usable_source})",
        ]
        rows = [("rank", "cpus", "node", "rows", "chunks")]
        for w in self.workers:
            rows.append(
                (
                    str(w.rank),
                    format_cpulist(w.cpus),
                    "-" if w.node is None else str(w.node),
                    f"{w.rows[0]:,}-{w.rows[1]:,}",
                    ", ".join(f"{a:,}-{b:,}" for a, b in w.chunks),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        for p in self.partitions:
            node = "any node" if p.node is None else f"node {p.node}"
            lines.append(
                f"partition {node}: rows {p.start:,}-{p.stop:,} "
                f"({(p.stop - p.start) * self.row_bytes / 1e6:,.1f} MB), ranks {format_cpulist(p.ranks)}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# -- CPU orderings -------------------------------------------------------------------


def _physical_first(topo: Topology, cpus: list[int]) -> list[int]:
    """Logical order: first thread of every core (node, package, core order), then second threads, …"""
    rank = _smt_rank(topo, cpus)
    return sorted(cpus, key=lambda c: (rank[c], *_place_key(topo, c)))


def _core_major(topo: Topology, cpus: list[int]) -> list[int]:
    """Core by core, SMT siblings adjacent."""
    rank = _smt_rank(topo, cpus)
    return sorted(cpus, key=lambda c: (*_place_key(topo, c), rank[c]))


def _smt_rank(topo: Topology, cpus: list[int]) -> dict[int, int]:
    """Each CPU's index among the *given* CPUs of its core (0 = the core's first one here).

    Not ``Cpu.smt_index``: when the allowed set holds only the second hardware thread of
    a core (a cpuset of ``8`` on a machine whose siblings are 0 and 8), that thread is the
    core's first usable one and must come with the other physical cores, not after them.
    """
    chosen = set(cpus)
    return {c: [s for s in topo.cpus[c].siblings if s in chosen].index(c) for c in chosen}


def _place_key(topo: Topology, c: int) -> tuple[int, int, int]:
    cpu = topo.cpus[c]
    return (cpu.node, cpu.package, cpu.core_id)


# -- likwid-style expressions --------------------------------------------------------

_DOMAIN_RE = re.compile(r"^(N|S\d+|M\d+|C\d+)$")


def _domain_cpus(topo: Topology, dom: str, where: str) -> list[int]:
    usable = list(topo.usable)
    if dom == "N":
        cpus = usable
    else:
        kind, idx = dom[0], int(dom[1:])
        if kind == "S":
            pkgs = topo.packages()
            if idx not in pkgs:
                raise SpecError(f"{where}: socket S{idx} does not exist; sockets: {', '.join(f'S{p}' for p in pkgs)}")
            cpus = [c for c in usable if topo.cpus[c].package == idx]
        elif kind == "M":
            if idx not in topo.nodes:
                raise SpecError(
                    f"{where}: NUMA domain M{idx} does not exist; domains: {', '.join(f'M{n}' for n in topo.nodes)}"
                )
            cpus = [c for c in usable if topo.cpus[c].node == idx]
        else:  # C: last-level cache groups, numbered by their first CPU
            top = max((k.level for k in topo.caches), default=0)
            groups = sorted({k.shared_cpus for k in topo.caches if k.level == top and k.type != "Instruction"})
            if idx >= len(groups):
                raise SpecError(
                    f"{where}: cache group C{idx} does not exist; there are {len(groups)} (C0-C{len(groups) - 1})"
                )
            cpus = [c for c in usable if c in set(groups[idx])]
    if not cpus:
        raise SpecError(f"{where}: domain {dom} has no usable CPUs (usable: {format_cpulist(topo.usable)})")
    return cpus


def expand_likwid(expr: str, topo: Topology, where: str = "pinning") -> list[int]:
    """Expand a likwid-style pinning expression into an ordered CPU list (duplicates kept)."""
    out: list[int] = []
    for part in expr.split("@"):
        part = part.strip()
        if not part:
            raise SpecError(f"{where}: empty term in {expr!r} (terms are joined by '@')")
        fields = part.split(":")
        if fields[0] == "E":
            out.extend(_expand_e(fields, topo, where, part))
        elif _DOMAIN_RE.match(fields[0]):
            if len(fields) != 2:
                raise SpecError(f"{where}: {part!r} must be DOMAIN:LIST, e.g. S0:0-3")
            dom_cpus = _physical_first(topo, _domain_cpus(topo, fields[0], where))
            try:
                idxs = _ordered_list(fields[1])
            except ValueError as exc:
                raise SpecError(f"{where}: {part!r}: {exc}") from None
            for i in idxs:
                if i >= len(dom_cpus):
                    raise SpecError(
                        f"{where}: {part!r}: index {i} is out of range; {fields[0]} has {len(dom_cpus)} usable CPUs "
                        f"(indices 0-{len(dom_cpus) - 1})"
                    )
                out.append(dom_cpus[i])
        else:
            try:
                ids = _ordered_list(part)
            except ValueError:
                raise SpecError(
                    f"{where}: {part!r} is not a policy (none, compact, scatter), a CPU list (0-3,8) or a likwid-style "
                    "expression (N:0-3, S0:0-1@S1:0-1, M0:0-3, E:N:4:1:2)"
                ) from None
            out.extend(ids)
    return out


def _ordered_list(text: str) -> list[int]:
    """Like parse_cpulist but keeps the written order (``3,1-2`` → 3,1,2)."""
    ids: list[int] = []
    for p in text.split(","):
        ids.extend(parse_cpulist(p))
    if not ids:
        raise ValueError(f"empty list {text!r}")
    return ids


def _expand_e(fields: list[str], topo: Topology, where: str, part: str) -> list[int]:
    if len(fields) not in (3, 5) or not _DOMAIN_RE.match(fields[1]):
        raise SpecError(f"{where}: {part!r} must be E:DOMAIN:COUNT or E:DOMAIN:COUNT:CHUNK:STRIDE")
    try:
        count = int(fields[2])
        chunk, stride = (int(fields[3]), int(fields[4])) if len(fields) == 5 else (1, 1)
    except ValueError:
        raise SpecError(f"{where}: {part!r}: count, chunk and stride must be integers") from None
    if count <= 0 or chunk <= 0 or stride < chunk:
        raise SpecError(f"{where}: {part!r}: need count > 0, chunk > 0 and stride >= chunk")
    dom = _core_major(topo, _domain_cpus(topo, fields[1], where))
    picked: list[int] = []
    start = 0
    while len(picked) < count:
        # The last block may be short when it only has to supply the remainder.
        block = dom[start : start + min(chunk, count - len(picked))]
        if len(block) < min(chunk, count - len(picked)):
            raise SpecError(
                f"{where}: {part!r} asks for {count} CPUs but {fields[1]} runs out after {len(picked)} "
                f"({len(dom)} usable CPUs)"
            )
        picked.extend(block[: count - len(picked)])
        start += stride
    return picked


# -- from policy to per-worker CPU sets ----------------------------------------------


def _node_of(topo: Topology, cpus: tuple[int, ...]) -> int | None:
    if not cpus:
        return None
    counts: dict[int, int] = {}
    for c in cpus:
        counts[topo.cpus[c].node] = counts.get(topo.cpus[c].node, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    best = max(counts.values())
    return min(n for n, k in counts.items() if k == best)


def _oversub_message(needed: int, what: str, topo: Topology) -> str:
    n = len(topo.usable)
    msg = (
        f"workers: {what} need {needed} CPUs but only {n} {'is' if n == 1 else 'are'} usable "
        f"({format_cpulist(topo.usable)}, {topo.usable_source}); set oversubscribe: true to allow it"
    )
    if n == 1:
        # One usable CPU is the mark of a bound task: under `srun --cpu-bind=cores` the task gets one
        # core, and every worker it starts inherits that affinity, so all of them share it.
        msg += "; under Slurm, give the task the CPUs it pins (srun -c N, --cpu-bind=none)"
    return msg


def cpus_needed(pinning: str | list[list[int]], workers: int | str, threads: int) -> int | None:
    """How many distinct CPUs a plan pins, when that is known without the machine.

    None for ``workers: auto`` and likwid-style expressions: those depend on the topology.
    """
    if isinstance(pinning, list):
        return len({c for cpus in pinning for c in cpus})
    if workers == "auto" or pinning not in ("none", "compact", "scatter"):
        return None
    return int(workers) * threads


def resolve_cpus(
    pinning: str | list[list[int]],
    workers: int | str,
    threads: int,
    topo: Topology,
    oversubscribe: bool = False,
) -> tuple[list[tuple[int, ...]], bool, str, list[str]]:
    """Per-worker CPU sets for a pinning policy.

    Returns ``(cpu_sets, pinned, policy_label, warnings)``; raises ``SpecError``
    with every problem found.
    """
    if isinstance(pinning, list):
        return _explicit(pinning, workers, threads, topo, oversubscribe)
    if pinning in ("none", "compact", "scatter"):
        return _by_policy(pinning, workers, threads, topo, oversubscribe)
    return _by_expression(str(pinning), workers, threads, topo, oversubscribe)


def _explicit(
    pinning: list[list[int]], workers: int | str, threads: int, topo: Topology, oversubscribe: bool
) -> tuple[list[tuple[int, ...]], bool, str, list[str]]:
    """Explicit CPU lists, one per worker."""
    usable = list(topo.usable)
    usable_set = set(usable)
    errs = []
    for i, cpus in enumerate(pinning):
        bad = [c for c in cpus if c not in usable_set]
        if bad:
            errs.append(
                f"pinning[{i}]: cpu {format_cpulist(bad)} is not usable here; usable CPUs: {format_cpulist(usable)}"
            )
    if workers != "auto" and workers != len(pinning):
        errs.append(f"workers: {workers}, but pinning lists {len(pinning)} CPU sets (one per worker)")
    seen: dict[int, int] = {}
    for i, cpus in enumerate(pinning):
        for c in cpus:
            if c in seen and not oversubscribe:
                errs.append(
                    f"pinning[{i}]: cpu {c} is also pinned by worker {seen[c]}; set oversubscribe: true to share CPUs"
                )
            seen.setdefault(c, i)
    if errs:
        raise SpecError(errs)
    warnings = [
        f"worker {i} has {len(cpus)} CPUs for threads_per_worker {threads}"
        for i, cpus in enumerate(pinning)
        if len(cpus) != threads
    ]
    return [tuple(sorted(c)) for c in pinning], True, "explicit", warnings


def _by_policy(
    pinning: str, workers: int | str, threads: int, topo: Topology, oversubscribe: bool
) -> tuple[list[tuple[int, ...]], bool, str, list[str]]:
    """compact, scatter or none."""
    warnings: list[str] = []
    usable = list(topo.usable)
    n = max(1, len(topo.usable_cores()) // threads) if workers == "auto" else int(workers)
    need = n * threads
    if need > len(usable) and not oversubscribe:
        raise SpecError(_oversub_message(need, f"{n} workers × {threads} threads", topo))
    if need > len(usable):
        warnings.append(f"oversubscribed: {need} threads on {len(usable)} usable CPUs")
    if pinning == "none":
        return [tuple(usable)] * n, False, "none", warnings
    if pinning == "compact":
        # The first len(cores) CPUs of this order are one thread per physical core, so SMT
        # siblings (which share the core's execution units) come in only when needed.
        order = _physical_first(topo, usable)
        flat = [order[i % len(order)] for i in range(need)]
        return [_cpuset(flat[i * threads : (i + 1) * threads]) for i in range(n)], True, "compact", warnings
    return _scatter(topo, usable, n, threads), True, "scatter", warnings


def _scatter(topo: Topology, usable: list[int], n: int, threads: int) -> list[tuple[int, ...]]:
    """Worker i starts on node i mod N and takes its CPUs there in logical order.

    A node is passed over while another still has a free CPU of a lower SMT rank, so no SMT
    sibling is used while a physical core elsewhere is idle (the compact rule, too).
    """
    rank = _smt_rank(topo, usable)
    per_node: dict[int, list[int]] = {}
    for c in _physical_first(topo, usable):
        per_node.setdefault(topo.cpus[c].node, []).append(c)
    node_ids = sorted(per_node)
    free = {nid: list(cs) for nid, cs in per_node.items()}
    sets: list[tuple[int, ...]] = []
    for i in range(n):
        chosen: list[int] = []
        k = i % len(node_ids)
        while len(chosen) < threads:
            if not any(free.values()):  # every CPU taken: start over (oversubscribed)
                free = {nid: list(cs) for nid, cs in per_node.items()}
            level = min(rank[pool[0]] for pool in free.values() if pool)
            pool = free[node_ids[k]]
            if pool and rank[pool[0]] == level:
                chosen.append(pool.pop(0))
            else:
                k = (k + 1) % len(node_ids)
        sets.append(_cpuset(chosen))
    return sets


def _by_expression(
    pinning: str, workers: int | str, threads: int, topo: Topology, oversubscribe: bool
) -> tuple[list[tuple[int, ...]], bool, str, list[str]]:
    """A likwid-style expression or a bare CPU list: worker i gets entries [i·t, (i+1)·t)."""
    usable = list(topo.usable)
    cpus = expand_likwid(pinning, topo)
    bad = sorted({c for c in cpus if c not in set(usable)})
    if bad:
        raise SpecError(f"pinning: cpu {format_cpulist(bad)} is not usable here; usable CPUs: {format_cpulist(usable)}")
    if workers == "auto":
        if len(cpus) % threads:
            raise SpecError(
                f"pinning: {pinning!r} selects {len(cpus)} CPUs, not a multiple of threads_per_worker {threads}"
            )
        n = len(cpus) // threads
    else:
        n = int(workers)
        if n * threads != len(cpus):
            raise SpecError(
                f"pinning: {pinning!r} selects {len(cpus)} CPUs but workers × threads_per_worker = {n} × {threads} = "
                f"{n * threads}; set workers: auto or change the expression"
            )
    if len(set(cpus)) != len(cpus) and not oversubscribe:
        dup = sorted({c for c in cpus if cpus.count(c) > 1})
        raise SpecError(
            f"pinning: {pinning!r} selects cpu {format_cpulist(dup)} more than once; "
            "set oversubscribe: true to allow it"
        )
    return [_cpuset(cpus[i * threads : (i + 1) * threads]) for i in range(n)], True, pinning, []


def _cpuset(cpus: list[int]) -> tuple[int, ...]:
    """A worker's CPU set: sorted, each CPU once (an oversubscribed wrap can pick one twice)."""
    return tuple(sorted(set(cpus)))


# -- rows, partitions, chunks --------------------------------------------------------


def _align_rows(row_bytes: int, page_bytes: int) -> int:
    """Rows per boundary so that boundaries fall on page starts (pages must not straddle NUMA partitions)."""
    return page_bytes // math.gcd(page_bytes, row_bytes) if row_bytes > 0 else 1


# Segments of at least this size ask for huge pages (shm.Segment: MADV_HUGEPAGE from 2 MiB).
HUGE_PAGE_MIN_SEGMENT = 2 << 20


def _boundaries(
    n_rows: int, n: int, row_bytes: int, topology: Topology, segment_page_bytes: int | None = None
) -> tuple[int, int, list[str]]:
    """(rows per alignment unit, its bytes, warnings): huge pages when the segment gets them and every worker
    still owns a whole one, else base pages.

    ``segment_page_bytes`` is the segment's page size when it is known before the segment exists: a
    hugetlbfs file has pages of its mount's size whatever the data's size (its mappings come in whole
    huge pages), and with huge pages off the segment has base pages. Otherwise shared memory's
    transparent huge pages decide (``topology.huge_page_bytes``, for segments that ask for them).
    """
    base = topology.page_bytes
    if segment_page_bytes is not None:
        huge: int | None = segment_page_bytes
        big_enough = True
    else:
        huge = topology.huge_page_bytes
        big_enough = n_rows * row_bytes >= HUGE_PAGE_MIN_SEGMENT
    if huge and huge > base and big_enough:
        align = _align_rows(row_bytes, huge)
        if n_rows // align >= n:
            return align, huge, []
        return (
            _align_rows(row_bytes, base),
            base,
            [
                f"rows per worker are fewer than one {huge >> 10} KiB huge page: neighbouring workers share huge "
                "pages, so some rows may live on another worker's NUMA node; use more data or fewer workers"
            ],
        )
    return _align_rows(row_bytes, base), base, []


def split_rows(n_rows: int, parts: int, align: int, start: int = 0) -> list[tuple[int, int]]:
    """Split ``[start, start+n_rows)`` into ``parts`` contiguous ranges, boundaries rounded to multiples of
    ``align`` rows when that leaves no range empty (else exact equal split)."""
    exact = [start + (n_rows * k) // parts for k in range(parts + 1)]
    # Integer round-half-up: exact for any size and shifts by whole `align`s (float
    # round() is half-to-even, which can merge two neighbouring boundaries).
    aligned = [exact[0]] + [min(start + n_rows, (b + align // 2) // align * align) for b in exact[1:-1]] + [exact[-1]]
    bounds = aligned if all(aligned[k] < aligned[k + 1] for k in range(parts)) else exact
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def plan_job(
    *,
    pinning: str | list[list[int]],
    workers: int | str,
    threads_per_worker: int,
    topology: Topology,
    n_rows: int,
    row_bytes: int,
    chunks_per_worker: int,
    partition: bool = True,
    oversubscribe: bool = False,
    segment_page_bytes: int | None = None,
) -> Plan:
    """Plan a job: CPU sets, nodes, NUMA partitions and chunks (rows along axis 0).

    Partitions are contiguous row ranges, one per NUMA node that has workers,
    sized by its worker count; each worker owns a contiguous slice of its node's
    partition, cut into ``chunks_per_worker`` chunks. ``segment_page_bytes``: the segment's page size
    when known in advance (a hugetlbfs segment, or huge pages off); worker boundaries fall on it.
    """
    sets, pinned, label, warnings = resolve_cpus(pinning, workers, threads_per_worker, topology, oversubscribe)
    n = len(sets)
    if n_rows < n:
        raise SpecError(f"data: {n_rows} rows cannot be shared by {n} workers; use more data or fewer workers")
    nodes = [_node_of(topology, s) if pinned or len({topology.cpus[c].node for c in s}) == 1 else None for s in sets]
    for rank, s in enumerate(sets):
        spanned = sorted({topology.cpus[c].node for c in s})
        if pinned and len(spanned) > 1:
            warnings.append(
                f"worker {rank} spans NUMA nodes {format_cpulist(spanned)}; its data goes to node {nodes[rank]}"
            )
    if topology.cpu_quota is not None and topology.cpu_quota < n * threads_per_worker:
        warnings.append(
            f"cgroup cpu.max allows {topology.cpu_quota:g} CPUs at a time for {n * threads_per_worker} worker threads"
        )
    if pinned and len({c for s in sets for c in s}) == 1 and n > 1:
        warnings.append(f"all {n} workers share one CPU")

    # Data order: group ranks by node so each node's partition is one contiguous range.
    if partition and all(nd is not None for nd in nodes):
        order = sorted(range(n), key=lambda r: (nodes[r], r))
    else:
        order = list(range(n))
    align, align_bytes, more = _boundaries(n_rows, n, row_bytes, topology, segment_page_bytes)
    warnings.extend(more)
    ranges = split_rows(n_rows, n, align)
    rows_of = {rank: ranges[pos] for pos, rank in enumerate(order)}
    partitions: list[Partition] = []
    if partition and all(nd is not None for nd in nodes):
        for rank in order:
            lo, hi = rows_of[rank]
            if partitions and partitions[-1].node == nodes[rank]:
                p = partitions[-1]
                partitions[-1] = Partition(p.node, p.start, hi, (*p.ranks, rank))
            else:
                partitions.append(Partition(nodes[rank], lo, hi, (rank,)))
    else:
        common = {nd for nd in nodes}
        partitions.append(Partition(common.pop() if len(common) == 1 else None, 0, n_rows, tuple(order)))
    plans = []
    for rank in range(n):
        lo, hi = rows_of[rank]
        k = min(chunks_per_worker, hi - lo)
        chunks = tuple(split_rows(hi - lo, k, align, start=lo)) if k > 0 else ()
        plans.append(WorkerPlan(rank, sets[rank], nodes[rank], (lo, hi), chunks))
    return Plan(
        label,
        pinned,
        threads_per_worker,
        plans,
        partitions,
        n_rows,
        row_bytes,
        topology.usable,
        topology.usable_source,
        warnings,
        align_bytes,
    )
