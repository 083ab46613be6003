"""NUMA memory policies for the shared array (``numa.placement``) and the check of where its pages went.

* ``first-touch``: no policy; each pinned owner writes its rows first, so its pages land on its node.
* ``bind``: before any page exists, each partition's byte range is bound (``MPOL_BIND``) to its node —
  or to ``numa.nodes`` — so placement holds whoever writes the pages (``numa.writer: launcher``).
* ``interleave``: the whole array goes round-robin (``MPOL_INTERLEAVE``) over the workers' nodes or
  ``numa.nodes``: every worker reads from every node, none is the bottleneck.
* ``none``: no policy, no owner touch: the launcher writes the data (the naive way, and the baseline).

Ranges are aligned to the segment's real page size (``mbind`` on a hugetlbfs mapping needs huge-page
boundaries). Where the kernel or a container refuses a policy (``EPERM`` from a seccomp profile,
``ENOSYS`` without NUMA support, ``EINVAL`` for a node the cpuset does not allow), the run goes on
without it and the report says so and why.

The check (:func:`judge`) compares each partition's sampled pages (``move_pages`` in the workers that
read them) with the node(s) the policy meant them for: ``fraction_intended`` against ``numa.min_local``,
and for ``interleave`` also how evenly the pages are spread.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from typing import Any

from .cpulist import format_cpulist
from .errors import RunError
from .numa import MODE_NAMES, MPOL_BIND, MPOL_DEFAULT, MPOL_INTERLEAVE, mbind, policy_at

__all__ = [
    "PolicyRange",
    "apply_ranges",
    "judge",
    "partition_pages",
    "placement_line",
    "planned",
    "policy_ranges",
    "target_nodes",
]

_MODES = {"bind": MPOL_BIND, "interleave": MPOL_INTERLEAVE}
# interleave passes when each chosen node's share of the sampled pages is within this of 1/k, plus three
# standard deviations of the share a random sample of that size would show.
EVEN_TOLERANCE = 0.05


@dataclass(frozen=True)
class PolicyRange:
    """One ``mbind`` call: bytes ``[offset, offset+length)`` of the segment, page-aligned."""

    offset: int
    length: int
    mode: str  # bind | interleave
    nodes: tuple[int, ...]


def target_nodes(plan: Any, topology: Any, nodes: list[int] | None) -> list[int]:
    """Where ``interleave`` spreads the pages: ``numa.nodes``, else the nodes of every CPU the workers may use."""
    if nodes:
        return sorted(nodes)
    return sorted({topology.cpus[c].node for w in plan.workers for c in w.cpus if c in topology.cpus})


def check_nodes(nodes: list[int] | None, topology: Any) -> list[str]:
    """``numa.nodes`` against this machine: each must be a NUMA node with memory."""
    if not nodes:
        return []
    known = topology.nodes
    errors = []
    for n in nodes:
        node = known.get(n)
        if node is None:
            errors.append(
                f"numa.nodes: {n} is not a NUMA node of this machine (nodes: {format_cpulist(sorted(known)) or '-'})"
            )
        elif node.mem_total_bytes == 0:
            errors.append(f"numa.nodes: node {n} has no memory")
    return errors


def policy_ranges(
    plan: Any, numa: Any, topology: Any, data_bytes: int, page_bytes: int
) -> tuple[list[PolicyRange], list[str]]:
    """The ``mbind`` calls ``numa.placement`` needs, and notes on partitions left without a policy."""
    if numa.placement not in _MODES or data_bytes <= 0:
        return [], []
    end = -(-data_bytes // page_bytes) * page_bytes
    if numa.placement == "interleave":
        return [PolicyRange(0, end, "interleave", tuple(target_nodes(plan, topology, numa.nodes)))], []
    ranges, notes = [], []
    parts = plan.partitions
    for i, p in enumerate(parts):
        lo = p.start * plan.row_bytes // page_bytes * page_bytes
        hi = end if i == len(parts) - 1 else p.stop * plan.row_bytes // page_bytes * page_bytes
        nodes = tuple(sorted(numa.nodes)) if numa.nodes else ((p.node,) if p.node is not None else None)
        if nodes is None:
            notes.append(
                f"rows {p.start}-{p.stop} are read by workers on several NUMA nodes (unpinned, or numa.partition: "
                "false): no node to bind them to"
            )
        elif hi <= lo:
            notes.append(f"rows {p.start}-{p.stop} are smaller than one {page_bytes >> 10} KiB page: left unbound")
        else:
            ranges.append(PolicyRange(lo, hi - lo, "bind", nodes))
    return ranges, notes


def planned(plan: Any, numa: Any, topology: Any, data_bytes: int, page_bytes: int) -> tuple[dict[str, Any], list[str]]:
    """What ``shmhpc plan`` shows of the memory policy: its settings and ``mbind`` ranges (JSON), and text lines."""
    ranges, notes = policy_ranges(plan, numa, topology, data_bytes, page_bytes)
    doc = {
        "placement": numa.placement,
        "writer": numa.data_writer,
        "verify": numa.verify,
        "min_local": numa.min_local,
        "page_bytes": page_bytes,
        "ranges": [{"offset": r.offset, "length": r.length, "mode": r.mode, "nodes": list(r.nodes)} for r in ranges],
        "notes": notes,
    }
    how = {
        "first-touch": "each owner writes its rows first",
        "bind": "mbind(MPOL_BIND) before any page exists",
        "interleave": "mbind(MPOL_INTERLEAVE) before any page exists",
        "none": "no policy",
    }[numa.placement]
    lines = [f"memory: {numa.placement} ({how}), written by the {numa.data_writer}, numa.verify {numa.verify}"]
    lines += [
        f"  bytes {r.offset:,}-{r.offset + r.length:,}: {r.mode} to node {format_cpulist(list(r.nodes))}"
        for r in ranges
    ]
    lines += [f"  note: {n}" for n in notes]
    return doc, lines


def _refusal(exc: OSError, r: PolicyRange) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    what = f"mbind({r.mode}, node {format_cpulist(list(r.nodes))}) refused: {exc.strerror} ({name})"
    if exc.errno == errno.EPERM:
        return f"{what} — a seccomp profile forbids it (containers: allow mbind, e.g. with CAP_SYS_NICE)"
    if exc.errno == errno.ENOSYS:
        return f"{what} — this kernel has no NUMA memory policies"
    if exc.errno == errno.EINVAL:
        allowed = _mems_allowed()
        if allowed is not None and not set(r.nodes) <= set(allowed):
            return f"{what} — this process may only allocate on nodes {format_cpulist(allowed)} (cpuset mems)"
    return what


def _mems_allowed() -> list[int] | None:
    from .cpulist import parse_cpulist

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Mems_allowed_list:"):
                    return sorted(parse_cpulist(line.split(":", 1)[1].strip()))
    except (OSError, ValueError):
        pass
    return None


def apply_ranges(address: int, ranges: list[PolicyRange] | tuple[PolicyRange, ...]) -> dict[str, Any]:
    """Set each range's policy in this process's mapping at ``address``, then read it back.

    All or nothing: when one call is refused, the ranges already set go back to the default policy, so
    no half-applied layout is left. Returns ``{"applied": bool, "reason": str | None}``.
    """
    done: list[PolicyRange] = []
    try:
        for r in ranges:
            mbind(address + r.offset, r.length, _MODES[r.mode], r.nodes)
            done.append(r)
        for r in ranges:
            mode, nodes = policy_at(address + r.offset)
            if mode != _MODES[r.mode] or tuple(nodes) != r.nodes:
                got = f"{MODE_NAMES.get(mode, mode)} node {format_cpulist(nodes) or '-'}"
                raise RunError(f"read back at offset {r.offset}: {got}, not what was set")
    except OSError as exc:
        _reset(address, done)
        return {"applied": False, "reason": _refusal(exc, r)}
    except RunError as exc:
        _reset(address, done)
        return {"applied": False, "reason": f"get_mempolicy(2) {exc}"}
    return {"applied": True, "reason": None}


def _reset(address: int, ranges: list[PolicyRange]) -> None:
    for r in ranges:
        try:
            mbind(address + r.offset, r.length, MPOL_DEFAULT, ())
        except OSError:
            pass


# -- the check ------------------------------------------------------------------------------------


def partition_pages(p: Any, loads: list[dict]) -> dict[str, int]:
    """A partition's sampled pages per node: the sum of what each of its workers sampled over its own rows."""
    counts: dict[str, int] = {}
    for r in p.ranks:
        for k, v in (loads[r].get("pages") or {}).items() if r < len(loads) else ():
            counts[k] = counts.get(k, 0) + v
    return counts


