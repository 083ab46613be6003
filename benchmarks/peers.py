"""shmhpc against every peer, in one interleaved run: the seed case (80 MB) and 2 GB of float32.

Run on demand (not part of the test suite)::

    python benchmarks/peers.py                             # 80 MB and 2 GB, 2 workers, 30 rounds
    python benchmarks/peers.py --quick                     # tiny sizes, few rounds: a smoke test (< 1 min)
    python benchmarks/peers.py --json peers.json --md peers.md
    python benchmarks/peers.py --sizes 80MB --rounds 50    # the seed case only

Every case sums the *same* float32 standard-normal data (shmhpc's own ``generate`` stream, seed 0),
once accumulating in float32 (``native``) and once in float64 where the peer can: shmhpc's warm
pinned pool, one ``np.sum``, a thread pool and a fork ``multiprocessing.Pool`` over equal parts,
joblib (loky, auto-memmapping) and ``dask.array`` (threads) when importable, the seed notebook's
``SharedMemory`` + ``ProcessPoolExecutor`` with 24 chunks, and ``likwid-bench -t sum_sp_avx`` when
installed. Cold cases (whole processes) run for the smallest size: ``python -m shmhpc run`` against
the seed notebook as a script. Beside them: a compute-bound kernel at 1 and N workers, an empty
kernel (the dispatch cost of a round), ``.npy`` load and ``generate`` phases from run reports
against the RNG alone, ``import shmhpc.cli``, pool start, and the peak memory of a job on the
largest ``.npy``.

Memory bandwidth on shared VMs drifts by 20-30 % within minutes, so no case runs as a block: each
round calls every case once in the same order (slow cases every k-th round), and a result is the
median of its rounds. Compare only ratios from one run. The script prints a table and the targets
with pass/fail; ``--json`` keeps every sample and the machine, ``--md`` the tables.

shmhpc's warm pools use ``engine: numba`` when numba is installed (``--engine``; a warm pool has paid
numba's start), and an 80 MB-or-smaller size also gets an ``engine: numpy`` row; cold runs keep the
spec's default. joblib and dask are not shmhpc dependencies (``pip install '.[bench]'`` adds them);
``likwid-bench`` comes with the ``likwid`` package of most distributions. A size needs about six
copies of its data in memory at once; the script refuses one that does not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from shmhpc import RunSession, prepare, read_topology, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
SEED_CHUNKS = 24  # the seed notebook's chunk count
MEM_SLACK_BYTES = 150_000_000
# Copies of the data alive at once in a size's rounds: two shmhpc segments (native, float64), the
# peers' private array, the seed notebook's SharedMemory, joblib's memmap and likwid-bench's arrays.
COPIES = 6
# A compute-bound user kernel and an empty one, written to the run's temporary folder. The sine
# passes work on 32K-element blocks (128 KiB of float32 plus temporaries: inside a core's L2), so
# the kernel is limited by arithmetic, not by memory bandwidth, and should scale with workers.
KERNEL_MODULE = """
import numpy as np

BLOCK = 1 << 15
PASSES = {passes}


def sines(chunk):
    flat = chunk.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, BLOCK):
        x = flat[start : start + BLOCK]
        for p in range(PASSES):
            total += float(np.sin(x * np.float32(1.0 + p / 8.0)).sum(dtype=np.float64))
    return total


def empty(chunk):
    return 0.0
"""
# The seed notebook's whole process, as a user runs it: make the data, copy it into a fresh
# SharedMemory, sum 24 chunks in a ProcessPoolExecutor whose tasks attach by name.
SEED_SCRIPT = """
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
import numpy as np

def part(name, n, lo, hi):
    shm = SharedMemory(name=name)
    a = np.ndarray((n,), np.float32, buffer=shm.buf)
    s = float(np.sum(a[lo:hi]))
    del a
    shm.close()
    return s

