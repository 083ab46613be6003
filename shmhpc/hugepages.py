"""Huge pages for the shared segment: where they can be had, and which pages a mapping really got.

A scan of a large array wants few, large pages: first touch then faults in 2 MiB at a time instead of
4 KiB (loading a segment of 4 KiB pages is bound by page faults, about 1 GB/s), and streaming through it
misses the TLB far less. A shared file gets huge pages in one of two ways:

* **hugetlbfs.** A file on a hugetlbfs mount is backed by huge pages from the pool the administrator
  reserved (``vm.nr_hugepages``) and by nothing else. ``mmap(MAP_SHARED)`` reserves the pages of the
  mapping when it is made, so a pool that is too small fails there (ENOMEM), never with a SIGBUS in a
  repeat. File sizes, and the offsets and lengths of mappings and of ``mprotect``, must be multiples of
  the huge page size. Pages are still allocated on first touch under the toucher's memory policy, so the
  pinned owner workers place them on their NUMA nodes as they do on tmpfs.
* **tmpfs with MADV_HUGEPAGE** (transparent huge pages), honoured only where the kernel lets shared
  memory have them (``shmem_enabled``, or the tmpfs ``huge=`` option); often it does not.

:func:`choose` decides, before the segment exists, which of the two it gets (``huge_pages: auto |
require | off``) and says why when hugetlbfs is not used; :func:`parse_smaps` and :func:`measured` read
back what the mappings got. Everything reads text, or a ``/proc`` and a sysfs root that a test can swap.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .topology import read_text

__all__ = [
    "MODES",
    "HugetlbMount",
    "SegmentPages",
    "parse_mounts",
    "hugetlbfs_paths",
    "parse_hugepagesize",
    "filesystem_of",
    "pool_pages",
    "pages_needed",
    "choose",
    "parse_smaps",
    "measured",
    "format_bytes",
]

MODES = ("auto", "require", "off")
BASE_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class HugetlbMount:
    """A hugetlbfs mount point and the size of its pages."""

    path: str
    page_bytes: int


def format_bytes(n: int) -> str:
    """``2 MiB``, ``4 KiB``, ``1 GiB``: page sizes as people say them."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


_SIZE_RE = re.compile(r"^(\d+)([KMG]?)B?$", re.IGNORECASE)


def _size(text: str) -> int | None:
    """``2M`` / ``1G`` / ``64K`` / ``2097152`` (as the kernel writes ``pagesize=``) in bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def _unescape(field: str) -> str:
    """A /proc/mounts path: space, tab, newline and backslash are written as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_hugepagesize(meminfo: str) -> int | None:
    """The default huge page size from /proc/meminfo's ``Hugepagesize:       2048 kB``."""
    for line in meminfo.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "Hugepagesize:" and parts[1].isdigit():
            return int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
    return None


