"""One job on N nodes: ``python -m shmhpc run job.yaml --mpi`` under ``mpirun`` or ``srun --mpi=pmix``.

Each rank is one node's launcher. It takes a contiguous slice of the global rows (an equal split by node
count, cut where worker boundaries would be), loads or generates only that slice into its node-local
segment, and runs the normal pinned, NUMA-partitioned pipeline on it (:class:`~shmhpc.session.RunSession`,
the runner's own phases). The pool is forked before MPI starts. Rounds are timed globally: a status
exchange (:class:`~shmhpc.mpi.Sync`, which doubles as a barrier and never hangs) before and after each.
Every chunk's partial state from the last round goes to rank 0, which folds them in global row order —
the same fold a single node does — so a job whose chunks fall where a single node's would gives the same
value bit for bit. Each node verifies its slice against its own single-process reference; rank 0 writes
one report with a section per node.

A failure anywhere is everyone's at the next exchange: the failing rank sends its state instead of
waiting, the others see it and stop, all meet once more to gather what happened, and every rank removes
its own segment.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .data import describe_data
from .errors import RunError, RunInterrupted, SpecError
from .kernels import combine_all, make_kernel
from .mpi import FAILED, INTERRUPTED, OK, MpiEnv, Sync, detect_env, init, library, load_mpi, node_rows
from .outputs import Output
from .placement import _boundaries
from .planning import check_runnable_here, prepare, report_path_for
from .progress import NullProgress
from .report import stats
from .runner import (
    _bandwidth,
    _check_report_target,
    _finish,
    _load,
    _new_report,
    _record_failure,
    _record_plan,
    _result,
    _rounds,
    _segment_entry,
    _start,
    _write,
)
from .session import RunSession
from .shm import default_shm_dir
from .signals import StopSignals
from .spec import JobSpec
from .topology import Topology

__all__ = ["run_mpi"]


class _PeerStopped(Exception):
    """Another rank (or this one) sent a failed or interrupted state: the job stops here."""

    def __init__(self, state: int) -> None:
        super().__init__(state)
        self.state = state


PEER_STOPPED = "stopped because another rank failed or was stopped"


class _Steps:
    """The job's status exchanges, in lock step: a rank that fails sends its state at its next exchange."""

    def __init__(self, sync: Sync) -> None:
        self.sync = sync
        self.ended = False  # a failed/interrupted state was exchanged: the ranks go straight to the gather
        self.broken = False  # an exchange never completed (a peer is gone): no more collectives

    def step(self, state: int, what: str) -> None:
        try:
            worst = self.sync.exchange(state, what)
        except BaseException:
            self.broken = True
            raise
        if worst != OK:
            self.ended = True
            raise _PeerStopped(worst)