if __name__ == "__main__":
    n, workers, chunks = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    shm = SharedMemory(create=True, size=a.nbytes)
    try:
        b = np.ndarray(a.shape, a.dtype, buffer=shm.buf)
        b[:] = a
        del b
        cuts = [n * i // chunks for i in range(chunks + 1)]
        with ProcessPoolExecutor(workers) as ex:
            print(sum(ex.map(part, [shm.name] * chunks, [n] * chunks, cuts[:-1], cuts[1:])))
    finally:
        shm.close()
        shm.unlink()
"""

# The fork pool's workers read this array, created before the pool forks (inherited copy-on-write).
_PRIVATE: np.ndarray | None = None

Run = Callable[[int], tuple[float, Any]]  # one timed call for round r: (seconds, value or None)
Parts = list[tuple[int, int]]


# -- what the peers run (module level, so every start method finds the workers' functions) ---------
def _pool_part(lo: int, hi: int, dtype: str | None) -> float:
    assert _PRIVATE is not None  # set before the fork; not user input
    return float(np.sum(_PRIVATE[lo:hi], dtype=dtype))


def _pool_sum(pool: Any, parts: Parts, dtype: str | None) -> float:
    return sum(pool.starmap(_pool_part, [(lo, hi, dtype) for lo, hi in parts]))


def _threads_sum(ex: Executor, a: np.ndarray, parts: Parts, dtype: str | None) -> float:
    futs = [ex.submit(np.sum, a[lo:hi], dtype=dtype) for lo, hi in parts]
    return sum(float(f.result()) for f in futs)


def _part_sum(x: np.ndarray, dtype: str | None) -> float:
    return float(np.sum(x, dtype=dtype))


def _joblib_sum(workers: int, a: np.ndarray, parts: Parts, dtype: str | None) -> float:
    # One Parallel per call, as it is usually written: loky keeps its workers between calls, and each
    # call dumps the parts to a fresh memmap and deletes it at its end (a Parallel kept open across
    # calls keeps every call's copy until it is closed).
    from joblib import Parallel, delayed

    return sum(Parallel(n_jobs=workers, backend="loky")(delayed(_part_sum)(a[lo:hi], dtype) for lo, hi in parts))


def _seed_chunk(name: str, n: int, lo: int, hi: int, dtype: str | None) -> float:
    shm = SharedMemory(name=name)
    try:
        a = np.ndarray((n,), np.float32, buffer=shm.buf)
        s = float(np.sum(a[lo:hi], dtype=dtype))
        del a
    finally:
        shm.close()
    return s


def _seed_sum(ex: Executor, name: str, n: int, cuts: Parts, dtype: str | None) -> float:
    k = len(cuts)
    return sum(ex.map(_seed_chunk, [name] * k, [n] * k, [lo for lo, _ in cuts], [hi for _, hi in cuts], [dtype] * k))


def _rng_draw(n: int, seed: int) -> None:
    np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


def _compute_part(path: str, lo: int, hi: int) -> float:
    """The compute-bound kernel on a slice of the inherited array, in a plain pool worker."""
    import importlib.util

    mod = sys.modules.get("peer_kernels")
    if mod is None:
        spec = importlib.util.spec_from_file_location("peer_kernels", path)
        assert spec is not None and spec.loader is not None  # the file this script wrote
        mod = sys.modules["peer_kernels"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    assert _PRIVATE is not None
    return float(mod.sines(_PRIVATE[lo:hi]))


# -- cases and the interleaved loop ------------------------------------------------------------------
@dataclass
class Case:
    """One thing timed once per round."""

    key: str
    label: str
    group: str
    acc: str  # native | float64 | "" (not a sum)
    nbytes: int  # bytes one call reads; 0 where GB/s means nothing
    run: Run
    every: int = 1  # slow cases take part in every n-th round only
    ref: str | None = None  # the case this row is compared with
    shmhpc: bool = False  # True: the speed-up column is ref time / this time, else this time / ref time
    checked: bool = True  # its value is compared with a float64 sum of the same data
    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: str | None = None

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - t0, value


def timing(fn: Callable[..., Any], *args: Any, **kw: Any) -> Run:
    """A case's ``run``: one timed call of ``fn(*args, **kw)``, whatever the round."""
    return lambda _r: _timed(fn, *args, **kw)


def _spent(_r: int) -> tuple[float, Any]:
    raise RuntimeError("this case's resources are closed")


def _every(rounds: int, wanted: int) -> int:
    """Take part every k-th round so that about ``wanted`` samples come out of ``rounds``."""
    return max(1, rounds // max(1, wanted))


def _parts(n: int, k: int) -> Parts:
    cuts = [n * i // k for i in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _dtype(acc: str) -> str | None:
    return None if acc == "native" else "float64"


def interleave(cases: list[Case], rounds: int, check: Callable[[Case, Any], None], say: Callable[[str], None]) -> None:
    """One discarded call per case (its value checked), then ``rounds`` rounds in a fixed order."""
    for c in cases:
        try:
            check(c, c.run(-1)[1])
        except Exception as exc:  # a peer that breaks is reported, not fatal
            c.failed = f"{type(exc).__name__}: {exc}"
    t_start = time.perf_counter()
    for r in range(rounds):
        for c in cases:
            if c.failed is None and r % c.every == 0:
                try:
                    c.samples.append(c.run(r)[0])
                except Exception as exc:
                    c.failed = f"{type(exc).__name__}: {exc}"
        if r == 0 or (r + 1) % 10 == 0:
            say(f"  round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)")


def _value_checker(a: np.ndarray) -> Callable[[Case, Any], None]:
    """Every sum must agree with a float64 sum within a float32 pairwise-summation bound."""
    exact = abs_mass = 0.0
    for lo, hi in _parts(a.size, max(1, a.size // (1 << 22))):
        exact += float(np.sum(a[lo:hi], dtype=np.float64))
        abs_mass += float(np.sum(np.abs(a[lo:hi]), dtype=np.float64))
    bound = 1e-5 * abs_mass  # ~log2(n) * float32 epsilon * sum|x|, with a wide margin

    def check(case: Case, value: Any) -> None:
        if case.acc and case.checked and value is not None and abs(float(value) - exact) > bound:
            case.notes.append(f"value {float(value)!r} is off the float64 sum {exact!r} by more than {bound:.3g}")

    return check


# -- shmhpc, here and as a command -------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    """Children import the shmhpc this process imported (``-m`` puts the working directory first)."""
    import shmhpc

    home = str(Path(shmhpc.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")]))}


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    topo: Any
    say: Callable[[str], None]
    skipped: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=_child_env)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"case": what, "why": why})
        self.say(f"  skipped {what}: {why}")

    def spec(self, warm: bool = True, **fields: Any) -> dict:
        """A job spec: 2 workers, one chunk each, no verification, unless ``fields`` say otherwise.

        Warm pools get ``--engine``; cold runs keep the spec's default (``auto``), as a user's would.
        """
        raw = {"name": "peers", "workers": self.args.workers, "chunks_per_worker": 1, "verify": False}
        if warm and self.args.engine != "default":
            raw["engine"] = self.args.engine
        return {**raw, **fields}

    def prepared(self, raw: dict) -> Any:
        return prepare(spec_from_dict(raw, source="peers"), self.topo, spec_dir=self.tmp)

    def run_cli(self, spec: dict, tag: str) -> tuple[float, dict]:
        """``python -m shmhpc run`` as a user runs it: (process wall seconds, its report)."""
        path, report = self.tmp / f"{tag}.yaml", self.tmp / f"{tag}.report.json"
        path.write_text(json.dumps(spec))  # JSON is YAML
        cmd = [sys.executable, "-m", "shmhpc", "run", str(path), "-q", "--force", "--report", str(report)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=900, cwd=self.tmp, env=self.env)
        return time.perf_counter() - t0, json.loads(report.read_text())


@contextlib.contextmanager
def warm_session(ctx: Ctx, raw: dict) -> Iterator[tuple[Run, RunSession]]:
    """A started, loaded pool; yields its ``run`` (one round, timed in the launcher, and its value)."""
    prep = ctx.prepared(raw)
    with RunSession(prep) as session:
        session.start()
        session.load()

        def run(r: int) -> tuple[float, Any]:
            wall, replies = session.round(r + 1)
            return wall, prep.kernel.finalize(session.combine(replies))

        yield run, session


def _phases(rep: dict) -> dict:
    t, job = rep.get("timings", {}), rep.get("job", {})
    keys = ("pool_start_s", "load_s", "teardown_s", "total_s")
    return {
        **{k: t.get(k) for k in keys},
        **{k: job.get(k) for k in ("start_method", "engine", "huge_pages")},
        "segment_dir": (rep.get("segment") or {}).get("dir"),
    }


# -- likwid-bench and the read ceiling ---------------------------------------------------------------
def _likwid_case(ctx: Ctx, group: str, nbytes: int) -> Case | None:
    exe = shutil.which("likwid-bench")
    if exe is None:
        ctx.skip(f"{group} likwid-bench", "likwid-bench is not installed (Debian/Ubuntu: apt-get install likwid)")
        return None
    # Iterations per thread so one call streams ~6 GB (~0.25 s at 25 GB/s) besides its own setup.
    iters = max(4, int(6e9 / nbytes) // (8 if ctx.args.quick else 1))
    cmd = [exe, "-t", "sum_sp_avx", "-w", f"S0:{nbytes // 1000}kB:{ctx.args.workers}", "-i", str(iters)]

    def run(_r: int) -> tuple[float, Any]:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        m = re.search(r"^MByte/s:\s*([0-9.]+)", out.stdout, re.MULTILINE)
        if out.returncode != 0 or not m:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"likwid-bench exit {out.returncode}: {tail[0][:200]}")
        return nbytes / (float(m.group(1)) * MB), None

    try:
        run(-1)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        ctx.skip(f"{group} likwid-bench", str(exc))
        return None
    label = f"likwid-bench sum_sp_avx, {ctx.args.workers} threads"
    me = f"{group}/native/shmhpc"
    return Case(f"{group}/native/likwid", label, group, "native", nbytes, run, ref=me, every=ctx.args.slow_every)


def read_ceiling(ctx: Ctx) -> dict | None:
    """``shmhpc bench --json --workers N``: the read kernel's best GB/s (run here, or the saved one)."""
    if ctx.args.ceiling == "saved":
        from shmhpc.bench import ceiling_for, load_ceiling

        got = ceiling_for(ctx.args.workers, load_ceiling())
        if got is None:
            ctx.skip("read ceiling", "no saved ceiling for this host (`python -m shmhpc bench --save`)")
        return got and {**got, "source": "saved"}
    cmd = [sys.executable, "-m", "shmhpc", "bench", "--json", "-q", "--workers", str(ctx.args.workers)]
    if ctx.args.quick:
        cmd += ["--size", "64M", "--iterations", "3"]
    ctx.say("read ceiling: " + " ".join(["shmhpc", *cmd[3:]]))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True, cwd=ctx.tmp, env=ctx.env)
        bench = json.loads(out.stdout)
        read = next(r for r in bench["runs"] if r["workers"] == ctx.args.workers)["kernels"]["read"]
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, KeyError, StopIteration) as exc:
        lines = str(getattr(exc, "stderr", None) or exc).strip().splitlines() or [type(exc).__name__]
        ctx.skip("read ceiling", f"`shmhpc bench` failed: {lines[-1][:200]}")
        return None
    return {
        "gbps": read["best_gbps"],
        "median_gbps": read["median_gbps"],
        "workers": ctx.args.workers,
        "array_bytes": bench.get("array_bytes"),
        "source": "measured at the start of this run",
    }


# -- one size: every warm peer on the same data ------------------------------------------------------
def _check_memory(nbytes: int) -> None:
    """Refuse a size whose copies would not fit in MemAvailable (the OOM killer leaves segments behind)."""
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines() if ":" in ln)
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    need = COPIES * nbytes + 1_000_000_000
    if need > available:
        sys.exit(
            f"error: {nbytes / 1e9:g} GB needs ~{need / 1e9:.1f} GB of memory ({COPIES} copies of the data and "
            f"1 GB for the processes), {available / 1e9:.1f} GB is available; pass smaller --sizes"
        )


def warm_cases(ctx: Ctx, stack: contextlib.ExitStack, group: str, n: int) -> tuple[list[Case], np.ndarray]:
    """Set up every warm case for ``n`` float32 elements; returns the cases and the peers' array."""
    global _PRIVATE
    w, nbytes = ctx.args.workers, n * 4
    _check_memory(nbytes)
    data = {"source": "generate", "size": n, "dtype": "float32", "distribution": "normal", "seed": 0}
    raws = {acc: ctx.spec(data=data, accumulate=acc) for acc in ("native", "float64")}
    if nbytes <= 100 * MB and ctx.args.engine != "numpy":  # what a small job gets without the fast engine
        raws.update(
            {f"{acc}-numpy": ctx.spec(data=data, accumulate=acc, engine="numpy") for acc in ("native", "float64")}
        )
    # The peers' private array holds shmhpc's own generated stream (the same values whoever draws
    # them), made before any process forks so the fork pools inherit it copy-on-write.
    from shmhpc.data import fill_rows

    info = ctx.prepared(raws["native"]).data
    a = np.empty(n, dtype=np.float32)
    fill_rows(a, info, 0, info.n_rows)
    _PRIVATE = a
    parts = _parts(n, w)
    fork = mp.get_context("fork")
    pool = stack.enter_context(fork.Pool(w))
    stack.callback(pool.join)
    stack.callback(pool.close)
    # The seed notebook: its own SharedMemory holding a copy; tasks attach by name per chunk.
    seed_shm = SharedMemory(create=True, size=nbytes)
    stack.callback(seed_shm.unlink)
    stack.callback(seed_shm.close)
    np.ndarray((n,), np.float32, buffer=seed_shm.buf)[:] = a
    seed_ex = stack.enter_context(ProcessPoolExecutor(w, mp_context=fork))
    threads = stack.enter_context(ThreadPoolExecutor(w))
    sessions = {acc: stack.enter_context(warm_session(ctx, raw)) for acc, raw in raws.items()}
    shm_view = stack.enter_context(sessions["native"][1].array())  # the view closes before its session
    if not np.array_equal(shm_view[::9973], a[::9973]):
        raise RuntimeError("the peers' array differs from shmhpc's generated one")
    exprs = _dask_exprs(ctx, group, a, parts)
    with_joblib = _importable(ctx, group, "joblib", "pip install joblib")

    cases: list[Case] = []

    def add(acc: str, name: str, label: str, run: Run, **kw: Any) -> None:
        kw.setdefault("ref", f"{group}/{acc}/shmhpc")
        cases.append(Case(f"{group}/{acc}/{name}", label, group, acc, nbytes, run, **kw))

    slow = ctx.args.slow_every if nbytes > 500 * MB else 1
    for acc in ("native", "float64"):
        dt = _dtype(acc)
        label = "shmhpc warm" + (f", engine {ctx.args.engine}" if ctx.args.engine != "default" else "")
        add(acc, "shmhpc", label, sessions[acc][0], ref=f"{group}/{acc}/np.sum", shmhpc=True)
        if f"{acc}-numpy" in sessions:
            numpy_run = sessions[f"{acc}-numpy"][0]
            add(acc, "shmhpc-numpy", "shmhpc warm, engine numpy", numpy_run, ref=f"{group}/{acc}/np.sum", shmhpc=True)
        add(acc, "np.sum", "np.sum(a)", timing(np.sum, a, dtype=dt))
        if acc == "native":
            add(acc, "np.sum-shm", "np.sum on shmhpc's segment", timing(np.sum, shm_view))
        add(acc, "threads", f"ThreadPoolExecutor({w})", timing(_threads_sum, threads, a, parts, dt))
        add(acc, "mp.Pool", f"multiprocessing.Pool({w}), fork", timing(_pool_sum, pool, parts, dt))
        seed = timing(_seed_sum, seed_ex, seed_shm.name, n, _parts(n, SEED_CHUNKS), dt)
        add(acc, "seed", f"seed: SharedMemory + ProcessPool({w}), {SEED_CHUNKS} chunks", seed)
        if with_joblib:
            add(acc, "joblib", f"joblib loky({w}), auto-memmap", timing(_joblib_sum, w, a, parts, dt), every=slow)
        if exprs:
            add(acc, "dask", f"dask.array threads({w})", timing(exprs[acc].compute, scheduler="threads", num_workers=w))
    lk = _likwid_case(ctx, group, nbytes)
    return cases + ([lk] if lk else []), a


def _importable(ctx: Ctx, group: str, module: str, how: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        ctx.skip(f"{group} {module}", f"{module} is not importable ({how})")
        return False
    return True


def _dask_exprs(ctx: Ctx, group: str, a: np.ndarray, parts: Parts) -> dict[str, Any]:
    """``da.from_array(a).sum()`` per accumulation, built once (its graph and the array's token)."""
    if not _importable(ctx, group, "dask.array", "pip install 'dask[array]'"):
        return {}
    import dask.array as da

    x = da.from_array(a, chunks=(parts[0][1] - parts[0][0],))
    return {acc: x.sum(dtype=_dtype(acc)) for acc in ("native", "float64")}


# -- the smallest size only: cold processes, phases, kernels, dispatch -------------------------------
def small_only_cases(ctx: Ctx, stack: contextlib.ExitStack, group: str, a: np.ndarray) -> list[Case]:
    args, w, n = ctx.args, ctx.args.workers, a.size
    every = _every(args.rounds, 10)
    reports: dict[str, list[dict]] = {"cold": [], "npy": []}
    ctx.extras["reports"] = reports
    cases: list[Case] = []

    def add(key: str, label: str, run: Run, acc: str = "", nbytes: int = 0, grp: str = group, **kw: Any) -> None:
        cases.append(Case(key, label, grp, acc, nbytes, run, **kw))

    # Cold: whole processes, interpreter start included.
    gen = {"source": "generate", "size": n, "dtype": "float32", "distribution": "normal", "seed": 0}
    cold_spec = ctx.spec(False, name="cold", data=gen, accumulate="native", repeats=1, warmup=0)

    def shmhpc_cold(_r: int) -> tuple[float, Any]:
        wall, rep = ctx.run_cli(cold_spec, "cold")
        reports["cold"].append(_phases(rep))
        return wall, rep["result"]["value"]

    seed_cmd = [sys.executable, "-c", SEED_SCRIPT, str(n), str(w), str(SEED_CHUNKS)]

    def seed_cold(_r: int) -> tuple[float, Any]:
        wall, out = _timed(subprocess.run, seed_cmd, check=True, capture_output=True, text=True, timeout=900)
        return wall, float(out.stdout.split()[-1])

    me, seed = f"{group}/native/shmhpc-cold", f"{group}/native/seed-cold"
    add(me, "shmhpc cold: python -m shmhpc run", shmhpc_cold, "native", every=every, ref=seed, shmhpc=True)
    # The seed script draws its own data (default_rng(0)), so its value is not checked.
    add(seed, "seed cold: whole script", seed_cold, "native", every=every, ref=me, checked=False)

    # .npy load, page-cache hot: the run report's load phase.
    npy = ctx.tmp / "small.npy"
    np.save(npy, a)
    np.load(npy, mmap_mode="r").sum()  # read it once: page-cache hot
    npy_spec = ctx.spec(
        False, name="npy", data={"source": "npy", "path": str(npy)}, accumulate="native", repeats=1, warmup=0
    )

    def npy_load(_r: int) -> tuple[float, Any]:
        _, rep = ctx.run_cli(npy_spec, "npy")
        reports["npy"].append(_phases(rep))
        return rep["timings"]["load_s"], rep["result"]["value"]

    add(f"{group}/npy-load", "load phase: .npy (page cache)", npy_load, nbytes=a.nbytes, every=every)
    # generate's load phase comes from the cold runs' reports; the RNG alone, split over processes:
    pool = stack.enter_context(mp.get_context("fork").Pool(w))
    stack.callback(pool.join)
    stack.callback(pool.close)
    rng_parts = [(hi - lo, 1000 + i) for i, (lo, hi) in enumerate(_parts(n, w))]
    rng_label = f"RNG alone: standard_normal float32 in {w} processes"
    add(f"{group}/rng", rng_label, timing(pool.starmap, _rng_draw, rng_parts), nbytes=a.nbytes)

    run_kw = {"check": True, "capture_output": True, "timeout": 120, "cwd": ctx.tmp, "env": ctx.env}
    add("python -c pass", "python -c pass", timing(subprocess.run, [sys.executable, "-c", "pass"], **run_kw))
    cli = [sys.executable, "-c", "import shmhpc.cli"]
    add("import shmhpc.cli", "python -c 'import shmhpc.cli'", timing(subprocess.run, cli, **run_kw))

    # A compute-bound kernel at 1 and N workers; an empty one at N (a round's dispatch cost). The
    # same kernel in the plain fork pool shows how far this machine's cores scale at all (vCPUs
    # that share a physical core, or a neighbour's load, cap it whatever the pool).
    kernels = ctx.tmp / "peer_kernels.py"
    kernels.write_text(KERNEL_MODULE.format(passes=2 if args.quick else 8))
    cn = 1_000_000 if args.quick else 4_000_000
    cdata = {"source": "generate", "size": cn, "dtype": "float32", "seed": 1}
    for k in (1, w):
        run, _ = stack.enter_context(
            warm_session(ctx, ctx.spec(False, data=cdata, kernel="peer_kernels:sines", workers=k))
        )
        label, ref = f"compute-bound kernel, {k} worker{'s' * (k > 1)}", "compute/1w" if k > 1 else None
        add(f"compute/{k}w", label, run, grp="compute", ref=ref, shmhpc=True)
        plain = timing(pool.starmap, _compute_part, [(str(kernels), lo, hi) for lo, hi in _parts(cn, k)])
        ref = "compute/plain-1" if k > 1 else None
        add(
            f"compute/plain-{k}",
            f"same kernel, plain fork Pool, {k} task{'s' * (k > 1)}",
            plain,
            grp="compute",
            ref=ref,
            shmhpc=True,
        )
    tiny = {"source": "generate", "size": 1 << 18, "dtype": "float32"}
    _, session = stack.enter_context(warm_session(ctx, ctx.spec(False, data=tiny, kernel="peer_kernels:empty")))

    def rounds(r: int, batch: int = 50) -> tuple[float, Any]:
        # A job's repeats follow one another: time a batch of back-to-back rounds, per round. (One
        # round between other cases also pays for waking idle workers: on a VM each wake-up of a
        # halted vCPU costs tens to hundreds of microseconds, which no pool design avoids.)
        t0 = time.perf_counter()
        for i in range(batch):
            session.round(r * batch + i + 1)
        return (time.perf_counter() - t0) / batch, None

    add("dispatch", f"empty kernel, {w} workers, back-to-back rounds", rounds, grp="dispatch")
    add(
        "dispatch/idle",
        f"empty kernel, {w} workers, one round between other cases",
        _one_round(session),
        grp="dispatch",
    )
    return cases


def _one_round(session: RunSession) -> Callable[[int], tuple[float, Any]]:
    def run(r: int) -> tuple[float, Any]:
        return session.round(100_000 + r)[0], None

    return run


# -- peak memory of a job on the largest .npy --------------------------------------------------------
def peak_memory(ctx: Ctx, a: np.ndarray) -> dict | None:
    """Run a default ``.npy`` job and sample its processes every 50 ms, counting shared pages once.

    A sample is the pages the segment holds (its file's allocated blocks, mapped or not) plus, over
    the launcher and every descendant, the PSS of every other mapping: a page shared by k processes
    counts 1/k in each (shared libraries, the interpreter), so once in the sum. The segment is left
    out of PSS and USS alike: smaps counts a shared page that only one worker touched as private.
    """
    import psutil

    from shmhpc.shm import default_shm_dir

    npy = ctx.tmp / "peak.npy"
    np.save(npy, a)
    np.load(npy, mmap_mode="r").sum()  # page-cache hot
    spec = ctx.spec(False, name="peak", data={"source": "npy", "path": str(npy)}, accumulate="native", verify=True)
    spec.update(repeats=3)
    del spec["chunks_per_worker"]
    path, report = ctx.tmp / "peak.yaml", ctx.tmp / "peak.report.json"
    path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "shmhpc", "run", str(path), "-q", "--force", "--report", str(report)]
    # The segment sits in the shared-memory folder or, with huge pages, on a hugetlbfs mount.
    mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines() if ln.split()[2:3] == ["hugetlbfs"]]
    seg_dirs = [Path(default_shm_dir()), *map(Path, mounts)]
    peak: dict[str, Any] = {"bytes": 0, "segment_bytes": 0, "others_pss_bytes": 0, "samples": 0, "processes_max": 0}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ctx.tmp, env=ctx.env)
    root = psutil.Process(proc.pid)
    try:
        while proc.poll() is None:
            seg = 0
            for d in seg_dirs:
                with contextlib.suppress(OSError):
                    seg += sum(f.stat().st_blocks * 512 for f in d.glob(f"shmhpc-*-p{proc.pid}-*"))
            procs = [root]
            with contextlib.suppress(psutil.Error):
                procs += root.children(recursive=True)
            others = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    others += sum(m.pss for m in p.memory_maps(grouped=True) if "/shmhpc-" not in m.path)
            if seg + others > peak["bytes"]:
                peak.update(bytes=seg + others, segment_bytes=seg, others_pss_bytes=others)
            peak["samples"] += 1
            peak["processes_max"] = max(peak["processes_max"], len(procs))
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if proc.returncode != 0:
        ctx.skip("peak memory", f"the .npy job failed (exit {proc.returncode}): {err.decode()[-300:]}")
        return None
    rep = json.loads(report.read_text())
    peak.update(
        array_bytes=a.nbytes,
        launcher_peak_rss_bytes=(rep.get("memory") or {}).get("launcher_peak_rss_bytes_before_verify"),
        load_gbps=a.nbytes / rep["timings"]["load_s"] / 1e9,
        phases=_phases(rep),
    )
    return peak


