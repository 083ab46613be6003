"""The Python API: the same pinned pool, on an array you already have (a notebook, a script).

::

    import numpy as np, shmhpc

    x = np.random.default_rng(0).standard_normal(20_000_000, dtype=np.float32)
    with shmhpc.Session(workers=2, pinning="compact") as s:
        a = s.share(x)                  # copied once into shared memory
        r = s.reduce(a, "sum")          # Result: .value, .reference, .verified, .timings, .report
        m = s.map(a, lambda chunk: float((chunk > 0).sum()))

One engine behind the CLI and this API: a ``Session`` validates its fields with the YAML spec's model
(the same one-line errors, raised as ``SpecError``), and each shared array is a run session
(:class:`shmhpc.session.RunSession`): its own segment and its own pinned pool, started by ``share``
and kept warm across calls. ``reduce`` sends the kernel (a built-in name, ``"module:function"``, or a
Python function or map/combine/finalize object pickled by value) and runs the rounds; its report is the
CLI's, so ``compare`` and ``plot`` read it.

Placement: a file (``share(path=…)``) is read by the owning workers and an empty array
(``share(shape=…, dtype=…)``) is first touched by them when they zero it; an in-memory array can only be
copied by this process, so its partitions are bound (``numa.placement: bind``) to their owners' nodes
before the copy, unless the session asked for another policy.

Interrupting a call (``KeyboardInterrupt``, a notebook's interrupt button) stops the round: the array's
workers are stopped and the interrupt propagates; the shared data stays, and the next call on that
array starts a fresh pool that maps it again (no copy). Leaving the ``with`` block, ``close()``, deleting
the session or the interpreter exiting removes every segment; a killed kernel leaves segments that
``shmhpc clean`` finds.
"""

from __future__ import annotations

import atexit
import copy
import html
import os
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunError, SpecError
from .kernels import Kernel, kernel_from_object, make_kernel
from .progress import NullProgress
from .report import now_stamp
from .spec import FILE_DTYPES, JobSpec, load_spec, spec_from_dict

__all__ = ["Result", "Session", "Shared"]

_LIVE: weakref.WeakSet[Session] = weakref.WeakSet()  # closed at interpreter exit
_AT_EXIT: list[bool] = []


def _close_all() -> None:
    for s in list(_LIVE):
        s.close()


def _close_at_exit() -> None:
    """Close every live session when the interpreter exits, *before* multiprocessing's own exit handler: that
    one joins every child process, and our workers (which ignore SIGTERM, so only their launcher stops them)
    would wait on their pipes for ever. atexit runs handlers last-registered first, so ours is registered
    after multiprocessing's (which its ``util`` module registers on import)."""
    if not _AT_EXIT:
        import multiprocessing.util  # noqa: F401 - registers multiprocessing's handler first

        atexit.register(_close_all)
        _AT_EXIT.append(True)


@dataclass
class Result:
    """One reduction: its value and check, the timings of this call, and the full report (a dict)."""

    value: Any
    reference: Any
    verified: bool | None
    abs_error: float | None
    rel_error: float | None
    timings: dict[str, Any]
    report: dict[str, Any] = field(repr=False)

    @property
    def kernel(self) -> str:
        return str(self.report.get("job", {}).get("kernel"))

    def summary(self) -> str:
        """What ``python -m shmhpc run`` prints for the same run."""
        from .report import summarize

        return summarize(self.report)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report (a normal run report: ``compare`` and ``plot`` read it); returns its path."""
        return Report(self.report).save(path)


class Report(dict):
    """A run report (``Session.report(result)``): a dict with ``save``."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        from .report import write_report

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self["report_path"] = str(Path(path))
        return Path(write_report(dict(self), path))