def node_name() -> str:
    """This node's name: Slurm's (``SLURMD_NODENAME``, which tells emulated nodes on one host apart), else the
    host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _peer_error(ps: _PeerStopped, flag: StopSignals) -> BaseException:
    if ps.state == INTERRUPTED:
        return RunInterrupted(flag.signum or 15)
    return RunError(PEER_STOPPED)


def _state(error: BaseException | None) -> int:
    if error is None:
        return OK
    return INTERRUPTED if isinstance(error, (RunInterrupted, KeyboardInterrupt)) else FAILED


def run_mpi(
    spec: JobSpec,
    topology: Topology,
    *,
    spec_dir: str | os.PathLike[str] = ".",
    report_path: str | None = None,
    progress: NullProgress | None = None,
    force: bool = False,
    write: bool = True,
    stop: StopSignals | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """Run this rank's part of ``spec``; rank 0 returns the job's report, the others None; and the exit code."""
    env = detect_env()
    if env is None:
        raise SpecError(
            "run --mpi: this process was not started by an MPI launcher; use mpirun -n N python -m shmhpc run "
            "JOB --mpi, or in a Slurm job srun --mpi=pmix … --mpi"
        )
    MPI = load_mpi()
    flag = stop if stop is not None else StopSignals()
    progress = progress or NullProgress()
    root = env.rank == 0
    if not root:
        progress = NullProgress()  # one voice: rank 0's
    t_start = time.perf_counter()
    report = _new_report(spec, topology)
    timings: dict[str, Any] = {}
    error: BaseException | None = None
    session: RunSession | None = None
    out: Output | None = None
    rows = (0, 0)
    states: list[Any] | None = None
    info = None
    comm = steps = None
    try:
        with flag:
            # -- before MPI: plan this node's slice, fork the pool, load (forking after MPI_Init upsets MPIs)
            try:
                info = describe_data(spec.data, spec_dir)
                align = _boundaries(info.n_rows, env.size, info.row_bytes, topology)[0]
                rows = node_rows(info.n_rows, env.size, env.rank, align)
                prep = prepare(spec, topology, spec_dir, data=info.node_slice(*rows))
                if root and write:
                    path = report_path_for(spec, report_path, len(prep.plan.workers), prep.plan.policy)
                    out = _check_report_target(path, report_path or spec.report, force)
                _record_plan(report, prep)
                check_runnable_here(prep)
                flag.check()
                session = RunSession(prep, shm_dir=default_shm_dir(), stop=flag, orphan_unlink=True)
                session.__enter__()
                report["segment"] = _segment_entry(session)
                _start(session, report, timings, progress)
                _load(session, report, timings, progress)
            except BaseException as exc:  # told to every rank at the first exchange
                error = exc
            comm = init(MPI, env)
            sync = Sync(MPI, comm, flag, spec.timeout_s)
            steps = _Steps(sync)
            try:
                steps.step(_state(error), "start")
                assert session is not None
                me = (socket.gethostname(), os.getpid())
                session.peer_pids = {pid for host, pid in comm.allgather(me) if host == me[0] and pid != me[1]}
                states = _synced_rounds(session, steps, report, timings, progress, flag)
                _result(session, report, timings, progress, session.last_replies)  # this node's check
            except _PeerStopped as ps:
                error = error or _peer_error(ps, flag)
            except BaseException as exc:
                error = error or exc
            if not steps.ended and not steps.broken:
                try:
                    steps.step(_state(error), "result")
                except _PeerStopped as ps:
                    error = error or _peer_error(ps, flag)
                except BaseException as exc:
                    error = error or exc
    except BaseException as exc:  # a stop or an error outside the exchanges (MPI did not start, …)
        error = error or exc
    finally:
        if session is not None:
            if session.teardown_s is not None:
                timings["teardown_s"] = session.teardown_s
            report["warnings"].extend(session.killed)
            session.close()
    code = _record_failure(report, error) if error is not None else 0
    if error is None:
        report["status"] = "ok"
    _finish(report, timings, time.perf_counter() - t_start, code)
    part = {
        "rank": env.rank,
        "host": node_name(),
        "rows": list(rows),
        "report": report,
        "states": states if error is None else None,
    }
    if comm is None or steps is None or steps.broken:  # no safe collective left: each rank tells its own story
        if root:
            whole = _merge(spec, env, MPI, info, [part], time.perf_counter() - t_start, incomplete=True)
            if write:
                _write(whole, spec, out, report_path)
            return whole, whole["exit_code"]
        return None, code or 1
    parts = comm.gather(part, root=0)
    if not root:
        return None, code
    whole = _merge(spec, env, MPI, info, parts, time.perf_counter() - t_start)
    if write:
        _write(whole, spec, out, report_path)
    return whole, whole["exit_code"]


def _synced_rounds(
    session: RunSession, steps: _Steps, report: dict, timings: dict, progress: Any, flag: StopSignals
) -> list[Any]:
    """The runner's rounds, each between two exchanges (so its time is the whole job's); the last round's
    chunk states in this node's row order."""
    local_round = session.round

    def synced(index: int) -> tuple[float, list[dict]]:
        steps.step(OK, f"round {index}")
        t0 = time.perf_counter()
        try:
            _, replies = local_round(index)
        except BaseException as exc:
            try:
                steps.step(_state(exc), f"round {index}")
            except _PeerStopped:
                pass
            raise
        steps.sync.longest_round_s = max(steps.sync.longest_round_s, time.perf_counter() - t0)
        steps.step(OK, f"round {index}")
        session.last_replies = replies
        return time.perf_counter() - t0, replies

    session.round = synced  # type: ignore[method-assign]
    try:
        replies = _rounds(session, report, timings, progress, flag)
    finally:
        session.round = local_round  # type: ignore[method-assign]
    session.last_replies = replies
    ordered = sorted(
        (
            (chunk[0], state)
            for w, rep in zip(session.prep.plan.workers, replies)
            for chunk, state in zip(w.chunks, rep["states"])
        ),
        key=lambda t: t[0],
    )
    return [s for _, s in ordered]