# -- results -----------------------------------------------------------------------------------------
HEADERS = ["size", "accumulate", "case", "median", "n", "GB/s", "speed-up", "reference"]
LEGEND = (
    "speed-up: on a peer's row, shmhpc warm's over that peer (above 1: shmhpc is faster); on a shmhpc row "
    "or a scaling row, that row's over the case named"
)
TARGET_HEADERS = ["target", "measured", "result", "note"]


def table_rows(cases: list[Case]) -> list[list[str]]:
    """One row per case; the speed-up is shmhpc's over its reference, or over this peer."""
    by_key = {c.key: c for c in cases}
    rows = []
    for c in cases:
        med, ref = c.median(), by_key.get(c.ref or "")
        rmed = ref.median() if ref else None
        x = None if not (med and rmed) else rmed / med if c.shmhpc else med / rmed
        rows.append(
            [
                c.group,
                c.acc,
                c.label,
                "failed: " + c.failed[:60] if c.failed else _ms(med) if med is not None else "-",
                str(len(c.samples)),
                f"{c.nbytes / med / 1e9:.1f}" if med and c.nbytes else "",
                f"{x:.2f}×" if x is not None else "",
                ref.label if ref and x is not None else "",
            ]
        )
    return rows


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 0.01 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.3f} s"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(wd) for c, wd in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * wd for wd in widths]), *map(line, rows)])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])


