"""Thread-count control for BLAS/OpenMP inside workers.

Two layers, because each reaches libraries the other misses
(https://github.com/joblib/threadpoolctl/issues/208):

* environment variables, set *before* a worker process starts — forkserver
  children inherit the server's environment from when it started, and a
  library reads its variable once, at load;
* ``threadpoolctl.threadpool_limits`` inside the worker, which reaches
  libraries already loaded (OpenBLAS limits are process-wide, OpenMP's are
  per thread).

threadpoolctl never sets affinity: pinning is done separately (``pool``).

The launcher itself imports NumPy with one BLAS thread (``import_numpy_single_threaded``), so that
it stays a single-threaded process that can fork its workers safely; the workers then set the
thread counts the spec asks for, through both layers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "THREAD_VARS",
    "thread_env",
    "environment",
    "limit_threads",
    "relevant_env",
    "import_numpy_single_threaded",
]

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# Variables worth recording in a report: thread counts, binding, BLAS core type, Slurm.
_RELEVANT_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "NUMEXPR_", "VECLIB_", "SHMHPC_")


def thread_env(threads: int) -> dict[str, str]:
    """The thread variables every worker gets."""
    return {k: str(threads) for k in THREAD_VARS}


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them exactly."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        os.environ.update(values)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_numpy_single_threaded() -> None:
    """Import NumPy with its BLAS thread pool at one thread, unless the user set that pool's variable.

    OpenBLAS starts its pool's threads when NumPy loads it, and reads its variable only then: a launcher
    that imported NumPy plainly has threads for the rest of its life, and forking a process with threads
    is unsafe (a lock another thread holds stays locked in the child). Each unset variable of
    ``THREAD_VARS`` is ``1`` for the import only; the environment is then as it was, so the report shows
    the user's own, and workers get the spec's values explicitly (``thread_env``) and raise their
    pools with threadpoolctl. Nothing happens once NumPy is imported. Call it in the launcher only.
    """
    if "numpy" in sys.modules:
        return
    with environment({k: "1" for k in THREAD_VARS if k not in os.environ}):
        import numpy  # noqa: F401  # the import is the point: BLAS reads its variables when it loads


def limit_threads(threads: int) -> tuple[Any, list[dict]]:
    """Apply threadpoolctl limits in this process; return (limiter, threadpool_info after).

    Keep the limiter alive for as long as the limits should hold; call
    ``limiter.restore_original_limits()`` to undo them.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    limiter = threadpool_limits(limits=threads)
    info = [
        {
            k: v
            for k, v in pool.items()
            if k in ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer", "architecture")
        }
        for pool in threadpool_info()
    ]
    return limiter, info


def relevant_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The subset of an environment that affects threads, binding or scheduling."""
    env = os.environ if env is None else env
    return {
        k: v
        for k, v in sorted(env.items())
        if k.startswith(_RELEVANT_PREFIXES) or (k.startswith("SLURM_") and not k.startswith("SLURM_CONF"))
    }
