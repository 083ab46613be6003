"""Will the array fit? Checked before anything is allocated, so a run fails with
numbers and a fix instead of a SIGBUS halfway through (python/cpython#114390:
``ftruncate`` reserves nothing on tmpfs).

Three limits apply to a shared array: free space in the shared-memory
filesystem (Docker's default ``/dev/shm`` is 64 MB), the memory cgroup of the
job (tmpfs pages are charged to the cgroup of the process that first touches
them — under Slurm with ``ConstrainRAMSpace`` that is the job), and the memory
the machine has available.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RunError
from .topology import cgroup_dir, read_text

__all__ = ["check_fits", "memory_headroom"]


def memory_headroom() -> tuple[int | None, str]:
    """Bytes this job may still allocate (cgroup v2 memory.max − memory.current, walking up
    the hierarchy, and MemAvailable), and where the tightest limit comes from."""
    best: int | None = None
    source = ""
    cg = cgroup_dir()
    root = Path("/sys/fs/cgroup")
    while cg is not None and cg != root.parent and str(cg).startswith(str(root)):
        limit, current = read_text(cg / "memory.max"), read_text(cg / "memory.current")
        if limit and current and limit != "max":
            try:
                room = int(limit) - int(current)
            except ValueError:
                room = None
            if room is not None and (best is None or room < best):
                best, source = max(0, room), f"memory cgroup {cg} (memory.max {int(limit) / 1e9:.3f} GB)"
        if cg == root:
            break
        cg = cg.parent
    meminfo = read_text(Path("/proc/meminfo")) or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            avail = int(line.split()[1]) * 1024
            if best is None or avail < best:
                best, source = avail, "MemAvailable in /proc/meminfo"
    return best, source


def check_fits(nbytes: int, shm_dir: str) -> None:
    """Raise ``RunError`` with both numbers and the fix if ``nbytes`` cannot be held in ``shm_dir``."""
    try:
        st = os.statvfs(shm_dir)
    except OSError as exc:
        raise RunError(f"data: cannot inspect shared-memory directory {shm_dir}: {exc.strerror}") from None
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise RunError(
            f"data: the array needs {nbytes / 1e9:.3f} GB but {shm_dir} has only {free / 1e9:.3f} GB free; "
            "use smaller data, enlarge it (docker run --shm-size=…, or mount -o remount,size=… /dev/shm) "
            "or run where there is more"
        )
    room, source = memory_headroom()
    if room is not None and nbytes > room:
        raise RunError(
            f"data: the array needs {nbytes / 1e9:.3f} GB but only {room / 1e9:.3f} GB of memory is left "
            f"({source}); use smaller data or ask for a bigger allocation (e.g. sbatch --mem=…)"
        )
