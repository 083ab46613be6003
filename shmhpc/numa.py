"""NUMA page-location queries through the ``move_pages(2)`` system call (ctypes; no libnuma).

With ``nodes=NULL``, ``move_pages`` moves nothing and writes, for each page
address, the node it lives on (or ``-errno``: ``-ENOENT`` for a page not yet
faulted in). That is how a report can *show* where a partition's pages are
instead of assuming first touch worked. Memory policies (``mbind``) slot in here.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

__all__ = ["page_nodes", "available"]

# System call numbers (linux/arch/*/include/uapi/asm/unistd.h).
_SYS_MOVE_PAGES = {"x86_64": 279, "aarch64": 239, "ppc64le": 301, "s390x": 310}.get(platform.machine())
_libc = None


def _syscall() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.syscall


def available() -> bool:
    return _SYS_MOVE_PAGES is not None and platform.system() == "Linux"


def page_nodes(address: int, length: int, max_samples: int = 1024) -> dict[str, int] | None:
    """Count sampled pages of ``[address, address+length)`` per NUMA node in *this* process.

    Keys are node ids as strings (JSON-ready), plus ``"absent"`` for pages not
    faulted in and ``"error"`` for other failures. ``None`` when the query is not
    available on this platform.
    """
    if _SYS_MOVE_PAGES is None or not available() or length <= 0:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    first = address - address % page
    n_pages = (address + length - first + page - 1) // page
    step = max(1, n_pages // max_samples)
    addrs = [first + i * page for i in range(0, n_pages, step)]
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
        key = str(s) if s >= 0 else ("absent" if s == -2 else "error")
        out[key] = out.get(key, 0) + 1
    return out