class Shared:
    """An array in shared memory, owned by one session: its segment, its plan and its warm pinned pool."""

    def __init__(self, session: Session, prep: Any, run: Any, base: dict[str, Any], costs: dict[str, float]) -> None:
        self._session = session
        self._prep = prep
        self._run = run  # the RunSession
        self._base = base  # the report parts every call shares (job, host, topology, data, plan, placement, …)
        self._costs = costs  # pool start and load not yet reported: the next call's report carries them
        self._calls = 0
        self._kernel_key: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._prep.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._prep.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(self._prep.data.nbytes)

    @property
    def pids(self) -> list[int]:
        """The pids of this array's workers now (empty while stopped)."""
        return [h["pid"] for h in self._run.hello] if self._run.pool is not None else []

    @property
    def closed(self) -> bool:
        return self._run is None or self._run.segment is None

    def view(self) -> Any:
        """A context manager: the whole array, read-only, for the block only (``with a.view() as arr: …``)."""
        self._check()
        return self._run.array()

    def _check(self) -> None:
        if self.closed:
            raise RunError("this shared array is closed (its session was closed)")

    def close(self) -> None:
        if self._run is not None:
            self._run.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._prep.plan.workers)} workers"
        return f"<shmhpc.Shared {self.shape} {self.dtype} {self.nbytes / 1e6:,.1f} MB, {state}>"