# -- rank 0: one report for the whole job ----------------------------------------------------------------


def _merge(
    spec: JobSpec,
    env: MpiEnv,
    MPI: Any,
    info: Any,
    parts: list[dict[str, Any]],
    total_s: float,
    incomplete: bool = False,
) -> dict[str, Any]:
    parts = sorted(parts, key=lambda p: p["rank"])
    base = parts[0]["report"]
    whole: dict[str, Any] = {k: v for k, v in base.items() if k not in ("exit_code",)}
    whole["mpi"] = {
        "size": env.size,
        "launcher": env.launcher,
        **library(MPI),
        "hosts": [p["host"] for p in parts],
        "split": "equal rows per node",
        "incomplete": incomplete or None,
    }
    if info is not None:
        whole["data"] = info.to_dict()
    nodes = []
    workers = []
    for p in parts:
        r = p["report"]
        nodes.append(
            {
                "rank": p["rank"],
                "host": p["host"],
                "rows": p["rows"],
                "status": r.get("status"),
                "error": r.get("error"),
                **{k: r.get(k) for k in ("plan", "workers", "pages", "placement", "segment", "pool", "timings")},
                "result": r.get("result"),
                "warnings": r.get("warnings"),
                "usable_cpus": (r.get("topology") or {}).get("usable"),
                "topology": r.get("topology"),
                "host_info": {k: (r.get("host") or {}).get(k) for k in ("hostname", "cpu_model", "kernel")},
            }
        )
        workers += [{**w, "mpi_rank": p["rank"], "host": p["host"]} for w in r.get("workers") or []]
    whole["nodes"] = nodes
    whole["workers"] = workers
    whole["placement"] = _placement(nodes)
    whole["warnings"] = [f"rank {p['rank']} ({p['host']}): {w}" for p in parts for w in p["report"].get("warnings")]
    # Status: the first failing rank's error names its node.
    bad = [p for p in parts if p["report"].get("status") != "ok"]
    timings = _timings(parts)
    whole["timings"] = timings
    silent = sorted(set(range(env.size)) - {p["rank"] for p in parts})
    # ranks that never reported: gone (killed), or their exchange with us broke off
    gone = f"; no word from rank {', '.join(map(str, silent))} (killed, or cut off)" if silent else ""
    if bad:
        # the rank that failed, not those it stopped
        own = [p for p in bad if p["report"].get("error") != PEER_STOPPED] or bad
        first = next((p for p in own if p["report"].get("status") == "failed"), own[0])
        r = first["report"]
        whole["status"] = r.get("status")
        whole["error"] = f"rank {first['rank']} ({first['host']}): {r.get('error')}{gone}"
        whole["exit_code"] = r.get("exit_code") or 1
        whole.pop("result", None)
        return whole
    if incomplete or len(parts) != env.size:
        whole.update({"status": "failed", "error": f"not every rank reported{gone}", "exit_code": 1})
        return whole
    kernel = make_kernel(spec.kernel, spec.accumulate, [])
    t0 = time.perf_counter()
    states = [s for p in parts for s in p["states"]]
    value = kernel.finalize(combine_all(kernel, states))
    timings["combine_s"] = time.perf_counter() - t0
    whole["result"] = _global_result(spec, value, [n["result"] or {} for n in nodes])
    whole["result"]["engine"] = (nodes[0]["result"] or {}).get("engine")
    whole["bandwidth"] = _bandwidth(info.nbytes, timings.get("repeat_s") or [], len(workers))
    whole["status"] = "ok" if whole["result"]["verified"] is not False else "failed"
    whole["exit_code"] = 0 if whole["status"] == "ok" else 1
    if whole["status"] != "ok":
        whole["error"] = "verification failed on " + ", ".join(
            f"rank {n['rank']}" for n in nodes if (n["result"] or {}).get("verified") is False
        )
    return whole