def targets(cases: list[Case], groups: list[str], ceiling: dict | None, extras: dict, workers: int) -> list[dict]:
    """Each target of the issue: the measured figure, the limit and pass/fail (None when not measured)."""
    by = {c.key: c for c in cases}
    small, large = groups[0], groups[-1]
    out: list[dict] = []

    def med(key: str) -> float | None:
        return by[key].median() if key in by else None

    def ratio(num: str, den: str) -> float | None:
        a, b = med(num), med(den)
        return a / b if a and b else None

    def add(name: str, value: float | None, limit: float, at_least: bool, unit: str, note: str = "") -> None:
        ok = None if value is None else value >= limit if at_least else value <= limit
        note = note if value is not None else note or "not measured (see skipped and notes)"
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "pass": ok, "note": note})

    peers = ("np.sum", "threads", "mp.Pool", "joblib", "dask", "seed")
    mine = [c for c in cases if c.group == small and c.acc == "native" and c.median()]
    best = min(
        (c for c in mine if c.key.rsplit("/", 1)[1] in peers), key=lambda c: c.median() or math.inf, default=None
    )
    s_nat, s_f64, l_nat = f"{small}/native/shmhpc", f"{small}/float64/shmhpc", f"{large}/native/shmhpc"
    note = f"best peer: {best.label}" if best else ""
    add(f"{small} warm native ≥ 1.0× the best peer", ratio(best.key, s_nat) if best else None, 1.0, True, "×", note)
    add(f"{small} warm native ≥ 1.5× np.sum", ratio(f"{small}/native/np.sum", s_nat), 1.5, True, "×")
    add(f"{small} warm float64 ≥ 1.5× np.sum (native)", ratio(f"{small}/native/np.sum", s_f64), 1.5, True, "×")
    name = f"{large} warm native ≥ 0.8× likwid-bench sum_sp_avx ({workers} threads)"
    add(name, ratio(f"{large}/native/likwid", l_nat), 0.8, True, "×")
    m = med(l_nat)
    gbps = by[l_nat].nbytes / m / 1e9 if m else None
    vs = gbps / ceiling["gbps"] if gbps and ceiling else None
    note = f"shmhpc {gbps:.1f} GB/s (median), ceiling {ceiling['gbps']:.1f} GB/s (best)" if vs and ceiling else ""
    add(f"{large} warm native ≥ 0.9× read ceiling", vs, 0.9, True, "×", note)
    add(f"{large} warm float64 ≥ 0.9× shmhpc native", ratio(l_nat, f"{large}/float64/shmhpc"), 0.9, True, "×")
    cold = ratio(f"{small}/native/seed-cold", f"{small}/native/shmhpc-cold")
    add(f"cold {small} ≥ 2× faster than the seed script (whole process)", cold, 2.0, True, "×")
    imp, bare = med("import shmhpc.cli"), med("python -c pass")
    imp_ms = (imp - bare) * 1e3 if imp is not None and bare is not None else None
    add("import shmhpc.cli ≤ 150 ms", imp_ms, 150, False, "ms", "process wall minus `python -c pass`")
    reports = extras.get("reports", {})
    starts = [p["pool_start_s"] for p in reports.get("cold", []) + reports.get("npy", []) if p["pool_start_s"]]
    start_ms = statistics.median(starts) * 1e3 if starts else None
    note = "median of the cold and .npy runs' reports (timings.pool_start_s)"
    add(f"pool start ≤ 60 ms ({workers} workers)", start_ms, 60, False, "ms", note)
    npy = med(f"{small}/npy-load")
    add(
        f"npy load ≥ 1.5 GB/s ({small})", by[f"{small}/npy-load"].nbytes / npy / 1e9 if npy else None, 1.5, True, "GB/s"
    )
    gens, rng = [p["load_s"] for p in reports.get("cold", []) if p["load_s"]], med(f"{small}/rng")
    note = "the cold runs' load phase over standard_normal in as many processes"
    add("generate ≤ 1.3× RNG alone", statistics.median(gens) / rng if gens and rng else None, 1.3, False, "×", note)
    plain = ratio("compute/plain-1", f"compute/plain-{workers}")
    note = f"the same kernel in a plain fork Pool: {plain:.2f}×" if plain else ""
    add(f"compute-bound 1 → {workers} workers ≥ 1.9×", ratio("compute/1w", f"compute/{workers}w"), 1.9, True, "×", note)
    d = med("dispatch")
    add(f"dispatch ≤ 0.2 ms per round ({workers} workers)", d * 1e3 if d else None, 0.2, False, "ms", "empty kernel")
    name, pk = f"peak memory ≤ 1.1 × array + 150 MB ({large} .npy job)", extras.get("peak_memory")
    if pk:
        peak, array = pk["bytes"], pk["array_bytes"]
        note = f"peak {peak / MB:,.0f} MB = {peak / (array + MEM_SLACK_BYTES):.3f}× (array + 150 MB)"
        add(name, peak / (1.1 * array + MEM_SLACK_BYTES), 1.0, False, "× limit", note)
    else:
        add(name, None, 1.0, False, "× limit")
    return out


