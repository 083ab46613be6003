"""The persistent pinned worker pool.

Each worker starts once (forked from the launcher when it has a single thread,
else from a fork server: :func:`choose_start_method`), then, in this order:
pins itself (affinity is set before it touches any memory, so its first
touch lands on its own NUMA node), applies thread limits, attaches the shared
segment by name (never unlinking it), and answers commands on its own pipe:
``load`` (first-touch and fill its rows), ``run`` (one round over its chunks),
``stop``. Sending bounds, never data (pickling array chunks runs at a fraction
of memory bandwidth), over one pipe per worker (a ProcessPoolExecutor round costs
milliseconds), and keeping the mapping across rounds (attaching per task re-faults
every page) is what makes a warm round cheap.

A worker that raises sends its error back; one that dies is seen through its
process sentinel; one that hangs past ``timeout_s`` is reported by rank. In
each case the run fails within seconds and the other workers are stopped.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from .data import DataInfo, RowFiller
from .errors import RunError, RunInterrupted
from .kernels import make_kernel
from .numa import page_nodes
from .numa_policy import PolicyRange, apply_ranges
from .reductions import BuiltinKernel
from .shm import Segment
from .signals import STOP_SIGNALS, blocked
from .threads import environment, limit_threads, relevant_env

__all__ = ["WorkerInit", "Pool", "fenced_output", "choose_start_method", "launcher_threads"]


@dataclass(frozen=True)
class WorkerInit:
    """Everything one worker needs, sent once at start (picklable)."""

    rank: int
    cpus: tuple[int, ...]
    pin: bool
    threads: int
    env: dict[str, str]
    segment: str
    shm_dir: str
    data: DataInfo
    rows: tuple[int, int]
    chunks: tuple[tuple[int, int], ...]
    kernel: str
    accumulate: str
    search_path: tuple[str, ...] = ()
    engine: str = "numpy"  # built-in kernels: numpy | numba (see shmhpc.fastsum)
    segment_size: int = 0  # data, padded to a page, then the control slots
    ctl_offset: int = 0  # byte offset of the control slots
    segment_page_bytes: int | None = None  # a hugetlbfs segment's page size; None: base pages
    huge_advise: bool = True  # ask tmpfs for transparent huge pages (false with huge_pages: off)
    # ``bench``: this worker's element range [lo, hi) in each of the three STREAM arrays a, b, c that
    # fill the data (float64, ``data.shape == (3 * n,)``); None for a normal job.
    stream: tuple[int, int] | None = None
    # ``numa.placement`` bind/interleave: the policy ranges each process sets on its own mapping before any
    # page is touched (tmpfs keeps one policy per file; a hugetlbfs mapping needs it in every process).
    numa_ranges: tuple[PolicyRange, ...] = ()
    fill: bool = True  # False when the launcher wrote the data (numa.writer: launcher): map the rows, do not write
    # A multi-node rank: when its launcher dies (SIGKILL, or mpirun killing the job after another rank died), the
    # workers remove the segment themselves: no node keeps a dead job's memory. (Single-node runs leave it to
    # `shmhpc clean` and the next run's stale sweep.)
    orphan_unlink: bool = False
    launcher_pid: int = 0


# Control slots: one row of int64 per worker, written by the worker before each
# chunk, so the launcher can name the chunk a worker died or hung in.
CTL_FIELDS = 4  # phase, round, chunk index, unused
PHASE_IDLE, PHASE_LOAD, PHASE_RUN = 0, 1, 2
_PHASES = {PHASE_IDLE: "idle", PHASE_LOAD: "load", PHASE_RUN: "repeat"}


# bench: STREAM's scalar, and triad's block (in L2: the product never goes to memory).
STREAM_SCALAR = 3.0
STREAM_BLOCK = 1 << 15

# Kernels are guests: what they hand back and print is bounded.
MAX_STATE_BYTES = 16 << 20  # one chunk's partial state; a reduction returns a few numbers
OUTPUT_LIMIT_BYTES = 64 << 10  # what one worker may print (prefixed, on the launcher's stderr)


class StateTooLarge(Exception):
    """A kernel's partial state is over ``MAX_STATE_BYTES``: not a reduction, and it would flood pipe and report."""


def _state_bytes(state: Any, depth: int = 0) -> int:
    """About how many bytes a partial state takes (arrays exactly; containers summed two levels deep)."""
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, (bytes, bytearray, str)):
        return len(state)
    if isinstance(state, (list, tuple, dict)):
        items = list(state.values()) if isinstance(state, dict) else state
        if depth >= 2 or len(items) > MAX_STATE_BYTES // 8:
            return 8 * len(items)
        return sum(_state_bytes(x, depth + 1) for x in items)
    return 8


