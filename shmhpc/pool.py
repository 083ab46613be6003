"""The persistent pinned worker pool.

Each worker starts once (explicit start method), then, in this order:
pins itself (affinity is set before it touches any memory, so its first
touch lands on its own NUMA node), applies thread limits, attaches the shared
segment by name (never unlinking it), and answers commands on its own pipe:
``load`` (first-touch and fill its rows), ``run`` (one round over its chunks),
``stop``. Sending bounds, never data, and keeping the mapping across rounds is
what makes a warm round cheap (PITFALLS 16–17).

A worker that raises sends its error back; one that dies is seen through its
process sentinel; one that hangs past ``timeout_s`` is reported by rank. In
each case the run fails within seconds and the other workers are stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .data import DataInfo, fill_rows
from .errors import RunError, RunInterrupted
from .kernels import make_kernel
from .numa import page_nodes
from .shm import Segment
from .threads import environment, limit_threads, relevant_env

__all__ = ["WorkerInit", "Pool"]


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


# -- inside the worker ----------------------------------------------------------------


def _worker_main(conn: Connection, init: WorkerInit) -> None:
    # The launcher handles SIGINT/SIGTERM and tells workers to stop; a Ctrl-C on the
    # terminal reaches the whole process group, so workers ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    phase, chunk_ix = "start", None
    seg = None
    arr = None
    try:
        inherited = relevant_env()
        os.environ.update(init.env)
        import psutil

        me = psutil.Process()
        if init.pin or set(init.cpus) != set(os.sched_getaffinity(0)):
            me.cpu_affinity(list(init.cpus))  # pin first, then touch memory
        observed = sorted(os.sched_getaffinity(0))
        _limiter, pools = limit_threads(init.threads)
        seg = Segment.attach(init.segment, init.data.nbytes, init.shm_dir)
        arr = seg.array(init.data.dtype, init.data.shape)
        kernel = make_kernel(init.kernel, init.accumulate, list(init.search_path))
        conn.send(
            (
                "ok",
                {
                    "rank": init.rank,
                    "pid": os.getpid(),
                    "cpus_observed": observed,
                    "threads": {
                        "requested": init.threads,
                        "env": {k: os.environ.get(k) for k in init.env},
                        "env_inherited": inherited,
                        "threadpool_info": pools,
                    },
                },
            )
        )
        while True:
            msg = conn.recv()
            cmd = msg[0]
            if cmd == "stop":
                break
            if cmd == "load":
                phase = "load"
                t0 = time.perf_counter()
                lo, hi = init.rows
                rb = init.data.row_bytes
                populated = seg.populate(lo * rb, (hi - lo) * rb)
                for chunk_ix, (a, b) in enumerate(init.chunks):  # noqa: B007 - the error handler reads chunk_ix
                    fill_rows(arr, init.data, a, b)
                chunk_ix = None
                dt = time.perf_counter() - t0
                pages = page_nodes(seg.address() + lo * rb, (hi - lo) * rb)
                conn.send(("ok", {"seconds": dt, "populated": populated, "pages": pages}))
            elif cmd == "run":
                phase = f"repeat {msg[1]}"
                states, secs = [], []
                for chunk_ix, (a, b) in enumerate(init.chunks):  # noqa: B007 - the error handler reads chunk_ix
                    t0 = time.perf_counter()
                    states.append(kernel.map(arr[a:b]))
                    secs.append(time.perf_counter() - t0)
                chunk_ix = None
                conn.send(("ok", {"states": states, "seconds": secs, "cpu": me.cpu_num()}))
            else:  # pragma: no cover - protocol error
                raise RuntimeError(f"unknown command {cmd!r}")
    except (EOFError, KeyboardInterrupt):
        pass  # the launcher went away or asked us to stop
    except BaseException as exc:  # report *everything* to the launcher, then exit
        chunk = None if chunk_ix is None else list(init.chunks[chunk_ix])
        try:
            conn.send(
                (
                    "error",
                    {
                        "rank": init.rank,
                        "phase": phase,
                        "chunk": chunk,
                        "type": type(exc).__name__,
                        "message": str(exc).splitlines()[0] if str(exc) else "",
                        "traceback": traceback.format_exc(),
                    },
                )
            )
        except (OSError, ValueError):
            pass
    finally:
        arr = None
        if seg is not None:
            seg.close()


# -- in the launcher --------------------------------------------------------------------


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Pool:
    """A set of persistent workers, one pipe each."""

    inits: list[WorkerInit]
    start_method: str = "forkserver"
    timeout_s: float | None = None
    stop_flag: Any = None  # object with .signum (int or None), checked between rounds
    procs: list[Any] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> list[dict]:
        """Start every worker with ``env`` set (forkserver/spawn children inherit it) and wait for their hello."""
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Without an explicit preload every child re-imports numpy (~50 ms each; gh-137996).
            ctx.set_forkserver_preload(["shmhpc.pool"])
        with environment(env), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for init in self.inits:
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(  # type: ignore[attr-defined]
                    target=_worker_main, args=(child, init), name=f"shmhpc-worker-{init.rank}", daemon=True
                )
                p.start()
                child.close()  # so a dead worker gives EOF here instead of a hang
                self.procs.append(p)
                self.conns.append(parent)
        for w in caught:
            # e.g. Python 3.12+: fork() of a multi-threaded launcher (OpenBLAS threads) may deadlock.
            self.warnings.append(f"{w.category.__name__}: {w.message}")
        return self._gather(list(range(len(self.inits))), "start", None)

    def load(self) -> list[dict]:
        self._broadcast(("load",))
        return self._gather(list(range(len(self.inits))), "load", self.timeout_s)

    def run_round(self, index: int) -> tuple[float, list[dict]]:
        """One round: every worker reduces its chunks. Returns (wall seconds, per-worker replies)."""
        t0 = time.perf_counter()
        self._broadcast(("run", index))
        replies = self._gather(list(range(len(self.inits))), f"repeat {index}", self.timeout_s)
        return time.perf_counter() - t0, replies

    def _broadcast(self, msg: tuple) -> None:
        for rank, c in enumerate(self.conns):
            try:
                c.send(msg)
            except (BrokenPipeError, OSError):
                raise RunError(f"worker {rank} (pid {self.procs[rank].pid}) {self._exit_text(rank)}") from None

    def _exit_text(self, rank: int) -> str:
        self.procs[rank].join(timeout=1.0)
        return _describe_exit(self.procs[rank].exitcode)

    def _gather(self, ranks: list[int], phase: str, timeout: float | None) -> list[dict]:
        results: list[dict] = [{} for _ in self.inits]
        pending = {self.conns[r]: r for r in ranks}
        sentinels = {self.procs[r].sentinel: r for r in ranks}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            if self.stop_flag is not None and self.stop_flag.signum is not None and phase == "load":
                raise RunInterrupted(self.stop_flag.signum)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Wake at least every 0.5 s so a signal to the launcher is acted on promptly.
            step = 0.5 if remaining is None else min(0.5, remaining)
            ready = wait(list(pending) + [s for s, r in sentinels.items() if self.conns[r] in pending], timeout=step)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    late = sorted(pending.values())
                    raise RunError(
                        f"{phase}: worker {', '.join(map(str, late))} did not answer within timeout_s={timeout:g}"
                    )
                continue
            conns_first = sorted(ready, key=lambda o: 0 if isinstance(o, Connection) else 1)
            for obj in conns_first:
                if isinstance(obj, Connection):
                    if obj not in pending:
                        continue
                    rank = pending[obj]
                    try:
                        kind, payload = obj.recv()
                    except (EOFError, OSError):
                        raise RunError(
                            f"{phase}: worker {rank} (pid {self.procs[rank].pid}) {self._exit_text(rank)}"
                        ) from None
                    if kind == "error":
                        raise RunError(_format_worker_error(payload, self.procs[rank].pid), payload.get("traceback"))
                    results[rank] = payload
                    del pending[obj]
                else:
                    rank = sentinels[obj]
                    conn = self.conns[rank]
                    if conn in pending and not conn.poll():
                        raise RunError(f"{phase}: worker {rank} (pid {self.procs[rank].pid}) {self._exit_text(rank)}")
        return results

    def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker: ask, then SIGTERM, then SIGKILL. Never raises."""
        for c in self.conns:
            try:
                c.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=1.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
        for c in self.conns:
            c.close()
        for p in self.procs:
            try:
                p.close()
            except ValueError:
                pass
        self.procs, self.conns = [], []


def _format_worker_error(err: dict, pid: int | None) -> str:
    where = f"worker {err['rank']} (pid {pid})"
    chunk = f", chunk rows {err['chunk'][0]}-{err['chunk'][1]}" if err.get("chunk") else ""
    msg = f"{where} failed during {err['phase']}{chunk}: {err['type']}"
    if err.get("message"):
        msg += f": {err['message']}"
    return msg
