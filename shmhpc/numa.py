"""NUMA system calls through ctypes (no libnuma): where pages are, and where they may go.

``move_pages(2)`` with ``nodes=NULL`` moves nothing and writes, for each page address, the node it
lives on (or ``-errno``: ``-ENOENT`` for a page not faulted in *in the calling process*). That is how a
report can *show* where a partition's pages are instead of assuming first touch worked.

``mbind(2)`` sets a memory policy on an address range before its pages exist: ``MPOL_BIND`` (only
these nodes) or ``MPOL_INTERLEAVE`` (round-robin over them, by page offset). On a shared-memory
(tmpfs) mapping the policy belongs to the file, so it holds whichever process writes the pages; on a
hugetlbfs mapping it belongs to the mapping, so every process that may touch the pages sets it.
``get_mempolicy(2)`` with ``MPOL_F_ADDR`` reads back the policy in force at an address.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MPOL_BIND",
    "MPOL_DEFAULT",
    "MPOL_INTERLEAVE",
    "available",
    "mbind",
    "page_nodes",
    "policy_at",
]

# System call numbers (linux/arch/*/include/uapi/asm/unistd*.h; the generic table for aarch64).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"mbind": 237, "get_mempolicy": 239, "move_pages": 279},
    "aarch64": {"mbind": 235, "get_mempolicy": 236, "move_pages": 239},
    "ppc64le": {"mbind": 259, "get_mempolicy": 260, "move_pages": 301},
    "s390x": {"mbind": 268, "get_mempolicy": 269, "move_pages": 310},
}
_NR = _SYSCALLS.get(platform.machine(), {}) if platform.system() == "Linux" else {}
_SYS_MOVE_PAGES = _NR.get("move_pages")

# Policy modes (linux/mempolicy.h); the mode read back may carry flags in its high bits.
MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3
MODE_NAMES = {MPOL_DEFAULT: "default", MPOL_PREFERRED: "preferred", MPOL_BIND: "bind", MPOL_INTERLEAVE: "interleave"}
_MPOL_MODE_FLAGS = (1 << 15) | (1 << 14) | (1 << 13)  # MPOL_F_STATIC_NODES, _RELATIVE_NODES, _NUMA_BALANCING
_MPOL_F_ADDR = 1 << 1
_MAX_NODES = 1024  # node mask bits passed to the kernel (CONFIG_NODES_SHIFT is at most 10)
_ULONG_BITS = ctypes.sizeof(ctypes.c_ulong) * 8
_libc = None


def _syscall() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.syscall


def available() -> bool:
    return _SYS_MOVE_PAGES is not None


def _sample(n_pages: int, max_samples: int) -> list[int]:
    """Page indices to look at: every page, or one page at a fixed pseudo-random place in each of
    ``max_samples`` equal strata. A fixed stride could alias with an interleaved layout (every second
    page on the same node) and see one node only; a random pick in each stratum cannot."""
    if n_pages <= max_samples:
        return list(range(n_pages))
    x = 0x9E3779B97F4A7C15
    out = []
    for k in range(max_samples):
        lo, hi = n_pages * k // max_samples, n_pages * (k + 1) // max_samples
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)  # a fixed LCG: the same pages each run
        out.append(lo + (x >> 33) % (hi - lo))
    return out


def page_nodes(address: int, length: int, max_samples: int = 1024) -> dict[str, int] | None:
    """Count sampled pages of ``[address, address+length)`` per NUMA node in *this* process.

    Keys are node ids as strings (JSON-ready), plus ``"absent"`` for pages not
    faulted in and ``"error"`` for other failures. ``None`` when the query is not
    available on this platform.
    """
    if _SYS_MOVE_PAGES is None or length <= 0:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    first = address - address % page
    n_pages = (address + length - first + page - 1) // page
    addrs = [first + i * page for i in _sample(n_pages, max_samples)]
    count = len(addrs)
    pages = (ctypes.c_void_p * count)(*addrs)
    status = (ctypes.c_int * count)()
    rc = _syscall()(
        ctypes.c_long(_SYS_MOVE_PAGES), ctypes.c_int(0), ctypes.c_ulong(count), pages, None, status, ctypes.c_int(0)
    )
    if rc != 0:
        return {"error": count}
    out: dict[str, int] = {}
    for s in status:
        key = str(s) if s >= 0 else ("absent" if s == -errno.ENOENT else "error")
        out[key] = out.get(key, 0) + 1
    return out


def _mask(nodes: Iterable[int]) -> ctypes.Array:
    words = (ctypes.c_ulong * (_MAX_NODES // _ULONG_BITS))()
    for n in nodes:
        if not 0 <= n < _MAX_NODES:
            raise OSError(errno.EINVAL, f"node {n} is out of range")
        words[n // _ULONG_BITS] |= 1 << (n % _ULONG_BITS)
    return words


def mbind(address: int, length: int, mode: int, nodes: Iterable[int]) -> None:
    """Set policy ``mode`` over ``nodes`` on ``[address, address+length)`` (``address`` page-aligned).

    Raises ``OSError`` with the kernel's errno: ``EPERM`` where a seccomp profile refuses it (Docker's
    default does without CAP_SYS_NICE), ``ENOSYS`` on a kernel without NUMA, ``EINVAL`` for a node this
    process may not allocate on (cpuset ``mems``) or a range not aligned to the mapping's page size.
    """
    nr = _NR.get("mbind")
    if nr is None:
        raise OSError(errno.ENOSYS, f"mbind is not supported on {platform.system()} {platform.machine()}")
    mask = _mask(nodes)
    rc = _syscall()(
        ctypes.c_long(nr),
        ctypes.c_void_p(address),
        ctypes.c_ulong(length),
        ctypes.c_int(mode),
        mask,
        ctypes.c_ulong(_MAX_NODES + 1),  # maxnode: the kernel reads maxnode - 1 bits
        ctypes.c_uint(0),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def policy_at(address: int) -> tuple[int, list[int]]:
    """The policy in force at ``address`` in this process, read back: (mode, nodes)."""
    nr = _NR.get("get_mempolicy")
    if nr is None:
        raise OSError(errno.ENOSYS, f"get_mempolicy is not supported on {platform.system()} {platform.machine()}")
    mode = ctypes.c_int(-1)
    mask = _mask(())
    rc = _syscall()(
        ctypes.c_long(nr),
        ctypes.byref(mode),
        mask,
        ctypes.c_ulong(_MAX_NODES + 1),
        ctypes.c_void_p(address),
        ctypes.c_ulong(_MPOL_F_ADDR),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    nodes = [n for n in range(_MAX_NODES) if mask[n // _ULONG_BITS] >> (n % _ULONG_BITS) & 1]
    return mode.value & ~_MPOL_MODE_FLAGS, nodes
