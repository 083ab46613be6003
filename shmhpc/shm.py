"""The shared array's lifecycle: one owner creates and unlinks; workers attach.

We map files in the POSIX shared-memory directory (``/dev/shm`` on Linux)
ourselves instead of using ``multiprocessing.shared_memory``: its resource
tracker registers every *attach* and unlinks segments that other processes
still use (python/cpython#82300; ``track=False`` only exists from 3.13). Here
nobody but the launcher ever unlinks, on every Python version.

Names are ``shmhpc-u<uid>-p<pid>-j<slurm job or 0>-<16 hex chars>``: the owner
is recognisable (so a sweep of dead owners' leftovers is safe on a shared
node), and the random part makes the name unguessable. Files are created with
``O_EXCL`` and mode 0600, so no other user can open or pre-create them.

Liveness does not rest on the pid in the name. The launcher takes ``flock(LOCK_SH)``
on its segment right after creating it (before sizing it) and holds it until it has
unlinked it; the kernel drops the lock when the launcher dies, however it dies. A
launcher in another PID namespace (a container sharing ``/dev/shm``) has a pid the
sweep cannot see, or one that names an unrelated process here, but ``flock`` works on
the same tmpfs file across namespaces. So the sweep (``check_segments``) tries
``LOCK_EX|LOCK_NB``: held by anyone means in use, whatever the pid says. A free lock
makes a segment stale only if its owner pid is not running here (or now belongs to a
process started after the segment); it is left alone, and listed, when that pid is
running (a launcher of an older shmhpc, which took no lock) or when the segment is
empty and less than ``CREATING_GRACE_S`` old (its creator may be between ``open`` and
``flock``). A forked child inherits the locked descriptor and keeps the segment in
use while it lives, which is right: it still maps it.

With ``huge_pages`` (:mod:`shmhpc.hugepages`) a segment may instead be a file on a hugetlbfs mount,
with the same name, lock and lifecycle; its size is a whole number of huge pages, and so are the
offsets and lengths of everything that maps or protects part of it. The sweep looks at every
hugetlbfs mount as well as the shared-memory directory.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass

import numpy as np

from .errors import RunError
from .hugepages import format_bytes, hugetlbfs_paths, parse_smaps
from .topology import read_text

__all__ = [
    "Segment",
    "default_shm_dir",
    "segment_dirs",
    "segment_name",
    "parse_segment_name",
    "PREFIX",
    "SegmentCheck",
    "StaleSegment",
    "check_segments",
    "find_stale",
    "remove_stale",
]

PREFIX = "shmhpc-"
_NAME_RE = re.compile(r"^shmhpc-u(\d+)-p(\d+)-j(\d+)-([0-9a-f]{16})$")
# Linux >= 5.14: fault in (allocate) a range of a shared mapping in one call, and
# report failure as an error instead of a later SIGBUS (madvise(2)).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # map pages that exist (another process wrote them)
PAGE = mmap.PAGESIZE
# An empty segment nobody has locked yet is left alone this long: its creator may be between open and flock.
CREATING_GRACE_S = 10.0


def default_shm_dir() -> str:
    """Where segments live: ``$SHMHPC_SHM_DIR`` (tests, odd systems) or ``/dev/shm``."""
    return os.environ.get("SHMHPC_SHM_DIR") or "/dev/shm"


def segment_name(pid: int | None = None) -> str:
    job = os.environ.get("SLURM_JOB_ID", "0")
    if not job.isdigit():
        job = "0"
    return f"{PREFIX}u{os.getuid()}-p{pid or os.getpid()}-j{job}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class SegmentOwner:
    uid: int
    pid: int
    slurm_job: int


def parse_segment_name(name: str) -> SegmentOwner | None:
    """The owner encoded in a segment name, or None if the name is not ours."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return SegmentOwner(int(m.group(1)), int(m.group(2)), int(m.group(3)))