class _WorkerOutput(io.TextIOBase):
    """A worker's ``print``: on stderr, each line prefixed ``[worker N]``, at most ``limit`` bytes in all.

    Worker output never reaches the launcher's stdout (``run --json`` stays valid JSON), and a kernel
    that prints in a loop cannot fill a terminal or a batch log.
    """

    def __init__(self, label: str, fd: int = 2, limit: int = OUTPUT_LIMIT_BYTES) -> None:
        super().__init__()
        self.prefix, self.fd, self.left, self.partial = f"[{label}] ".encode(), fd, limit, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        *lines, self.partial = (self.partial + s).split("\n")
        for line in lines:
            self._emit(line)
        if len(self.partial) > 4096:
            self.flush()
        return len(s)

    def flush(self) -> None:
        if self.partial:
            line, self.partial = self.partial, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        if self.left <= 0:
            return
        data = self.prefix + line.encode(errors="replace") + b"\n"
        if len(data) + 100 > self.left:
            data = (
                self.prefix
                + f"... more output dropped (a worker prints at most {OUTPUT_LIMIT_BYTES >> 10} KiB)\n".encode()
            )
            self.left = 0
        else:
            self.left -= len(data)
        try:
            os.write(self.fd, data)
        except OSError:
            pass


def _guard_output(rank: int) -> None:
    """Native code writing to fd 1 goes to stderr too; Python's print goes through ``_WorkerOutput``."""
    try:
        os.dup2(2, 1)
    except OSError:
        pass
    sys.stdout = sys.stderr = _WorkerOutput(f"worker {rank}")


@contextmanager
def fenced_output(label: str) -> Iterator[None]:
    """Kernel code run in the launcher (verification) prints like a worker: prefixed, bounded, on stderr."""
    try:
        sys.stdout.flush()
        saved_fd = os.dup(1)
    except (OSError, ValueError, AttributeError):  # stdout closed (`>&-`, sys.stdout None): nothing to protect
        yield
        return
    saved = sys.stdout, sys.stderr
    try:
        os.dup2(2, 1)
        sys.stdout = sys.stderr = out = _WorkerOutput(label)
        yield
        out.flush()
    finally:
        sys.stdout, sys.stderr = saved
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def ctl_bytes(n_workers: int) -> int:
    return n_workers * CTL_FIELDS * 8


# -- inside the worker ----------------------------------------------------------------