class Session:
    """Pinned worker pools on shared arrays, from Python. Fields are the YAML spec's (``workers``, ``pinning``,
    ``threads_per_worker``, ``numa``, ``repeats``, ``accumulate``, ``start_method``, …), validated by the same
    model; ``data`` comes from :meth:`share`. Raises ``SpecError`` with the CLI's one-line messages."""

    def __init__(self, **fields: Any) -> None:
        from .topology import read_topology

        if "data" in fields or "kernel" in fields:
            raise SpecError(
                f"Session: {'data' if 'data' in fields else 'kernel'} is not a session field; "
                "give the data to share() and the kernel to reduce()"
            )
        from .planning import prepare

        self._fields = {"name": "session", **fields}
        self._topology = read_topology()
        # The fields, checked now as a YAML job's are (a plan too: pinning, workers and CPUs against this machine)
        self._spec = self._validate({"source": "empty", "size": 1 << 20, "dtype": "float32"})
        prepare(self._spec, self._topology)
        self._arrays: list[Shared] = []
        self._from_spec: JobSpec | None = None
        self._spec_dir = "."
        _LIVE.add(self)
        _close_at_exit()

    @classmethod
    def from_spec(cls, path: str | os.PathLike[str], **overrides: Any) -> Session:
        """A session with a YAML job's fields; ``share()`` with no argument shares its data, ``run()`` runs it
        exactly as ``python -m shmhpc run`` does."""
        spec = load_spec(path)
        raw = spec.model_dump(mode="json")
        raw.update(overrides)
        spec = spec_from_dict(raw, source=str(path))
        fields = {k: v for k, v in raw.items() if k not in ("data", "kernel")}
        self = cls(**fields)
        self._from_spec = spec
        self._spec_dir = str(Path(path).resolve().parent)
        return self

    # -- lifetime -------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to tell
            pass

    def close(self) -> None:
        """Stop every pool and remove every segment. Safe to call twice."""
        for a in getattr(self, "_arrays", []):
            a.close()
        self._arrays = []

    def __repr__(self) -> str:
        s = self._spec
        arrays = ", ".join(repr(a) for a in self._arrays) or "no arrays"
        return f"<shmhpc.Session workers={s.workers} pinning={s.pinning!r} numa={s.numa.placement}: {arrays}>"

    # -- data -----------------------------------------------------------------------------------
    def _validate(self, data: dict[str, Any], **more: Any) -> JobSpec:
        return spec_from_dict({**self._fields, **more, "data": data}, source="Session")

    def share(
        self,
        x: np.ndarray | None = None,
        /,
        *,
        path: str | os.PathLike[str] | None = None,
        shape: int | tuple[int, ...] | None = None,
        dtype: Any = None,
        offset_bytes: int = 0,
    ) -> Shared:
        """Put data in shared memory once, partitioned over this session's pinned workers.

        ``share(x)`` copies an in-memory array (1-D or 2-D); ``share(path=…)`` reads a ``.npy`` file (or raw
        data with ``shape``, ``dtype`` and ``offset_bytes``) straight into the segment, each worker its own
        rows; ``share(shape=…, dtype=…)`` allocates zeros that :meth:`fill` writes, worker by worker.
        """
        from .planning import prepare

        given = [k for k, v in (("x", x), ("path", path)) if v is not None]
        if len(given) > 1:
            raise SpecError("share: give an array or a path, not both")
        numa: dict[str, Any] = self._spec.numa.model_dump(mode="json")
        source = None
        if x is not None:
            source = np.asarray(x)
            if source.ndim not in (1, 2):
                raise SpecError(f"share: the array has {source.ndim} dimensions; shared arrays are 1-D or 2-D")
            if source.dtype.name not in FILE_DTYPES:
                raise SpecError(
                    f"share: dtype {source.dtype.name!r} is not supported; allowed: {', '.join(FILE_DTYPES)}"
                )
            data = {"source": "array", "shape": list(source.shape), "dtype": source.dtype.name}
            # Only this process has the array: it writes it, and a policy (not a first touch) places it.
            numa["writer"] = "launcher"
            if numa["placement"] == "first-touch":
                numa["placement"] = "bind"
        elif path is not None:
            raw = Path(path).suffix != ".npy"
            data = {"source": "raw" if raw else "npy", "path": str(Path(path).resolve())}
            if raw:
                data.update({"dtype": np.dtype(dtype or "float32").name, "offset_bytes": offset_bytes})
                data["shape"] = list(shape) if isinstance(shape, tuple | list) else [shape] if shape else None
        elif self._from_spec is not None and shape is None:
            data = self._from_spec.data.model_dump(mode="json")
        else:
            if shape is None:
                raise SpecError("share: give an array, a path, or shape and dtype")
            shape_list = list(shape) if isinstance(shape, tuple | list) else [shape]
            data = {"source": "empty", "shape": shape_list, "dtype": np.dtype(dtype or "float32").name}
        data = {k: v for k, v in data.items() if v is not None}
        spec = self._validate(data, numa=numa)
        prep = prepare(spec, self._topology, self._spec_dir)
        return self._start(prep, source)

    def _start(self, prep: Any, source: np.ndarray | None) -> Shared:
        from .planning import check_runnable_here
        from .runner import _load, _new_report, _record_plan, _segment_entry, _start
        from .session import RunSession
        from .shm import default_shm_dir

        check_runnable_here(prep)
        report = _new_report(prep.spec, self._topology)
        _record_plan(report, prep)
        timings: dict[str, Any] = {}
        run = RunSession(prep, shm_dir=default_shm_dir(), source=source)
        run.__enter__()
        try:
            report["segment"] = _segment_entry(run)
            _start(run, report, timings, NullProgress())
            _load(run, report, timings, NullProgress())
        except BaseException:
            run.close()
            raise
        shared = Shared(self, prep, run, report, timings)
        self._arrays.append(shared)
        return shared

    def fill(self, a: Shared, func: Any) -> list[dict]:
        """Each worker calls ``func(block, start_row)`` on its own chunks: ``block`` is a writable view of rows
        ``start_row …``; the owner writes its pages first, so they live on its node. Per worker: seconds, pages."""
        import cloudpickle

        self._own(a)
        self._warm(a)
        try:
            return list(a._run.fill(cloudpickle.dumps(func)))
        except BaseException:
            a._run.stop_workers()  # a worker may be mid-fill: the next call starts a fresh pool
            raise

    # -- reductions -----------------------------------------------------------------------------
    def reduce(
        self,
        a: Shared,
        kernel: Any = "sum",
        *,
        accumulate: str | None = None,
        repeats: int | None = None,
        warmup: int | None = None,
        verify: bool | None = None,
        engine: str | None = None,
    ) -> Result:
        """Reduce ``a`` with ``kernel`` on its warm pool: ``warmup`` + ``repeats`` rounds, then the check against a
        single-process reference (``verify``). ``kernel``: a built-in name, ``"module:function"``, or a Python
        function / map-combine-finalize object or class (pickled by value, so one defined in a notebook works)."""
        self._own(a)
        named = isinstance(kernel, str)
        settings = {
            k: v
            for k, v in (
                ("accumulate", accumulate),
                ("repeats", repeats),
                ("warmup", warmup),
                ("verify", verify),
                ("engine", engine),
            )
            if v is not None
        }
        base = a._prep.spec.model_dump(mode="json")
        base.update(settings)
        base["kernel"] = kernel if named else "python:callable"
        spec = spec_from_dict(base, source="reduce")
        k_obj: Kernel = (
            make_kernel(kernel, spec.accumulate, list(a._prep.search_path)) if named else kernel_from_object(kernel)
        )
        if not named:
            spec = spec.model_copy(update={"kernel": k_obj.name})
        return self._reduce(a, spec, k_obj)

    def map(self, a: Shared, func: Any, **settings: Any) -> Result:
        """``func(chunk)`` on every chunk in the workers, partial results added: a function kernel."""
        return self.reduce(a, func, **settings)

    def report(self, result: Result) -> Report:
        """The full report of a call, as a :class:`Report` (``.save(path)``)."""
        return Report(copy.deepcopy(result.report))

    def run(self) -> Result:
        """``from_spec`` sessions: run the YAML job as ``python -m shmhpc run`` does (its own pool and segment)."""
        from .runner import run_job

        if self._from_spec is None:
            raise SpecError("run: only a session made by Session.from_spec has a job to run; use share and reduce")
        rep = run_job(self._from_spec, self._topology, spec_dir=self._spec_dir, write=False)
        if rep.get("status") != "ok":
            raise RunError(f"{self._from_spec.name}: {rep.get('status')} — {rep.get('error')}")
        return _as_result(rep)

    # -- internals ------------------------------------------------------------------------------
    def _own(self, a: Any) -> None:
        if not isinstance(a, Shared):
            raise SpecError(f"expected an array from share() (got {type(a).__name__})")
        if a._session is not self:
            raise SpecError("this array was shared by another session")
        a._check()

    def _warm(self, a: Shared) -> None:
        """Restart a pool that an interrupt or a failure stopped; the data stays in the segment (no copy)."""
        run = a._run
        if run.pool is not None:
            return
        from .runner import _load, _start

        timings: dict[str, Any] = {}
        report = copy.deepcopy(a._base)
        _start(run, report, timings, NullProgress())
        _load(run, report, timings, NullProgress())  # workers only map their rows now: the data is there
        a._base.update({k: report[k] for k in ("workers", "pool", "pages", "placement") if k in report})
        a._costs = {k: a._costs.get(k, 0.0) + (timings.get(k) or 0.0) for k in ("pool_start_s", "load_s")}
        a._kernel_key = None

    def _reduce(self, a: Shared, spec: JobSpec, kernel: Kernel) -> Result:
        from .planning import set_engine
        from .runner import _finish, _result, _rounds
        from .signals import StopSignals

        self._warm(a)
        run = a._run
        data = a._prep.data
        try:
            engine, reason = set_engine(spec, data, a._prep.plan, kernel)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        run.prep = replace(a._prep, spec=spec, kernel=kernel, engine=engine, engine_reason=reason)
        report = copy.deepcopy(a._base)
        report["job"] = spec.model_dump(mode="json")
        report["started_at"] = now_stamp()
        # a pool start and a load are this call's only when it needed them (share, or a restart after a failure)
        timings: dict[str, Any] = {k: v for k, v in a._costs.items() if v}
        a._costs = {}
        a._calls += 1
        # what this call cost besides its rounds: a pool start and a load only when it needed them
        report["api"] = {"call": a._calls, "pids": a.pids, "pool_reused": "pool_start_s" not in timings}
        t0 = time.perf_counter()
        try:
            key = (kernel.name, getattr(kernel, "accumulate", None), engine) if spec.kernel[:7] != "python:" else None
            if key is None or key != a._kernel_key:
                run.set_kernel(kernel)
                a._kernel_key = key
            replies = _rounds(run, report, timings, NullProgress(), StopSignals())
            _result(run, report, timings, NullProgress(), replies, keep_workers=True)
            report["status"] = "ok"
        except BaseException:
            run.stop_workers()  # a round may still be running in the workers: the next call starts afresh
            a._kernel_key = None
            raise
        finally:
            run.prep = a._prep
        _finish(report, timings, time.perf_counter() - t0, 0)
        return _as_result(report)


def _as_result(rep: dict[str, Any]) -> Result:
    res = rep.get("result") or {}
    return Result(
        value=res.get("value"),
        reference=res.get("reference"),
        verified=res.get("verified"),
        abs_error=res.get("abs_error"),
        rel_error=res.get("rel_error"),
        timings=rep.get("timings") or {},
        report=rep,
    )