class Segment:
    """A shared-memory file mapped into this process.

    Use ``Segment.create`` in the launcher (the only process that unlinks) and
    ``Segment.attach`` in workers.
    """

    def __init__(
        self, name: str, path: str, size: int, fd: int, owner: bool, advise: bool = True, page_bytes: int = PAGE
    ):
        self.name = name
        self.path = path
        self.size = size
        self.owner = owner
        self.page_bytes = page_bytes  # the hugetlbfs page size, or the base page
        self._map: mmap.mmap | None = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # The owner keeps its descriptor, and with it the liveness lock, until ``unlink``.
        self._lock_fd = fd if owner else -1
        if not owner:
            os.close(fd)
        # Ask for 2 MiB pages where tmpfs allows them (shmem_enabled=advise/within_size/always):
        # far fewer page faults on first touch (4 KiB pages make it fault-bound, ~1 GB/s) and fewer
        # TLB misses when streaming; unmapping a large segment is much cheaper too. (A hugetlbfs segment
        # has huge pages already; with huge_pages: off nobody asks.)
        if advise and page_bytes == PAGE and size >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._map.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        self._unlinked = False

    @classmethod
    def create(
        cls, size_bytes: int, shm_dir: str | None = None, *, huge_page_bytes: int | None = None, advise: bool = True
    ) -> Segment:
        """Create a new segment of ``size_bytes`` (mode 0600, exclusive).

        ``huge_page_bytes``: ``shm_dir`` is a hugetlbfs mount with pages of that size; the size is rounded
        up to whole pages, which the mapping reserves now (a ``RunError`` when the pool has too few).
        ``advise``: ask tmpfs for transparent huge pages (MADV_HUGEPAGE).
        """
        if size_bytes <= 0:
            raise ValueError("segment size must be positive")
        d = shm_dir or default_shm_dir()
        if huge_page_bytes:  # a hugetlbfs file is whole pages (ftruncate refuses any other size)
            size_bytes = -(-size_bytes // huge_page_bytes) * huge_page_bytes
        name = segment_name()
        path = os.path.join(d, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RunError(f"cannot create shared segment in {d}: {exc.strerror}") from None
        try:
            # The liveness lock, held until unlink (the sweep spares an empty unlocked segment for a while).
            # A filesystem without flock (an odd $SHMHPC_SHM_DIR) still runs; its sweep cannot test locks.
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            # ftruncate reserves nothing on tmpfs: pages are allocated on first touch.
            os.ftruncate(fd, size_bytes)
            if huge_page_bytes is None:
                return cls(name, path, size_bytes, fd, owner=True, advise=advise)
            try:  # on hugetlbfs the shared mapping reserves its pages from the pool (not yet allocated)
                return cls(name, path, size_bytes, fd, owner=True, advise=False, page_bytes=huge_page_bytes)
            except OSError as exc:
                raise RunError(
                    f"cannot reserve {size_bytes // huge_page_bytes} huge pages of {format_bytes(huge_page_bytes)} "
                    f"on hugetlbfs {d}: {exc.strerror}"
                ) from None
        except BaseException:
            os.close(fd) if fd >= 0 else None
            _unlink_quietly(path)
            raise

    @classmethod
    def attach(
        cls,
        name: str,
        size_bytes: int,
        shm_dir: str | None = None,
        *,
        page_bytes: int | None = None,
        advise: bool = True,
    ) -> Segment:
        """Map an existing segment by name (never unlinks it); ``page_bytes`` and ``advise`` as its creator's."""
        path = os.path.join(shm_dir or default_shm_dir(), name)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        actual = os.fstat(fd).st_size
        if actual != size_bytes:
            os.close(fd)
            raise RunError(f"shared segment {name} is {actual} bytes, expected {size_bytes}")
        return cls(name, path, size_bytes, fd, owner=False, advise=advise, page_bytes=page_bytes or PAGE)

    # -- views ---------------------------------------------------------------------
    def array(self, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """A NumPy view of the whole segment (drop every view before ``close``)."""
        if self._map is None:
            raise RunError(f"segment {self.name} is closed")
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        return np.frombuffer(self._map, dtype=dt, count=count).reshape(shape)

    def view(self, dtype: np.dtype | type | str, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A NumPy view of part of the segment starting at byte ``offset``."""
        if self._map is None:
            raise RunError(f"segment {self.name} is closed")
        return np.frombuffer(self._map, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=offset).reshape(shape)

    def populate(self, offset: int, length: int, write: bool = True) -> bool:
        """Fault in (allocate) the whole pages inside ``[offset, offset+length)``.

        This is the first touch: done by the worker pinned where the data should
        live, it puts the pages on that worker's NUMA node. Returns False when
        the kernel lacks MADV_POPULATE_WRITE (the caller's writes then fault the
        pages in one by one). Raises ``OSError`` (ENOMEM/EFAULT) when memory
        runs out — instead of the SIGBUS a plain write would get. ``write=False``: map the
        pages that exist (``MADV_POPULATE_READ``), e.g. written by another process.
        """
        if self._map is None:
            raise RunError(f"segment {self.name} is closed")
        page = self.page_bytes
        if write:  # whole pages only: a page shared with a neighbour is its first toucher's
            start, stop = -(-offset // page) * page, (offset + length) // page * page
        else:  # every page our bytes are on (they exist: another process wrote them)
            start, stop = offset // page * page, min(self.size, -(-(offset + length) // page) * page)
        if stop <= start:
            return True
        try:
            self._map.madvise(MADV_POPULATE_WRITE if write else MADV_POPULATE_READ, start, stop - start)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):  # kernel older than 5.14
                return False
            # ENOMEM, or EFAULT where a plain write would have raised SIGBUS: tmpfs or cgroup full.
            raise RunError(
                f"cannot reserve {(stop - start) / 1e6:,.1f} MB of shared memory in {os.path.dirname(self.path)} "
                f"({exc.strerror}): the filesystem or the memory limit is full; use smaller data or more memory"
            ) from None
        return True

    def reserve(self, offset: int, length: int) -> str:
        """Allocate ``[offset, offset+length)`` now, from the calling (pinned) process.

        ``MADV_POPULATE_WRITE`` where the kernel has it, else ``posix_fallocate`` on
        the file (tmpfs allocates the pages under the caller's memory policy, so
        either way they land where the owner runs). Returns the method used.
        Raises ``RunError`` when memory runs out — never a later SIGBUS.
        """
        if self.populate(offset, length):
            return "madvise(MADV_POPULATE_WRITE)"
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.posix_fallocate(fd, offset, length)
        except OSError as exc:
            raise RunError(
                f"cannot reserve {length / 1e6:,.1f} MB of shared memory in {os.path.dirname(self.path)} "
                f"({exc.strerror}): the filesystem or the memory limit is full; use smaller data or more memory"
            ) from None
        finally:
            os.close(fd)
        return "posix_fallocate"

    def protect(self, length: int, writable: bool = False) -> None:
        """``protect_read_only``, or (``writable=True``) make those bytes writable again (``Session.fill``)."""
        if not writable:
            return self.protect_read_only(length)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if length > 0 and libc.mprotect(self.address(), length, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            raise RunError(f"cannot make segment {self.name} writable: {os.strerror(ctypes.get_errno())}")
        return None

    def protect_read_only(self, length: int) -> None:
        """Make the first ``length`` bytes (a multiple of the segment's page size) read-only in this process.

        ``mprotect(2)``: a later write through any view, from Python or native code, faults (SIGSEGV)
        instead of changing shared data. The rest of the mapping (the control slots) stays writable.
        """
        import ctypes

        if length <= 0:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(self.address(), length, mmap.PROT_READ) != 0:
            err = ctypes.get_errno()
            raise RunError(f"cannot make segment {self.name} read-only: {os.strerror(err)}")

    def address(self) -> int:
        """Virtual address of the mapping in this process (for page-location queries)."""
        import ctypes

        if self._map is None:
            raise RunError(f"segment {self.name} is closed")
        buf = (ctypes.c_char * 1).from_buffer(self._map)
        addr = ctypes.addressof(buf)
        del buf
        return addr

    def mapped_pages(self) -> dict[str, int] | None:
        """Which pages back this process's mapping of the segment now, as the kernel says in
        /proc/self/smaps (:func:`shmhpc.hugepages.parse_smaps`); None where smaps cannot be read."""
        text = read_text("/proc/self/smaps")
        if text is None:
            return None
        addr = self.address()
        return parse_smaps(text, addr, addr + self.size)

    # -- teardown ------------------------------------------------------------------
    def close(self) -> None:
        """Unmap. Fails with BufferError while NumPy views are alive; then leaves the map to process exit."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                return
            self._map = None

    def unlink(self) -> None:
        """Remove the name (owner only); the memory is freed once every mapping is gone."""
        if not self.owner:
            raise RunError("only the launcher that created a segment unlinks it")
        if not self._unlinked:
            _unlink_quietly(self.path)
            self._unlinked = True
        if self._lock_fd >= 0:  # only now: a sweep must never find the name without the lock
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.owner:
            self.unlink()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- leftovers of launchers that died (SIGKILL, node OOM killer) -------------------------


@dataclass(frozen=True)
class SegmentCheck:
    """One segment of ours as the sweep judged it: ``stale`` (safe to remove) or left alone, and why."""

    name: str
    path: str
    size_bytes: int
    owner_pid: int
    slurm_job: int
    reason: str
    stale: bool = True


StaleSegment = SegmentCheck  # the name find_stale's callers know


def _owner_is_gone(pid: int, created: float) -> str | None:
    """Why the owner of a segment created at ``created`` is dead, or None if it may be alive."""
    import psutil

    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return f"owner pid {pid} is not running here"
    except psutil.Error:
        return None  # cannot tell (another user's process): leave it alone
    # A live process with that pid that started after the segment was made is a reused pid.
    if started > created + 1.0:
        return f"pid {pid} now belongs to a process started after the segment was created"
    return None


def _judge(fd: int, pid: int, st: os.stat_result) -> tuple[bool, str]:
    """(stale, why) for the segment open on ``fd``; see the module docstring."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the caller closes fd
    except BlockingIOError:
        return False, "in use: a process holds its lock"
    except OSError as exc:
        return False, f"cannot test its lock: {exc.strerror}"
    age = time.time() - st.st_ctime
    if st.st_size == 0 and age < CREATING_GRACE_S:
        return False, f"empty, not locked yet and only {age:.0f} s old: owner pid {pid} may still be creating it"
    gone = _owner_is_gone(pid, st.st_ctime)
    if gone:
        return True, f"{gone} and nobody holds its lock"
    return False, f"nobody holds its lock but owner pid {pid} is running (a launcher of an older shmhpc?)"


def segment_dirs(shm_dir: str | None = None) -> list[str]:
    """Where segments may be: the shared-memory directory, then every hugetlbfs mount (``huge_pages``)."""
    dirs = [shm_dir or default_shm_dir()]
    for path in hugetlbfs_paths(read_text("/proc/mounts") or ""):
        if all(os.path.realpath(path) != os.path.realpath(d) for d in dirs):
            dirs.append(path)
    return dirs


def check_segments(shm_dir: str | None = None) -> list[SegmentCheck]:
    """Judge every segment of ours (this uid) in ``segment_dirs(shm_dir)``: stale, or left alone with the
    reason. Never another user's."""
    out: list[SegmentCheck] = []
    for d in segment_dirs(shm_dir):
        out.extend(_check_dir(d))
    return out


def _check_dir(d: str) -> list[SegmentCheck]:
    uid = os.getuid()
    out: list[SegmentCheck] = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        owner = parse_segment_name(name)
        if owner is None or owner.uid != uid:
            continue
        path = os.path.join(d, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not ours to open (another user's 0600 file): never touched
        try:
            st = os.fstat(fd)
            if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
                continue
            stale, reason = _judge(fd, owner.pid, st)
        finally:
            os.close(fd)
        out.append(SegmentCheck(name, path, st.st_size, owner.pid, owner.slurm_job, reason, stale))
    return out


def find_stale(shm_dir: str | None = None) -> list[StaleSegment]:
    """Segments of ours (this uid) whose launcher is dead. Never another user's, never a live run's."""
    return [c for c in check_segments(shm_dir) if c.stale]


def remove_stale(stale: list[StaleSegment]) -> list[StaleSegment]:
    """Unlink the given stale segments; returns those actually removed."""
    removed = []
    for s in stale:
        try:
            os.unlink(s.path)
            removed.append(s)
        except FileNotFoundError:
            pass
    return removed
