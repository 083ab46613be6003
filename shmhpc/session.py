"""A run session: one planned job's pinned worker pool on its own shared segment.

The pieces every caller needs — ``run``, the benchmarks, and later ``bench`` and the MPI mode —
in one object that owns the segment and the pool and always tears them down::

    prep = prepare(spec, read_topology())
    with RunSession(prep) as session:          # the segment is created
        session.start()                        # workers started, pinned, attached
        session.load()                         # each owner first-touches and fills its rows
        wall_s, replies = session.round(0)     # every worker reduces its chunks once
        value = prep.kernel.finalize(session.combine(replies))

Layout of the segment: the array from offset 0, padded to a whole page, then one control slot per
worker (where each worker writes which chunk it is in, so a death can be located).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from .data import RowFiller
from .errors import RunError, SpecError
from .kernels import combine_all
from .numa_policy import PolicyRange, apply_ranges, policy_ranges
from .planning import Prepared
from .pool import CTL_FIELDS, Pool, WorkerInit, ctl_bytes
from .resources import check_fits
from .shm import Segment, default_shm_dir
from .threads import thread_env

__all__ = ["RunSession"]


class RunSession:
    """Owns the shared segment and the pinned pool of one prepared job.

    Parameters
    ----------
    prep:
        The job, from :func:`shmhpc.planning.prepare`.
    shm_dir:
        Where the segment goes (default ``/dev/shm`` or ``$SHMHPC_SHM_DIR``).
    stop:
        An object with ``signum``/``count`` set by the caller's signal handler (``StopSignals``):
        waits for workers wake up to act on it.
    start_method, timeout_s:
        Default to the spec's.
    on_stall:
        Called with a line when a worker has finished no chunk for the spec's ``stall_warning_s``
        (the lines are kept in ``stalls`` too).
    stream:
        ``bench``: the data (float64, ``3 * n`` elements) is STREAM's arrays a, b, c; each worker owns
        the same page-aligned slice of all three and first-touches it.
    """

    def __init__(
        self,
        prep: Prepared,
        *,
        shm_dir: str | None = None,
        stop: Any = None,
        start_method: str | None = None,
        timeout_s: float | None = None,
        on_stall: Callable[[str], None] | None = None,
        stream: bool = False,
        source: np.ndarray | None = None,
        orphan_unlink: bool = False,
    ) -> None:
        self.prep = prep
        self.source = source  # data.source array: the in-memory array the launcher copies in (Session.share)
        self.orphan_unlink = orphan_unlink  # workers remove the segment if this launcher dies (a multi-node rank)
        self.loaded = False  # the array is in the segment: workers started later only map their rows
        self.shm_dir = shm_dir or default_shm_dir()
        self.stop = stop
        self.start_method = start_method or prep.spec.start_method
        self.timeout_s = timeout_s if timeout_s is not None else prep.spec.timeout_s
        self.segment: Segment | None = None
        self.pool: Pool | None = None
        self.hello: list[dict] = []  # what each worker reported at start (pid, CPUs, thread pools)
        self.on_stall = on_stall
        self.stream = stream
        self.warnings: list[str] = []
        self.stalls: list[str] = []  # "no progress" lines said during the rounds
        self.killed: list[str] = []  # workers teardown had to kill, with their state
        self.start_s: float | None = None
        self.start_info: dict[str, Any] | None = None  # after ``start``: the start method used, and why
        self.teardown_s: float | None = None
        self._ctl_offset = 0
        self.pages = prep.pages  # where the segment goes; after __enter__, where it went and why
        # numa.placement bind/interleave: the mbind ranges, notes on rows left without a policy, and whether
        # the launcher's mbind calls held (set in __enter__, before any page of the array exists)
        self.numa_ranges: list[PolicyRange] = []
        self.numa_notes: list[str] = []
        self.numa_applied: dict[str, Any] | None = None
        self.write_s: float | None = None  # numa.writer: launcher — the launcher's seconds writing the data
        self.last_replies: list[dict] = []  # a multi-node run's last round (rank 0 combines its states)
        self.peer_pids: set[int] = set()  # a multi-node run's other launchers on this host (not "other runs")

    # -- lifetime ----------------------------------------------------------------------------
    def __enter__(self) -> RunSession:
        """Check that the array fits, then create the segment (the workers start with ``start``).

        On the hugetlbfs mount ``prep.pages`` chose, if it has one. When its pool was taken since (the
        mapping cannot reserve its pages), ``huge_pages: auto`` falls back to the shared-memory directory,
        saying why in ``pages``, and ``require`` refuses to run (exit 2), still before any worker starts.
        """
        pages = self.pages
        if pages.hugetlbfs is not None and pages.page_bytes:
            try:
                self.segment = self._create(pages.hugetlbfs, pages.page_bytes)
            except RunError as exc:
                if pages.mode == "require":
                    raise SpecError(
                        f"huge_pages: require, but {exc}; reserve more huge pages (as root: /proc/sys/vm/nr_hugepages)"
                        " or set huge_pages: auto"
                    ) from None
                self.pages = replace(pages, hugetlbfs=None, page_bytes=None, fallback=str(exc))
        if self.segment is None:
            check_fits(self.prep.data.nbytes, self.shm_dir)
            self.segment = self._create(self.shm_dir, None)
        try:
            self._set_policy(self.segment)
        except BaseException:  # __exit__ will not run: the segment must not outlive a failed __enter__
            self.close()
            raise
        return self

    def _set_policy(self, seg: Segment) -> None:
        """numa.placement bind/interleave: mbind the array's ranges in the launcher's mapping, now, while no
        page exists (aligned to the segment's real page size). Refused: the run goes on without, saying why."""
        prep = self.prep
        self.numa_ranges, self.numa_notes = policy_ranges(
            prep.plan, prep.spec.numa, prep.topology, prep.data.nbytes, seg.page_bytes
        )
        if self.numa_ranges:
            self.numa_applied = apply_ranges(seg.address(), self.numa_ranges)
        elif prep.spec.numa.placement in ("bind", "interleave"):
            self.numa_applied = {"applied": False, "reason": "; ".join(self.numa_notes) or "nothing to bind"}

    def _create(self, where: str, huge_page_bytes: int | None) -> Segment:
        # The data from offset 0, padded to the page (or huge page) size the partitions are aligned to, and
        # at least to a hugetlbfs page: the read-only part that mprotect covers must be whole pages.
        page = max(self.prep.plan.align_bytes, huge_page_bytes or 0)
        self._ctl_offset = -(-self.prep.data.nbytes // page) * page
        size = self._ctl_offset + ctl_bytes(len(self.prep.plan.workers))
        return Segment.create(size, where, huge_page_bytes=huge_page_bytes, advise=self.pages.advise)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> list[dict]:
        """Start the workers; each pins itself, limits its threads and attaches (nothing is touched yet).

        Returns what each reported: pid, the CPUs it observed, its thread pools.
        """
        prep, spec, seg = self.prep, self.prep.spec, self._segment()
        env = thread_env(spec.threads_per_worker)
        parts = _stream_parts(prep.data.n_elements // 3, len(prep.plan.workers)) if self.stream else None
        inits = [
            WorkerInit(
                rank=w.rank,
                cpus=w.cpus,
                pin=prep.plan.pinned,
                threads=spec.threads_per_worker,
                env=env,
                segment=seg.name,
                shm_dir=os.path.dirname(seg.path),  # a hugetlbfs mount, or the shared-memory directory
                data=prep.data,
                rows=w.rows,
                chunks=w.chunks,
                kernel=spec.kernel,
                accumulate=spec.accumulate,
                search_path=prep.search_path,
                engine=prep.engine,
                segment_size=seg.size,
                ctl_offset=self._ctl_offset,
                segment_page_bytes=self.pages.page_bytes if self.pages.hugetlbfs else None,
                huge_advise=self.pages.advise,
                stream=parts[w.rank] if parts else None,
                numa_ranges=tuple(self.numa_ranges) if (self.numa_applied or {}).get("applied") else (),
                fill=(spec.numa.data_writer == "owners" and not self.loaded) or self.stream,
                orphan_unlink=self.orphan_unlink,
                launcher_pid=os.getpid(),
            )
            for w in prep.plan.workers
        ]
        self.pool = Pool(
            inits,
            self.start_method,
            self.timeout_s,
            stop_flag=self.stop,
            ctl=seg.view(np.int64, (len(inits), CTL_FIELDS), self._ctl_offset),
            stall_s=spec.stall_warning_s,
            on_stall=self.on_stall,
        )
        self.stalls = self.pool.stalls
        t0 = time.perf_counter()
        try:
            self.hello = self.pool.start(env)
        finally:
            self.start_s = time.perf_counter() - t0
            self.warnings.extend(self.pool.warnings)
            self.start_info = {
                "start_method": self.pool.method,
                "start_method_asked": self.start_method,
                "start_method_reason": self.pool.method_reason,
                "launcher_threads": self.pool.launcher_threads,
            }
        return self.hello

    def stop_workers(self) -> None:
        """Stop the pool (the segment stays, e.g. for verification); records ``teardown_s``. Idempotent."""
        if self.pool is None:
            return
        t0 = time.perf_counter()
        self.pool.close()
        self.teardown_s = time.perf_counter() - t0
        self.killed.extend(self.pool.killed)
        self.pool.ctl = None  # drop the view so the mapping can be closed
        self.pool = None

    def close(self) -> None:
        """Unlink the segment, stop the workers, unmap it. Never raises; safe to call twice.

        The name goes first (the memory stays until the last mapping goes): a launcher killed while it waits
        for its workers to stop (mpirun ending a job whose other rank died) has left nothing behind.
        """
        if self.segment is not None:
            self.segment.unlink()
        self.stop_workers()
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    # -- work --------------------------------------------------------------------------------
    def _segment(self) -> Segment:
        if self.segment is None:
            raise RuntimeError("the session's segment is closed (use the session in a with block)")
        return self.segment

    def _running(self) -> Pool:
        if self.pool is None:
            raise RuntimeError("the session's workers are not running (call start() in its with block)")
        return self.pool

    def load(self) -> list[dict]:
        """Every owner reserves, first-touches and fills its rows; per worker: seconds, method, page nodes.

        With ``numa.writer: launcher`` this process writes the whole array first (one writer, wherever the
        scheduler runs it: only a policy decides where the pages go), then each worker maps its rows.
        """
        pool = self._running()
        if self.prep.spec.numa.data_writer == "launcher" and not self.stream and not self.loaded:
            seg, data = self._segment(), self.prep.data
            t0 = time.perf_counter()
            seg.reserve(0, data.nbytes)
            arr = seg.array(data.dtype, data.shape)
            try:
                if self.source is not None:
                    np.copyto(arr, self.source, casting="equiv")  # byte order may differ, values not
                else:
                    RowFiller(arr, data).fill(0, data.n_rows)
            finally:
                del arr
            self.write_s = time.perf_counter() - t0
        loads = pool.load()
        self.loaded = True
        return loads

    def set_kernel(self, kernel: Any) -> None:
        """Every worker reduces with ``kernel`` from now on (the Python API: another kernel, same warm pool)."""
        self._running().set_kernel(kernel)

    def fill(self, payload: bytes) -> list[dict]:
        """Every owner calls the pickled ``func(block, start_row)`` on its chunks (writable views)."""
        return self._running().fill(payload)

    def round(self, index: int) -> tuple[float, list[dict]]:
        """One round: every worker reduces its chunks. Returns (wall seconds, per-worker replies)."""
        return self._running().run_round(index)

    def stream_round(self, op: str) -> tuple[float, list[float]]:
        """``bench``: every worker runs STREAM kernel ``op`` once; (wall seconds, each worker's seconds)."""
        return self._running().stream_round(op)

    def combine(self, replies: list[dict]) -> Any:
        """Merge one round's chunk states in row order: the result does not depend on who answered first."""
        states = sorted(
            (
                (chunk[0], state)
                for w, rep in zip(self.prep.plan.workers, replies)
                for chunk, state in zip(w.chunks, rep["states"])
            ),
            key=lambda t: t[0],
        )
        return combine_all(self.prep.kernel, [s for _, s in states])

    @contextmanager
    def array(self) -> Iterator[np.ndarray]:
        """The whole shared array in this process, for the block only (a live view blocks unmapping)."""
        arr = self._segment().array(self.prep.data.dtype, self.prep.data.shape)
        arr.flags.writeable = False  # kernels read; a reference computed here sees the data the workers saw
        try:
            yield arr
        finally:
            del arr


def _stream_parts(n: int, workers: int, align: int = 512) -> list[tuple[int, int]]:
    """Split ``n`` elements into ``workers`` ranges, cut on 4 KiB (512 float64) boundaries: one owner per page."""
    cuts = [min(n, (n * r // workers) // align * align) for r in range(workers)] + [n]
    return [(cuts[r], cuts[r + 1]) for r in range(workers)]