class _Worker:
    """One worker's state; ``phase`` and ``chunk`` say where it is when something goes wrong."""

    def __init__(self, init: WorkerInit) -> None:
        self.init = init
        self.phase = "start"
        self.chunk: int | None = None
        self.seg: Segment | None = None
        self.arr: np.ndarray | None = None
        self.ctl: np.ndarray | None = None

    def setup(self) -> dict:
        """Pin first, then limit threads, then attach: the hello the launcher records."""
        init = self.init
        inherited = relevant_env()
        os.environ.update(init.env)
        import psutil

        self.me = psutil.Process()
        if init.pin or set(init.cpus) != set(os.sched_getaffinity(0)):
            self.me.cpu_affinity(list(init.cpus))  # pin first, then touch memory
        observed = sorted(os.sched_getaffinity(0))
        self._limiter, pools = limit_threads(init.threads)  # kept: the limits last as long as the worker
        self.seg = Segment.attach(
            init.segment, init.segment_size, init.shm_dir, page_bytes=init.segment_page_bytes, advise=init.huge_advise
        )
        self.arr = self.seg.array(init.data.dtype, init.data.shape)
        self.ctl = self.seg.view(np.int64, (CTL_FIELDS,), init.ctl_offset + init.rank * CTL_FIELDS * 8)
        numa_policy = apply_ranges(self.seg.address(), init.numa_ranges) if init.numa_ranges else None
        self.kernel = make_kernel(init.kernel, init.accumulate, list(init.search_path), init.engine)
        if isinstance(self.kernel, BuiltinKernel):  # a user kernel's own `prepare`, if any, is not ours to call
            self.kernel.prepare()  # e.g. import numba and load its compiled loop now, not in the first timed round
        return {
            "rank": init.rank,
            "pid": os.getpid(),
            "cpus_observed": observed,
            "numa_policy": numa_policy,
            "threads": {
                "requested": init.threads,
                "env": {k: os.environ.get(k) for k in init.env},
                "env_inherited": inherited,
                "threadpool_info": pools,
            },
        }

    def load(self) -> dict:
        """Reserve (first-touch) our pages, then fill our rows chunk by chunk."""
        init, seg, ctl = self.init, self.seg, self.ctl
        assert seg is not None and ctl is not None and self.arr is not None  # set by setup()
        if init.stream is not None:
            return self._load_stream()
        self.phase = "load"
        t0 = time.perf_counter()
        lo, hi = init.rows
        rb = init.data.row_bytes
        ctl[:3] = (PHASE_LOAD, 0, -1)
        if init.fill:
            # Reserve our pages now: out of memory becomes an error here, not a SIGBUS in a repeat.
            reserved_by = seg.reserve(lo * rb, (hi - lo) * rb)
            filler = RowFiller(self.arr, init.data)
            for ix, (a, b) in enumerate(init.chunks):
                self.chunk = ctl[2] = ix
                filler.fill(a, b)
            self.chunk = None
        else:  # the launcher wrote them: map our rows' pages so move_pages can say where they are
            if not seg.populate(lo * rb, (hi - lo) * rb, write=False):
                np.add.reduce(self.arr.reshape(-1).view(np.uint8)[lo * rb : hi * rb : seg.page_bytes], dtype=np.uint64)
            reserved_by = "launcher"
        ctl[:3] = (PHASE_IDLE, 0, -1)
        dt = time.perf_counter() - t0
        pages = page_nodes(seg.address() + lo * rb, (hi - lo) * rb)
        mapping = seg.mapped_pages()  # the page size our rows really got (before mprotect splits the mapping)
        self._read_only()
        return {"seconds": dt, "reserved_by": reserved_by, "pages": pages, "mapping": mapping}

    # -- bench: STREAM's kernels over this worker's part of a, b, c ---------------------------------
    def _abc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.arr is not None and self.init.stream is not None
        n = self.arr.size // 3
        lo, hi = self.init.stream
        return self.arr[lo:hi], self.arr[n + lo : n + hi], self.arr[2 * n + lo : 2 * n + hi]

    def _load_stream(self) -> dict:
        """First touch of our part of each array by this pinned worker, with STREAM's start values."""
        assert self.seg is not None and self.arr is not None and self.init.stream is not None
        self.phase = "load"
        t0 = time.perf_counter()
        n = self.arr.size // 3
        lo, hi = self.init.stream
        for k, (arr, value) in enumerate(zip(self._abc(), (1.0, 2.0, 0.0))):
            self.seg.reserve((k * n + lo) * 8, (hi - lo) * 8)
            arr[:] = value
        pages = page_nodes(self.seg.address() + lo * 8, (hi - lo) * 8)
        return {"seconds": time.perf_counter() - t0, "reserved_by": "stream", "pages": pages}

    def stream(self, op: str) -> float:
        """One STREAM kernel over our part; its seconds. Blocked so ``triad`` moves 24 bytes per element, not 40."""
        a, b, c = self._abc()
        self.phase = f"bench {op}"
        t0 = time.perf_counter()
        if op == "read":
            np.dot(a, a)  # BLAS ddot of a with itself: one load stream, vectorised (np.sum is slower per core)
        elif op == "copy":
            np.copyto(c, a)
        elif op == "scale":
            np.multiply(c, STREAM_SCALAR, out=b)
        elif op == "add":
            np.add(a, b, out=c)
        elif op == "triad":
            tmp = np.empty(STREAM_BLOCK)
            for i in range(0, a.size, STREAM_BLOCK):
                t = tmp[: min(STREAM_BLOCK, a.size - i)]
                np.multiply(c[i : i + STREAM_BLOCK], STREAM_SCALAR, out=t)  # in cache
                np.add(b[i : i + STREAM_BLOCK], t, out=a[i : i + STREAM_BLOCK])
        else:  # pragma: no cover - protocol error
            raise RuntimeError(f"unknown bench kernel {op!r}")
        return time.perf_counter() - t0

    def _read_only(self) -> None:
        """From now on kernels see data they cannot change: NumPy refuses writes, the MMU faults native ones."""
        assert self.seg is not None and self.arr is not None  # set by setup()
        if self.arr.flags.writeable and self.init.stream is None:  # bench writes its arrays on purpose
            self.seg.protect_read_only(self.init.ctl_offset)
            self.arr.flags.writeable = False

    def run(self, index: int) -> dict:
        """One round: map every chunk we own; where each chunk finished."""
        self._read_only()
        ctl, arr, init = self.ctl, self.arr, self.init
        assert ctl is not None and arr is not None  # set by setup()
        self.phase = f"repeat {index}"
        states, secs, cpus = [], [], set()
        ctl[:3] = (PHASE_RUN, index, -1)
        for ix, (a, b) in enumerate(init.chunks):
            self.chunk = ctl[2] = ix
            t0 = time.perf_counter()
            state = self.kernel.map(arr[a:b])
            secs.append(time.perf_counter() - t0)
            if (n := _state_bytes(state)) > MAX_STATE_BYTES:
                name = getattr(self.kernel, "name", init.kernel)
                raise StateTooLarge(
                    f"kernel {name!r} returned a partial state of {n / 1e6:,.1f} MB for one chunk; the limit "
                    f"is {MAX_STATE_BYTES >> 20} MiB (a reduction returns a few numbers, not an array like its input)"
                )
            states.append(state)
            cpus.add(self.me.cpu_num())  # where this chunk finished (cheap: /proc/self/stat)
        self.chunk = None
        ctl[:3] = (PHASE_IDLE, index, -1)
        reply: dict[str, Any] = {"states": states, "seconds": secs, "cpus": sorted(cpus)}
        if init.pin and (now := os.sched_getaffinity(0)) != set(init.cpus):
            reply["affinity"] = sorted(now)  # the kernel moved its worker (sched_setaffinity)
        return reply

    def set_kernel(self, kernel: Any) -> None:
        """Reduce with ``kernel`` from now on (a Python API call with another kernel; the pool stays warm)."""
        self.phase = "kernel"
        if isinstance(kernel, BuiltinKernel):
            kernel.prepare()
        self.kernel = kernel
        self.phase = "idle"

    def fill(self, payload: bytes) -> dict:
        """Call the user's ``func(block, start_row)`` on each of our chunks, writable: first touch by the owner."""
        import pickle

        assert self.seg is not None and self.arr is not None and self.ctl is not None  # set by setup()
        func = pickle.loads(payload)  # noqa: S301 - cloudpickle bytes from our own launcher, over our private pipe
        self.phase = "fill"
        t0 = time.perf_counter()
        if not self.arr.flags.writeable:  # filled again after a reduce: our mapping is read-only by now
            self.seg.protect(self.init.ctl_offset, writable=True)
            self.arr.flags.writeable = True
        self.ctl[:3] = (PHASE_LOAD, 0, -1)
        for ix, (a, b) in enumerate(self.init.chunks):
            self.chunk = self.ctl[2] = ix
            func(self.arr[a:b], a)
        self.chunk = None
        self.ctl[:3] = (PHASE_IDLE, 0, -1)
        lo, hi = self.init.rows
        rb = self.init.data.row_bytes
        return {"seconds": time.perf_counter() - t0, "pages": page_nodes(self.seg.address() + lo * rb, (hi - lo) * rb)}

    def error(self, exc: BaseException) -> dict:
        """Everything the launcher needs to name the failure: rank, phase, chunk, exception, traceback."""
        chunk = None if self.chunk is None else list(self.init.chunks[self.chunk])
        return {
            "rank": self.init.rank,
            "phase": self.phase,
            "chunk": chunk,
            "type": type(exc).__name__,
            "message": str(exc).splitlines()[0] if str(exc) else "",
            "traceback": traceback.format_exc(),
        }

    def close(self) -> None:
        self.arr = self.ctl = None
        if self.seg is not None:
            self.seg.close()