def _intended(numa: Any, p: Any, interleave_nodes: list[int]) -> list[int] | None:
    if numa.placement == "interleave":
        return interleave_nodes
    if numa.placement == "bind" and numa.nodes:
        return sorted(numa.nodes)
    return [p.node] if p.node is not None else None


def judge(
    plan: Any,
    numa: Any,
    topology: Any,
    loads: list[dict],
    applied: dict[str, Any] | None,
    notes: list[str],
    workers_applied: list[dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The report's ``placement`` section: per partition, what was meant, what was sampled, whether it passed."""
    policy = numa.placement
    spread = target_nodes(plan, topology, numa.nodes) if policy == "interleave" else []
    if policy in _MODES:
        ok = bool(applied and applied.get("applied"))
        reason = (applied or {}).get("reason") or ("; ".join(notes) if notes else None)
        bad_worker = next((w for w in workers_applied or [] if w and not w.get("applied")), None)
        if ok and bad_worker:  # the launcher's policy held, a worker's mapping refused it (hugetlbfs: per mapping)
            ok, reason = False, f"in a worker: {bad_worker.get('reason')}"
    else:
        ok, reason = None, None
    parts = []
    for i, p in enumerate(plan.partitions):
        counts = partition_pages(p, loads)
        intended = _intended(numa, p, spread)
        parts.append(_judge_part(i, p, policy, intended, counts, numa.min_local))
    judged = [p for p in parts if p["passed"] is not None]
    sampled = sum(p["sampled"] for p in judged)
    on = sum(p["on_intended"] for p in judged)
    section: dict[str, Any] = {
        "policy": policy,
        "applied": ok,
        "reason": reason,
        "writer": numa.data_writer,
        "nodes": spread if policy == "interleave" else (sorted(numa.nodes) if numa.nodes else None),
        "verify": numa.verify,
        "min_local": numa.min_local,
        "method": "move_pages(2) on up to 1024 sampled pages per worker over its own rows; the policy read back "
        "with get_mempolicy(2)",
        "criterion": (
            f"each partition: at least min_local of its sampled pages on the chosen nodes, and each node's share "
            f"within {EVEN_TOLERANCE:.0%} (+3 sigma of sampling) of an even split"
            if policy == "interleave"
            else "each partition: at least min_local of its sampled pages on its intended node(s)"
        ),
        "partitions": parts,
        "fraction_intended": on / sampled if sampled else None,
        "passed": (all(p["passed"] for p in judged) if judged else None),
    }
    cpu_nodes = [n for n in getattr(topology, "nodes", {}).values() if n.cpus]
    if len(getattr(topology, "nodes", {})) == 1 and cpu_nodes:
        section["note"] = "this machine has one NUMA node: every policy puts every page on it"
    section["summary"] = placement_line(section)
    return section


def _judge_part(
    i: int, p: Any, policy: str, intended: list[int] | None, counts: dict[str, int], min_local: float
) -> dict[str, Any]:
    sampled = sum(v for k, v in counts.items() if k != "error")  # "error": move_pages could not say; "absent" counts
    on = sum(counts.get(str(n), 0) for n in intended or [])
    frac = on / sampled if (intended is not None and sampled) else None
    out: dict[str, Any] = {
        "index": i,
        "node": p.node,
        "start": p.start,
        "stop": p.stop,
        "ranks": list(p.ranks),
        "intended_nodes": intended,
        "sampled_pages_by_node": counts,
        "sampled": sampled,
        "on_intended": on,
        "fraction_intended": frac,
        "passed": None if frac is None else frac >= min_local,
    }
    if policy == "interleave" and intended and on:
        k = len(intended)
        shares = {str(n): counts.get(str(n), 0) / on for n in intended}
        worst = max(abs(s - 1 / k) for s in shares.values())
        allowed = EVEN_TOLERANCE + 3 * math.sqrt((1 / k) * (1 - 1 / k) / on)
        out.update({"shares": shares, "max_deviation_from_even": worst, "deviation_allowed": allowed})
        out["passed"] = bool(out["passed"]) and worst <= allowed
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def placement_line(section: dict[str, Any] | None) -> str | None:
    """``placement: first-touch, 100.0 % local (node 0 100.0 %, node 1 99.8 %)`` — or why not."""
    if not isinstance(section, dict) or not section.get("policy"):
        return None
    policy = section["policy"]
    nodes = section.get("nodes")
    head = policy
    if policy == "interleave" and nodes:
        head += f" over node{'s' if len(nodes) > 1 else ''} {format_cpulist(nodes)}"
    elif policy == "bind" and nodes:
        head += f" to node {format_cpulist(nodes)}"
    if section.get("writer") == "launcher":
        head += ", written by the launcher"
    if section.get("applied") is False:
        head += f" NOT APPLIED ({section.get('reason')})"
    parts = section.get("partitions") or []
    judged = [p for p in parts if p.get("fraction_intended") is not None]
    if not judged:
        if any(p.get("sampled") for p in parts):
            return f"placement: {head}; not judged (no partition has a single intended node: workers unpinned?)"
        return f"placement: {head}; not measured (move_pages(2) gave no page locations)"
    own = policy in ("first-touch", "none") or (policy == "bind" and not nodes)
    if own:
        where = "local"
    elif policy == "interleave":
        where = "on them" if nodes and len(nodes) > 1 else "on it"
    else:
        where = f"on node {format_cpulist(nodes)}" if nodes else "where intended"
    text = f"placement: {head}, {_pct(section.get('fraction_intended'))} {where}"
    if policy == "interleave":
        shares: dict[str, float] = {}
        for p in judged:
            for n, s in (p.get("shares") or {}).items():
                shares[n] = shares.get(n, 0.0) + s * p["on_intended"]
        total = sum(shares.values()) or 1
        text += " (" + ", ".join(f"node {n} {_pct(v / total)}" for n, v in shares.items())
        worst = max((p.get("max_deviation_from_even") or 0.0) for p in judged)
        text += f"; every partition within {_pct(worst)} of even)"
    else:
        text += " (" + ", ".join(_part_label(p, own) + f" {_pct(p['fraction_intended'])}" for p in judged) + ")"
    if section.get("passed") is False:
        text += f" — BELOW numa.min_local {section.get('min_local')}" if policy != "interleave" else " — UNEVEN"
    return text


def _part_label(p: dict[str, Any], own: bool) -> str:
    host = f"{p['host']} " if p.get("host") else ""  # a multi-node run: the node the partition is on
    if p.get("node") is None:
        return f"{host}rows {p.get('start')}-{p.get('stop')}"
    return f"{host}node {p['node']}" if own else f"{host}node {p['node']}'s rows"