def target_rows(ts: list[dict]) -> list[list[str]]:
    rows = []
    for t in ts:
        v = "-" if t["value"] is None else f"{t['value']:.3f}" if t["value"] < 10 else f"{t['value']:.1f}"
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        rows.append([t["target"], f"{v} {t['unit']}".strip(), verdict, t["note"]])
    return rows


def machine(ctx: Ctx) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    git_exe = shutil.which("git")

    def git(*a: str) -> str:
        return subprocess.run([git_exe, *a], cwd=ROOT, capture_output=True, text=True).stdout.strip() if git_exe else ""

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("joblib", "dask", "psutil"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    lk = shutil.which("likwid-bench")
    if lk:
        out = subprocess.run([lk, "-v"], capture_output=True, text=True).stdout
        versions["likwid"] = (re.findall(r"Version (\S+)", out) or ["?"])[0]
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_at_start": os.getloadavg(),
        "hostname": platform.node(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cores": len(ctx.topo.usable_cores()),
        "llc_bytes": ctx.topo.llc_bytes(),
        "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "versions": versions,
        "shmhpc_commit": git("rev-parse", "HEAD"),
        "shmhpc_tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _size(text: str) -> int:
    """``80MB``, ``2GB``, ``512kB`` (decimal) or ``1GiB`` → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 80MB or 2GB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def _sizes(text: str) -> list[int]:
    return sorted(_size(s) for s in text.split(","))


def report(info: dict, args: argparse.Namespace, ceiling: dict | None, cases: list[Case], ctx: Ctx, ts: list) -> None:
    """Print the tables; write ``--md`` and ``--json``."""
    groups = list(dict.fromkeys(c.group for c in cases))
    order = {"native": 0, "float64": 1}
    rows = table_rows(sorted(cases, key=lambda c: (groups.index(c.group), order.get(c.acc, 2))))
    trows = target_rows(ts)
    head = (
        f"shmhpc vs peers on {info['cpu_model']} ({info['cpus_usable']} CPUs), {args.workers} workers, "
        f"{args.rounds} interleaved rounds, medians; python {info['versions']['python']}, "
        f"numpy {info['versions']['numpy']}, shmhpc {info['shmhpc_commit'][:10]}"
        f"{' (modified tree)' if info['shmhpc_tree_dirty'] else ''}; {info['measured_at']}, load average "
        f"{info['loadavg_at_start'][0]:.2f} at the start, {info['loadavg_at_end'][0]:.2f} at the end"
    )
    if ceiling:
        head += f"\nread ceiling (shmhpc bench, {ceiling['workers']} workers): {ceiling['gbps']:.1f} GB/s best"
    lines = [
        f"note: {c.label} ({c.group} {c.acc}): {'; '.join(c.notes) or c.failed}" for c in cases if c.notes or c.failed
    ]
    lines += [f"skipped: {s['case']}: {s['why']}" for s in ctx.skipped]
    print(head)
    print(text_table(HEADERS, rows))
    print(LEGEND)
    print("\ntargets" + (" (--quick: sizes too small to judge)" if args.quick else ""))
    print(text_table(TARGET_HEADERS, trows))
    print("\n".join(lines))
    if args.md:
        md = [head.replace("\n", "  \n"), "", md_table(HEADERS, rows), "", LEGEND + ".", "", "Targets:", ""]
        md += [md_table(TARGET_HEADERS, trows), "", *(f"- {ln}" for ln in lines)]
        Path(args.md).write_text("\n".join(md).rstrip() + "\n")
    if args.json:
        fields = ("label", "group", "acc", "nbytes", "every", "ref", "samples", "notes", "failed")
        result = {
            "kind": "shmhpc-peers",
            "version": 1,
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "md")},
            "ceiling": ceiling,
            "cases": {c.key: {**{f: getattr(c, f) for f in fields}, "median_s": c.median()} for c in cases},
            "extras": ctx.extras,
            "targets": ts,
            "skipped": ctx.skipped,
        }
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=_sizes, help="comma-separated sizes of float32 data (default 80MB,2GB)")
    ap.add_argument("--workers", type=int, default=2, help="workers, threads and processes of every peer (default 2)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per size (default 30, --quick 4)")
    ap.add_argument("--quick", action="store_true", help="8 MB and 32 MB, 4 rounds: a smoke test")
    ap.add_argument(
        "--engine",
        default="numba" if importlib.util.find_spec("numba") else "default",
        help="the engine of shmhpc's warm pools: numba (default when installed; a warm pool has paid its start),"
        " numpy, auto, or 'default' (the spec's); cold runs always keep the spec's default; an 80 MB-or-smaller"
        " size also gets an `engine: numpy` warm row",
    )
    ap.add_argument("--ceiling", choices=("run", "saved"), default="run", help="run `shmhpc bench`, or the saved one")
    ap.add_argument("--json", metavar="PATH", help="write every sample, the targets and the machine as JSON")
    ap.add_argument("--md", metavar="PATH", help="write the tables as Markdown")
    args = ap.parse_args()
    args.rounds = args.rounds or (4 if args.quick else 30)
    args.slow_every = _every(args.rounds, 2 if args.quick else 6)
    sizes = args.sizes or _sizes("8MB,32MB" if args.quick else "80MB,2GB")
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="shmhpc-peers-") as tmp:
        ctx = Ctx(args, Path(tmp), read_topology(), say)
        info = machine(ctx)
        ceiling = read_ceiling(ctx)
        cases: list[Case] = []
        groups: list[str] = []
        for i, nbytes in enumerate(sizes):
            n = nbytes // 4
            group = f"{nbytes / 1e9:g} GB" if nbytes >= 1e9 else f"{nbytes / MB:g} MB"
            groups.append(group)
            say(f"== {group}: {n:,} float32, {args.workers} workers, {args.rounds} rounds")
            with contextlib.ExitStack() as stack:
                mine, a = warm_cases(ctx, stack, group, n)
                if i == 0:
                    mine += small_only_cases(ctx, stack, group, a)
                interleave(mine, args.rounds, _value_checker(a), say)
                for c in mine:  # drop the closures' views before their segments are unmapped
                    c.run = _spent
            cases += mine
        say("peak memory of a .npy job")
        ctx.extras["peak_memory"] = peak_memory(ctx, a)
        del a
    info["loadavg_at_end"] = os.getloadavg()
    report(info, args, ceiling, cases, ctx, targets(cases, groups, ceiling, ctx.extras, args.workers))


if __name__ == "__main__":
    main()