def parse_mounts(text: str, default_page_bytes: int | None) -> list[HugetlbMount]:
    """The hugetlbfs mounts in a /proc/mounts text, in mount order.

    A mount's page size is its ``pagesize=`` option; the kernel always shows it, but a mount without it
    has the default size (``default_page_bytes``, /proc/meminfo's Hugepagesize). Mounted twice: once.
    """
    out: list[HugetlbMount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        page = default_page_bytes
        for opt in fields[3].split(","):
            if opt.startswith("pagesize="):
                page = _size(opt.removeprefix("pagesize="))
        path = _unescape(fields[1])
        if page and all(m.path != path for m in out):
            out.append(HugetlbMount(path, page))
    return out


def hugetlbfs_paths(mounts: str) -> list[str]:
    """Every hugetlbfs mount point in a /proc/mounts text, whatever its page size."""
    out: list[str] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "hugetlbfs":
            out.append(_unescape(fields[1]))
    return list(dict.fromkeys(out))


def filesystem_of(path: str, mounts: str) -> str | None:
    """The type of the filesystem ``path`` is on (the longest mount point above it), from /proc/mounts."""
    real = os.path.realpath(path)
    best, fstype = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:  # a later mount on the same point hides the earlier one
            best, fstype = len(point), fields[2]
    return fstype


def pool_pages(sys_root: str | os.PathLike[str], page_bytes: int) -> tuple[int, int] | None:
    """(pages free and not promised to a mapping, pages in the pool) of one size; None when sysfs has no pool.

    ``free_hugepages`` still counts pages that an existing mapping has reserved but not touched yet
    (``resv_hugepages``): those are not ours to take.
    """
    d = Path(sys_root) / "kernel" / "mm" / "hugepages" / f"hugepages-{page_bytes >> 10}kB"
    values = []
    for name in ("free_hugepages", "resv_hugepages", "nr_hugepages"):
        text = read_text(d / name)
        values.append(int(text) if text and text.isdigit() else None)
    free, resv, total = values
    if free is None:
        return None
    return max(0, free - (resv or 0)), total or 0


def pages_needed(data_bytes: int, page_bytes: int) -> int:
    """Huge pages for a segment: the data rounded up to whole pages, and one more page after it for the
    control slots (a few bytes per worker; a hugetlbfs file is whole pages)."""
    return -(-data_bytes // page_bytes) + 1


def _shmem_thp(sys_root: str | os.PathLike[str]) -> str | None:
    """The active ``shmem_enabled`` setting (``[never]`` → ``never``), or None when the kernel has none."""
    text = read_text(Path(sys_root) / "kernel" / "mm" / "transparent_hugepage" / "shmem_enabled") or ""
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else None


@dataclass(frozen=True)
class SegmentPages:
    """Where the segment goes and with which pages, decided before it is created.

    ``hugetlbfs`` is the mount to create it on, or None for the shared-memory directory (``/dev/shm``),
    where it asks for transparent huge pages unless the mode is ``off``. ``page_bytes`` is the segment's
    page size when known in advance (the hugetlbfs mount's; the base page with huge pages off; None when
    the kernel decides). ``fallback`` says why hugetlbfs is not used (None when it is, or when the mode is
    ``off``) and ``fix`` how an administrator would make it possible.
    """

    mode: str
    hugetlbfs: str | None = None
    page_bytes: int | None = None
    fallback: str | None = None
    fix: str | None = None

    @property
    def advise(self) -> bool:
        """Ask for transparent huge pages (MADV_HUGEPAGE): on tmpfs, unless huge pages are off."""
        return self.mode != "off" and self.hugetlbfs is None

    def problem(self) -> str | None:
        """The one-line error for ``huge_pages: require`` when huge pages cannot be had, else None."""
        if self.mode != "require" or self.hugetlbfs is not None:
            return None
        return f"huge_pages: require, but {self.fallback}; {self.fix}, or set huge_pages: auto"


def choose(
    mode: str,
    data_bytes: int,
    *,
    sys_root: str | os.PathLike[str] = "/sys",
    proc_root: str | os.PathLike[str] = "/proc",
) -> SegmentPages:
    """Where a segment for ``data_bytes`` of data goes under ``huge_pages: mode``.

    ``auto`` and ``require``: the hugetlbfs mount that is writable by us, has enough free pages in its
    pool and wastes the fewest bytes (ties: larger pages); none such, the shared-memory directory with
    the reason (``require`` then refuses to run: :meth:`SegmentPages.problem`). ``off``: the
    shared-memory directory, base pages. The pool can still be taken between this and the segment's
    creation; the mapping's reservation then fails and the session falls back (or refuses) there.
    """
    if mode == "off":
        return SegmentPages("off", page_bytes=BASE_PAGE)
    proc = Path(proc_root)
    default = parse_hugepagesize(read_text(proc / "meminfo") or "")
    mounts = parse_mounts(read_text(proc / "mounts") or "", default)
    reasons: list[str] = []
    fixes: list[str] = []
    fits: list[tuple[int, int, HugetlbMount]] = []
    for m in mounts:
        need = pages_needed(data_bytes, m.page_bytes)
        size = format_bytes(m.page_bytes)
        pool = pool_pages(sys_root, m.page_bytes)
        if not os.access(m.path, os.W_OK):
            reasons.append(f"hugetlbfs {m.path} is not writable by uid {os.getuid()}")
            fixes.append(f"mount it writable for you (mount -t hugetlbfs -o uid={os.getuid()} none {m.path})")
        elif pool is None:
            reasons.append(f"hugetlbfs {m.path}: no pool of {size} pages under {sys_root}/kernel/mm/hugepages")
            fixes.append("mount a hugetlbfs whose page size the kernel has a pool of")
        elif pool[0] < need:
            reasons.append(f"hugetlbfs {m.path} has {pool[0]} free {size} pages, the segment needs {need}")
            fixes.append(f"reserve more as root: echo {pool[1] + need - pool[0]} > {_knob(m.page_bytes, default)}")
        else:
            fits.append((need * m.page_bytes, -m.page_bytes, m))
    if fits:
        best = min(fits, key=lambda t: (t[0], t[1]))[2]
        return SegmentPages(mode, best.path, best.page_bytes)
    if not mounts:
        page = default or 2 << 20
        reasons.append("no hugetlbfs mounted")
        fixes.append(
            f"reserve and mount huge pages as root: echo {pages_needed(data_bytes, page)} > "
            f"{_knob(page, default)}; mkdir -p /dev/hugepages; mount -t hugetlbfs none /dev/hugepages"
        )
    thp = _shmem_thp(sys_root)
    if thp in (None, "never", "deny"):
        reasons.append(f"tmpfs gets no transparent huge pages: shmem_enabled={thp or 'absent'}")
    return SegmentPages(mode, fallback="; ".join(reasons), fix=fixes[0])


def _knob(page_bytes: int, default: int | None) -> str:
    """Where the size of the pool of ``page_bytes`` pages is set."""
    if page_bytes == default:
        return "/proc/sys/vm/nr_hugepages"
    return f"/sys/kernel/mm/hugepages/hugepages-{page_bytes >> 10}kB/nr_hugepages"


# -- what the mapping really got ----------------------------------------------------------------------

_VMA_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


def parse_smaps(text: str, start: int, stop: int) -> dict[str, int] | None:
    """What backs ``[start, stop)`` in this process, from its /proc/self/smaps text.

    Sums over the mappings (VMAs) that overlap the range: ``mapped_bytes`` (resident, hugetlb pages included:
    smaps counts them apart from Rss), ``huge_bytes`` (of those, on huge pages: hugetlb, or shared memory
    mapped by PMD), and the largest ``kernel_page_bytes``. None when no mapping lies in the range.
    """
    out: dict[str, int] | None = None
    inside = False
    for line in text.splitlines():
        m = _VMA_RE.match(line)
        if m:
            inside = int(m.group(1), 16) < stop and start < int(m.group(2), 16)  # overlaps: a mapping ends on a page
            if inside and out is None:
                out = {"kernel_page_bytes": 0, "mapped_bytes": 0, "huge_bytes": 0}
            continue
        if not inside or out is None:
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        value = int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
        key = parts[0]
        if key == "KernelPageSize:":
            out["kernel_page_bytes"] = max(out["kernel_page_bytes"], value)
        elif key == "Rss:":
            out["mapped_bytes"] += value
        elif key in ("Shared_Hugetlb:", "Private_Hugetlb:"):
            out["mapped_bytes"] += value
            out["huge_bytes"] += value
        elif key in ("ShmemPmdMapped:", "FilePmdMapped:"):
            out["huge_bytes"] += value
    return out


def measured(mappings: list[dict[str, int] | None], sys_root: str | os.PathLike[str] = "/sys") -> dict:
    """The segment's pages as the workers' mappings show them after load (one :func:`parse_smaps` each).

    ``page_bytes``: the hugetlb page size when the kernel maps the segment with one; else the PMD size
    (``hpage_pmd_size``) when some of it is mapped by transparent huge pages; else the base page.
    ``huge_fraction``: the share of the touched bytes that sit on huge pages.
    """
    seen = [m for m in mappings if m]
    if not seen:
        return {"page_bytes": None, "huge_fraction": None}
    kernel = max(m["kernel_page_bytes"] for m in seen)
    mapped = sum(m["mapped_bytes"] for m in seen)
    huge = sum(m["huge_bytes"] for m in seen)
    if kernel > BASE_PAGE:
        page = kernel
    elif huge:
        pmd = read_text(Path(sys_root) / "kernel" / "mm" / "transparent_hugepage" / "hpage_pmd_size")
        page = int(pmd) if pmd and pmd.isdigit() else BASE_PAGE * (BASE_PAGE // 8)  # one page table of entries
    else:
        page = kernel or BASE_PAGE
    return {"page_bytes": page, "huge_fraction": round(huge / mapped, 4) if mapped else None}