def _placement(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every node's placement check as one: its partitions (with their node's rank and host), all judged."""
    sections: list[dict[str, Any]] = [p for n in nodes if isinstance(p := n.get("placement"), dict)]
    if not sections or len(sections) != len(nodes):
        return None
    from .numa_policy import placement_line

    whole = dict(sections[0])
    whole["partitions"] = [  # rows as global rows: the node's slice starts at its first row
        {
            **part,
            "start": part["start"] + n["rows"][0],
            "stop": part["stop"] + n["rows"][0],
            "mpi_rank": n["rank"],
            "host": n["host"],
        }
        for n, sec in zip(nodes, sections)
        for part in sec.get("partitions") or []
    ]
    judged = [p for p in whole["partitions"] if p.get("passed") is not None]
    sampled = sum(p.get("sampled") or 0 for p in judged)
    on = sum(p.get("on_intended") or 0 for p in judged)
    whole["fraction_intended"] = on / sampled if sampled else None
    whole["passed"] = all(p["passed"] for p in judged) if judged else None
    applied = [sec.get("applied") for sec in sections]
    whole["applied"] = None if all(a is None for a in applied) else all(bool(a) for a in applied)
    whole["reason"] = next((sec.get("reason") for sec in sections if sec.get("reason")), None)
    whole.pop("note", None)
    whole["summary"] = placement_line(whole)
    return whole


def _timings(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-job times: the slowest node's start and load; rank 0's rounds, which span every node's."""
    ts = [p["report"].get("timings") or {} for p in parts]

    def slowest(k: str) -> float | None:
        vals = [t[k] for t in ts if isinstance(t.get(k), (int, float))]
        return max(vals) if vals else None

    out: dict[str, Any] = {k: v for k in ("pool_start_s", "load_s", "teardown_s", "verify_s") if (v := slowest(k))}
    first = ts[0]
    for k in ("warmup_s", "repeat_s"):
        if first.get(k):
            out[k] = first[k]
    if out.get("repeat_s"):
        out["repeat"] = stats(out["repeat_s"])
    out["total_s"] = slowest("total_s")
    return out


# a global reference from the nodes' references
_COMBINABLE: dict[str, Callable[[list[float]], float]] = {"sum": math.fsum, "min": min, "max": max}


def _global_result(spec: JobSpec, value: Any, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    verified = all(n.get("verified") for n in nodes) if all(n.get("verified") is not None for n in nodes) else None
    refs = [n.get("reference") for n in nodes]
    reference = None
    if spec.kernel in _COMBINABLE and all(isinstance(r, (int, float)) for r in refs):
        reference = _COMBINABLE[spec.kernel]([float(r) for r in refs])  # type: ignore[arg-type]
    errors = [float(e) for n in nodes if isinstance(e := n.get("abs_error"), (int, float))]
    abs_error: float | None
    rel_error: float | None
    if reference is not None and isinstance(value, (int, float)):
        abs_error = abs(value - reference)
        rel_error = abs_error / abs(reference) if reference else abs_error
    else:
        abs_error = max(errors) if errors else None
        rel_error = max((n.get("rel_error") or 0.0) for n in nodes) if errors else None
    tolerance = sum(n.get("tolerance") or 0.0 for n in nodes) if spec.kernel == "sum" else None
    return {
        "kernel": spec.kernel,
        "accumulate": spec.accumulate,
        "value": value,
        "reference": reference,
        "abs_error": abs_error,
        "rel_error": rel_error,
        "tolerance": tolerance if tolerance is not None else max((n.get("tolerance") or 0.0) for n in nodes),
        "verified": verified,
        "check": "each node verified its slice against its own single-process reference; the value folds every "
        "node's chunk states in global row order"
        + ("; the reference combines the nodes' references" if reference is not None else ""),
        "nodes": [{k: n.get(k) for k in ("value", "reference", "abs_error", "verified")} for n in nodes],
    }
