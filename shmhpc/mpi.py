"""MPI for multi-node runs (``run --mpi``): who we are, when to start MPI, and collectives that cannot hang.

One launcher per node, one MPI rank each. The rank and the job size come from the launcher's environment
*before* MPI starts, because the worker pool is forked first: forking after ``MPI_Init`` upsets some MPI
libraries, so mpi4py is imported with ``rc.initialize = False`` and initialised once the pool runs.

Every collective here is non-blocking and polled (``Iallreduce`` + ``Test``), so a rank keeps hearing its
stop signals while it waits, and gives up after ``timeout_s`` or a few seconds after a stop signal when a
peer never arrives (a rank that was killed): no rank waits for ever in a collective.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from .errors import RunError, RunInterrupted, SpecError

__all__ = ["MpiEnv", "Sync", "detect_env", "init", "node_rows"]

OK, FAILED, INTERRUPTED = 0, 1, 2
# After a stop signal, how long to wait for a peer at an exchange before taking it for gone: every rank got
# the signal (Slurm's warning, scancel), so a live peer arrives within about one round; one that never
# comes was killed (mpirun then SIGTERMs the rest, and SIGKILLs them soon after).
GIVE_UP_MIN_S = 1.0
# SIGTERM/SIGINT/SIGHUP mean the job is being torn down (mpirun after a rank died, scancel, Ctrl-C): SIGKILL may
# follow within a second, so a rank stops waiting for its peers almost at once and writes what it has.
TEARDOWN_WAIT_S = 0.2
_TEARDOWN = {int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP)}


@dataclass(frozen=True)
class MpiEnv:
    rank: int
    size: int
    launcher: str  # e.g. "mpirun (Open MPI)", "srun --mpi=pmix"


def detect_env(environ: dict[str, str] | None = None) -> MpiEnv | None:
    """This process's rank and the job's size, as its MPI launcher set them; None when no launcher did."""
    env = os.environ if environ is None else environ

    def num(name: str) -> int | None:
        try:
            return int(env[name])
        except (KeyError, ValueError):
            return None

    if (r := num("OMPI_COMM_WORLD_RANK")) is not None and (n := num("OMPI_COMM_WORLD_SIZE")) is not None:
        return MpiEnv(r, n, "mpirun (Open MPI)")
    slurm_n = num("SLURM_NTASKS") or num("SLURM_NPROCS")
    if (r := num("PMIX_RANK")) is not None:
        n = num("PMIX_SIZE") or slurm_n
        if n is not None:
            return MpiEnv(r, n, "srun --mpi=pmix" if "SLURM_JOB_ID" in env else "PMIx launcher")
    if (r := num("PMI_RANK")) is not None and (n := num("PMI_SIZE")) is not None:
        return MpiEnv(r, n, "srun --mpi=pmi2" if "SLURM_JOB_ID" in env else "mpiexec (PMI)")
    if (r := num("SLURM_PROCID")) is not None and slurm_n is not None:
        return MpiEnv(r, slurm_n, "srun (no MPI plugin)")
    return None


def node_rows(n_rows: int, size: int, rank: int, align: int = 1) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice of ``n_rows`` global rows: an equal split by node count, its cuts
    rounded to multiples of ``align`` rows (as worker boundaries within a node are) where none goes empty."""
    from .placement import split_rows

    return split_rows(n_rows, size, align)[rank]


def load_mpi() -> Any:
    """mpi4py's ``MPI`` module, not yet initialised. Raises ``SpecError`` naming the fix when it is missing."""
    try:
        import mpi4py
    except ImportError:
        raise SpecError(
            "run --mpi: mpi4py is not installed; pip install 'shmhpc[mpi]' (and an MPI library, e.g. "
            "apt install openmpi-bin)"
        ) from None
    mpi4py.rc.initialize = False  # the pool is forked first: MPI starts after it (MPI.Init below)
    mpi4py.rc.finalize = True
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:  # the wheel found no MPI library to load
        raise SpecError(f"run --mpi: mpi4py cannot load an MPI library ({exc}); apt install openmpi-bin") from None
    return MPI


def init(MPI: Any, env: MpiEnv) -> Any:
    """Start MPI and check that the ranks found each other. Returns ``COMM_WORLD``."""
    if not MPI.Is_initialized():
        MPI.Init()
    comm = MPI.COMM_WORLD
    if comm.Get_size() != env.size or comm.Get_rank() != env.rank:
        raise SpecError(
            f"run --mpi: {env.launcher} started {env.size} tasks, but this one is rank {comm.Get_rank()} of "
            f"{comm.Get_size()} in MPI: each task started as an MPI singleton. Under Slurm use srun --mpi=pmix "
            "(Open MPI 5 has no PMI2); outside it, mpirun -n N"
        )
    return comm


def library(MPI: Any) -> dict[str, Any]:
    import mpi4py

    version = MPI.Get_library_version().strip().splitlines()[0] if MPI.Is_initialized() else None
    return {"library": version, "standard": "{}.{}".format(*MPI.Get_version()), "mpi4py": mpi4py.__version__}


class Sync:
    """Status exchanges between ranks that double as barriers and never hang.

    ``exchange(state)`` contributes this rank's state (OK, FAILED, INTERRUPTED) and returns the worst of all
    ranks'. It polls: stop signals keep counting while it waits (``flag``), and it gives up with
    ``RunError`` after ``timeout_s``, or ``RunInterrupted`` a few seconds after a stop signal if a peer never
    arrives.
    """

    def __init__(self, MPI: Any, comm: Any, flag: Any, timeout_s: float | None) -> None:
        import numpy as np

        self.MPI, self.comm, self.flag, self.timeout_s = MPI, comm, flag, timeout_s
        self._send = np.zeros(1, dtype=np.int32)
        self._recv = np.zeros(1, dtype=np.int32)
        self.longest_round_s = 0.0  # set by the caller: a live peer is at most about one round behind

    def give_up_after_s(self) -> float:
        if self.flag is not None and self.flag.signum in _TEARDOWN:
            return TEARDOWN_WAIT_S
        return max(GIVE_UP_MIN_S, 2 * self.longest_round_s + 0.5)

    def exchange(self, state: int, what: str) -> int:
        self._send[0] = state
        req = self.comm.Iallreduce(self._send, self._recv, op=self.MPI.MAX)
        t0 = time.monotonic()
        stopped_at = None
        spin = 0
        while not req.Test():
            now = time.monotonic()
            if self.flag is not None and self.flag.signum is not None:
                stopped_at = stopped_at or now
                if now - stopped_at > self.give_up_after_s():
                    raise RunInterrupted(self.flag.signum)
            if self.timeout_s is not None and now - t0 > self.timeout_s:
                raise RunError(
                    f"{what}: rank {self.comm.Get_rank()} heard nothing from the other ranks within "
                    f"timeout_s={self.timeout_s:g} (a node died or hangs)"
                )
            spin += 1
            if spin > 1000:  # after a short busy wait (a round's barrier is usually quick), sleep a little
                time.sleep(0.0005)
        return int(self._recv[0])