def _worker_main(conn: Connection, init: WorkerInit, launcher_ends: tuple[Connection, ...] = ()) -> None:
    # The launcher handles the stop signals and tells workers to stop. They reach workers too: a
    # Ctrl-C on the terminal goes to the whole process group, and Slurm's slurmstepd sends scancel's
    # TERM and the time-limit warning (USR1) to every process of the step. A worker that died of
    # them would turn a clean stop into a failed run, so workers ignore them; a launcher that dies
    # is noticed by its orphaned workers, and Slurm's SIGKILL after KillWait still ends everything.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if init.orphan_unlink:
        # A multi-node rank's workers leave its process group: when mpirun kills a dead job's ranks it may kill
        # their groups, and a worker killed with its launcher could not remove the segment (below). Slurm still
        # tracks them as the step's processes.
        try:
            os.setsid()
        except OSError:
            pass
    # Forked straight from the launcher, this worker holds copies of the launcher's ends of its own pipe and
    # of every earlier worker's: while any copy is open, a worker whose launcher died (SIGKILL, OOM killer)
    # never reads EOF and lives on. Close them all (through the objects, so no descriptor is closed twice).
    for end in launcher_ends:
        end.close()
    _guard_output(init.rank)
    worker = _Worker(init)
    stopped = False  # told to stop by a live launcher, which removes the segment itself
    try:
        conn.send(("ok", worker.setup()))
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the launcher went away
                break
            if msg[0] == "stop":
                stopped = True
                break
            if msg[0] == "load":
                conn.send(("ok", worker.load()))
            elif msg[0] == "run":
                conn.send(("ok", worker.run(msg[1])))
            elif msg[0] == "stream":
                conn.send(("ok", worker.stream(msg[1])))
            elif msg[0] == "kernel":
                worker.set_kernel(msg[1])
                conn.send(("ok", {}))
            elif msg[0] == "fill":
                conn.send(("ok", worker.fill(msg[1])))
            else:  # pragma: no cover - protocol error
                raise RuntimeError(f"unknown command {msg[0]!r}")
    except BaseException as exc:  # report *everything* (KeyboardInterrupt, SystemExit too), then exit
        try:
            conn.send(("error", worker.error(exc)))
        except (OSError, ValueError):
            pass
    finally:
        worker.close()
        if init.orphan_unlink and not stopped:  # at EOF, or a reply to a dead launcher failed: it may be dying
            _unlink_if_orphaned(init)


def _unlink_if_orphaned(init: WorkerInit, wait_s: float = 2.0) -> None:
    """Remove the segment if its launcher dies before it does (another worker may have done it already).

    Called as a worker exits without being told to stop: at EOF (the launcher died) or after a failed reply.
    For ``wait_s`` it watches: the name gone means the launcher unlinked it; the launcher dead, or a zombie
    its parent has not reaped yet (its pipes close before that), means it never will.
    """
    path = os.path.join(init.shm_dir, init.segment)
    deadline = time.monotonic() + wait_s
    while os.path.exists(path):
        if not _running(init.launcher_pid):
            try:
                os.unlink(path)
            except OSError:
                pass
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that can still act (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# -- in the launcher --------------------------------------------------------------------


def launcher_threads(status: str = "/proc/self/status") -> int | None:
    """How many OS threads this process has now, as the kernel counts them (Python's and native ones,
    such as a BLAS pool's); None where ``/proc`` cannot tell."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def choose_start_method(asked: str, threads: int | None) -> tuple[str, str]:
    """The start method for ``asked`` in a launcher that has ``threads`` OS threads now, and why.

    ``auto`` forks the workers straight from the launcher when it has a single thread, and starts them
    from a fork server otherwise. fork copies only the thread that calls it: a lock some other thread
    held at that moment (malloc's, a BLAS pool's, one inside Python) stays locked in the child for ever,
    and the child can hang on it (python/cpython#84559; Python 3.12 warns about exactly this). With one
    thread there is no other thread to hold a lock, and only the launcher itself could start one between
    this count and the forks, which it does not. A fork server is a fresh single-threaded process that
    forks the workers, at about ten times the cost of a fork on a small machine.
    """
    if asked != "auto":
        return asked, f"start_method: {asked} in the spec"
    if threads == 1:
        return "fork", "auto: the launcher had 1 thread, so forking it is safe (no other thread can hold a lock)"
    if threads is None:
        return "forkserver", "auto: the launcher's threads cannot be counted (no /proc/self/status): fork server"
    import threading

    named = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    native = threads - 1 - len(named)
    who = ", ".join([f"Python threads {named}"] * bool(named) + [f"{native} started by native code"] * (native > 0))
    return (
        "forkserver",
        f"auto: the launcher had {threads} threads ({who}); forking it could copy a lock another thread held, "
        "so the workers start from a fork server",
    )


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"was killed by signal {-code}"
        if name in ("SIGSEGV", "SIGBUS"):
            # After loading the data is mapped read-only in every worker: a write faults.
            return f"was killed by {name} (a write to the read-only shared array, or a crash in native code)"
        return f"was killed by {name}"
    if code == 0:
        return "exited (status 0) without answering: its kernel ended the process (os._exit?)"
    return f"exited with status {code}"


def _state_of(proc: Any) -> str:
    """A worker's scheduler state as ``ps`` says it: running, sleeping, stopped, disk-sleep, zombie; or gone."""
    import psutil

    try:
        return str(proc.status()) if proc is not None and proc.is_running() else "gone"
    except psutil.Error:
        return "gone"


def _forkserver_dead(wait_s: float = 0.0) -> int | None:
    """The pid of this process's fork server if it has died (killed), else None.

    Its children's exit statuses come through it; when it dies, multiprocessing reports each
    worker as "exit status 255" whatever the worker is doing. That report can come a moment before
    the server shows as dead (its pipes close as the kernel tears it down): look again for ``wait_s``.
    """
    from multiprocessing import forkserver

    import psutil

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return pid
        except psutil.NoSuchProcess:
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


@dataclass
class Pool:
    """A set of persistent workers, one pipe each."""

    inits: list[WorkerInit]
    start_method: str = "auto"  # as asked; ``method`` is the one used, decided when the workers start
    timeout_s: float | None = None
    stop_flag: Any = None  # object with .signum (int or None) and .count, set by the launcher's signal handler
    ctl: np.ndarray | None = None  # (workers, CTL_FIELDS) int64 view of the control slots
    stall_s: float | None = None  # say so when a worker finishes no chunk for this long
    on_stall: Callable[[str], None] | None = None
    procs: list[Any] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)  # "no progress" lines, as they were said
    killed: list[str] = field(default_factory=list)  # workers teardown had to kill, by rank and state
    _ps: list[Any] = field(default_factory=list)  # psutil handles (pid reuse-safe), from the hellos
    method: str | None = None  # the start method used (``auto`` resolved), once ``start`` has run
    method_reason: str | None = None  # why that one
    launcher_threads: int | None = None  # the launcher's OS threads when it chose

    def start(self, env: dict[str, str]) -> list[dict]:
        """Start every worker with ``env`` set (forkserver/spawn children inherit it) and wait for their hello."""
        # Judged now, right before the first fork: nothing below starts a thread in the launcher.
        self.launcher_threads = launcher_threads()
        self.method, self.method_reason = choose_start_method(self.start_method, self.launcher_threads)
        ctx = mp.get_context(self.method)
        if self.method != "fork":
            # forkserver and spawn start multiprocessing's resource tracker on first use, and starting it
            # *unblocks* SIGINT and SIGTERM in this thread (resource_tracker.ensure_running), which would
            # undo the block below for the forkserver: start it first, with the stop signals blocked too.
            from multiprocessing import resource_tracker

            with blocked(STOP_SIGNALS):
                resource_tracker.ensure_running()
        # Every process started here keeps the stop signals blocked: only the launcher acts on them.
        with (
            environment(env),
            blocked(STOP_SIGNALS),
            _forkserver_preload(["shmhpc.pool"]),
            _main_not_reimported(),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            for init in self.inits:
                parent, child = ctx.Pipe(duplex=True)
                launcher_ends = (*self.conns, parent) if self.method == "fork" else ()  # copies a fork child holds
                p = ctx.Process(  # type: ignore[attr-defined]
                    target=_worker_main,
                    args=(child, init, launcher_ends),
                    name=f"shmhpc-worker-{init.rank}",
                    daemon=True,
                )
                p.start()
                child.close()  # so a dead worker gives EOF here instead of a hang
                self.procs.append(p)
                self.conns.append(parent)
        for w in caught:
            # e.g. Python 3.12+: fork() of a multi-threaded launcher (OpenBLAS threads) may deadlock.
            self.warnings.append(f"{w.category.__name__}: {w.message}")
        if self.method == "fork" and (self.launcher_threads or 1) > 1 and not caught:  # Python < 3.12 says nothing
            self.warnings.append(
                f"start_method: fork of a launcher with {self.launcher_threads} threads: a worker may deadlock on a "
                "lock another thread held at the fork (start_method: auto would have used forkserver)"
            )
        hello = self._gather(list(range(len(self.inits))), "start", None)
        import psutil

        self._ps = []
        for h in hello:
            try:
                self._ps.append(psutil.Process(h["pid"]))
            except psutil.Error:
                self._ps.append(None)
        return hello

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> list[dict]:
        self._broadcast(("load",))
        return self._gather(list(range(len(self.inits))), "load", self.timeout_s)

    def run_round(self, index: int) -> tuple[float, list[dict]]:
        """One round: every worker reduces its chunks. Returns (wall seconds, per-worker replies)."""
        t0 = time.perf_counter()
        self._broadcast(("run", index))
        replies = self._gather(list(range(len(self.inits))), f"repeat {index}", self.timeout_s)
        return time.perf_counter() - t0, replies

    def set_kernel(self, kernel: Any) -> None:
        """Every worker reduces with ``kernel`` from now on (pickled by name, or by value: ``kernel_from_object``)."""
        self._broadcast(("kernel", kernel))
        self._gather(list(range(len(self.inits))), "kernel", self.timeout_s)

    def fill(self, payload: bytes) -> list[dict]:
        """Every worker calls the pickled ``func(block, start_row)`` on its chunks; per worker: seconds, pages."""
        self._broadcast(("fill", payload))
        return self._gather(list(range(len(self.inits))), "fill", self.timeout_s)

    def stream_round(self, op: str) -> tuple[float, list[float]]:
        """``bench``: every worker runs STREAM kernel ``op`` on its part; (wall seconds, each worker's seconds)."""
        t0 = time.perf_counter()
        self._broadcast(("stream", op))
        replies = self._gather(list(range(len(self.inits))), f"bench {op}", self.timeout_s)
        return time.perf_counter() - t0, [float(r) for r in replies]  # type: ignore[arg-type]

    def _broadcast(self, msg: tuple) -> None:
        for rank, c in enumerate(self.conns):
            try:
                c.send(msg)
            except (BrokenPipeError, OSError):
                raise RunError(self._death(rank, str(msg[0]))) from None

    def _where(self, rank: int) -> str:
        """Which phase and chunk a worker was in, from its control slot."""
        if self.ctl is None:
            return ""
        phase, rnd, chunk = (int(x) for x in self.ctl[rank, :3])
        if phase == PHASE_IDLE:
            return ""
        where = f" during {_PHASES[phase]}" + (f" {rnd}" if phase == PHASE_RUN else "")
        if 0 <= chunk < len(self.inits[rank].chunks):
            a, b = self.inits[rank].chunks[chunk]
            where += f", chunk rows {a}-{b}"
        return where

    def _death(self, rank: int, phase: str) -> str:
        where = self._where(rank) or f" during {phase}"
        self.procs[rank].join(timeout=1.0)
        code, pid = self.procs[rank].exitcode, self.procs[rank].pid
        if self.method == "forkserver" and code == 255 and (server := _forkserver_dead(wait_s=1.0)) is not None:
            state = _state_of(self._ps[rank] if rank < len(self._ps) else None)
            return (
                f"the fork server (pid {server}) that started the workers died (killed?){where}: worker {rank} "
                f"(pid {pid}, {state}) lost its link to the launcher"
            )
        return f"worker {rank} (pid {pid}) {_describe_exit(code)}{where}"

    def _watch(self, ranks: list[int], seen: dict[int, tuple[tuple[int, ...], float]]) -> None:
        """Say once per chunk when a worker has finished no chunk for ``stall_s``, and what state it is in."""
        if self.stall_s is None or self.ctl is None:
            return
        now = time.monotonic()
        for r in ranks:
            where = tuple(int(x) for x in self.ctl[r, :3])
            if r not in seen or seen[r][0] != where:
                seen[r] = (where, now)
                continue
            since = seen[r][1]
            if since >= 0 and now - since >= self.stall_s:
                proc = self._ps[r] if r < len(self._ps) else None
                state = _state_of(proc)
                hint = f" (kill -CONT {self.procs[r].pid} resumes it)" if state == "stopped" else ""
                msg = (
                    f"worker {r} (pid {self.procs[r].pid}) has finished no chunk for {now - since:.0f} s"
                    f"{self._where(r)}; it is {state}{hint}"
                )
                self.stalls.append(msg)
                seen[r] = (where, -1.0)  # said once for this chunk
                if self.on_stall is not None:
                    self.on_stall(msg)

    def _interrupt_now(self, phase: str) -> bool:
        """Start-up and loading stop at the first signal; a repeat finishes unless a second signal comes."""
        flag = self.stop_flag
        if flag is None or flag.signum is None:
            return False
        return not phase.startswith("repeat") or flag.count >= 2

    def _gather(self, ranks: list[int], phase: str, timeout: float | None) -> list[dict]:
        results: list[dict] = [{} for _ in self.inits]
        pending = {self.conns[r]: r for r in ranks}
        sentinels = {self.procs[r].sentinel: r for r in ranks}
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[int, tuple[tuple[int, ...], float]] = {}
        while pending:
            if self._interrupt_now(phase):
                raise RunInterrupted(self.stop_flag.signum)
            self._watch(sorted(pending.values()), seen)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Wake at least every 0.5 s so a signal to the launcher is acted on promptly.
            step = 0.5 if remaining is None else min(0.5, remaining)
            ready = wait(list(pending) + [s for s, r in sentinels.items() if self.conns[r] in pending], timeout=step)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    late = sorted(pending.values())
                    where = "; ".join(f"worker {r}{self._where(r)}" for r in late)
                    raise RunError(f"{phase}: no answer within timeout_s={timeout:g} from {where}")
                continue
            # Read messages before looking at deaths: a worker that raised sends its error, then exits.
            for obj in sorted(ready, key=lambda o: 0 if isinstance(o, Connection) else 1):
                if isinstance(obj, Connection):
                    if obj not in pending:
                        continue
                    rank = pending[obj]
                    try:
                        kind, payload = obj.recv()
                    except (EOFError, OSError):
                        raise RunError(self._death(rank, phase)) from None
                    if kind == "error":
                        raise RunError(_format_worker_error(payload, self.procs[rank].pid), payload.get("traceback"))
                    results[rank] = payload
                    del pending[obj]
                else:
                    rank = sentinels[obj]
                    conn = self.conns[rank]
                    if conn in pending and not conn.poll():
                        raise RunError(self._death(rank, phase))
        return results

    def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker: ask, wait ``grace_s`` in all, then SIGKILL (named in ``killed``). Never raises.

        Bounded whatever the workers do: a stopped (SIGSTOP) or hung worker is killed, and one whose
        fork server died is killed by its own pid (its process handle no longer knows it).
        """
        for c in self.conns:
            try:
                c.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        import psutil

        for rank, p in enumerate(self.procs):
            proc = self._ps[rank] if rank < len(self._ps) else None
            alive = p.is_alive()
            try:
                alive = alive or (proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
            except psutil.Error:
                pass
            if not alive:
                continue
            self.killed.append(
                f"worker {rank} (pid {p.pid}, {_state_of(proc)}) did not stop within {grace_s:g} s and was killed"
            )
            try:
                if proc is not None:
                    proc.kill()  # checks the pid still names our worker
                else:
                    p.kill()
            except (psutil.Error, OSError):
                pass
        deadline = time.monotonic() + 1.0
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for c in self.conns:
            c.close()
        for p in self.procs:
            try:
                p.close()
            except ValueError:
                pass
        self.procs, self.conns, self._ps = [], [], []


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Start workers that do not import the caller's ``__main__`` again.

    A forkserver or spawn child runs the parent's main script (as ``__mp_main__``) before its target, so
    a script without an ``if __name__ == "__main__":`` guard would run again in every worker: share its
    array, start pools, recurse. Workers need nothing from it: their target is in this module, and kernels
    defined in ``__main__`` travel by value (cloudpickle). multiprocessing decides from ``__main__``'s
    ``__spec__`` and ``__file__`` when a child starts (``spawn.get_preparation_data``); both are hidden
    while ours start, then put back.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@contextmanager
def _forkserver_preload(modules: list[str]) -> Iterator[None]:
    """Preload ``modules`` in a fork server started in this block, then put the caller's list back.

    Without a preload every forkserver child re-imports numpy (~50 ms each; python/cpython#137996).
    The list is process-wide state of multiprocessing that a library must not leave changed; it has
    no public getter, hence the private attribute (absent: nothing to restore but the default).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    saved = list(getattr(server, "_preload_modules", None) or ["__main__"])
    forkserver.set_forkserver_preload(modules)
    try:
        yield
    finally:
        forkserver.set_forkserver_preload(saved)


def _format_worker_error(err: dict, pid: int | None) -> str:
    where = f"worker {err['rank']} (pid {pid})"
    chunk = f", chunk rows {err['chunk'][0]}-{err['chunk'][1]}" if err.get("chunk") else ""
    msg = f"{where} failed during {err['phase']}{chunk}: {err['type']}"
    if err.get("message"):
        msg += f": {err['message']}"
    kind, text = err["type"], err.get("message") or ""
    if kind == "KeyboardInterrupt":
        msg += " (raised by the worker's own code: workers ignore Ctrl-C; the launcher stops them)"
    elif kind == "SystemExit":
        msg += " (the kernel called sys.exit)"
    elif kind == "ValueError" and "read-only" in text:
        msg += " (kernels get read-only chunks; copy one with np.array(chunk) to change it)"
    return msg
