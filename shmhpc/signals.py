"""Stop signals for the launcher: record them, act between units of work, restore handlers after.

SIGINT (Ctrl-C), SIGTERM (``scancel``, the batch system), SIGUSR1 (Slurm's usual ``--signal``
warning before the time limit), SIGHUP (a closed terminal or a dropped SSH session), and every other
catchable signal whose default action would kill the launcher without a report and leave its segment
behind (signal(7): SIGQUIT, SIGUSR2, SIGXCPU from a CPU-time limit, SIGPWR, SIGALRM, SIGVTALRM,
SIGPROF, SIGIO, SIGSTKFLT and the real-time signals) all mean "stop soon, keep what finished".
Not here: SIGKILL/SIGSTOP (cannot be caught), SIGPIPE and SIGXFSZ (Python ignores them, so writes
fail with an error instead), and the fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
SIGSYS, SIGTRAP: raised by the faulting code itself, where a handler cannot resume).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import RunInterrupted

__all__ = ["STOP_SIGNALS", "StopSignals", "blocked"]

_NAMED = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP", "SIGQUIT", "SIGUSR2", "SIGXCPU", "SIGPWR")
_TIMERS_AND_IO = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGSTKFLT")
_REALTIME = (
    range(signal.SIGRTMIN, signal.SIGRTMAX + 1) if hasattr(signal, "SIGRTMIN") and hasattr(signal, "SIGRTMAX") else ()
)
STOP_SIGNALS: tuple[int, ...] = tuple(
    dict.fromkeys(  # SIGIO is SIGPOLL: one entry each
        [int(getattr(signal, n)) for n in _NAMED + _TIMERS_AND_IO if hasattr(signal, n)] + list(_REALTIME)
    )
)


class StopSignals:
    """Context manager that records stop signals instead of dying on them (habit 4: restores handlers).

    ``signum`` is the first signal received, ``count`` how many arrived; the
    caller decides where it is safe to stop (``check``).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._saved: dict[int, Any] = {}
        self._depth = 0  # re-entered by a nested user (a sweep's runs): only the outermost installs

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1

    def __enter__(self) -> StopSignals:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():  # signal.signal: main only
            for s in STOP_SIGNALS:
                self._saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()

    def check(self) -> None:
        """Raise ``RunInterrupted`` if a stop signal has arrived."""
        if self.signum is not None:
            raise RunInterrupted(self.signum)


@contextmanager
def blocked(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Block ``signals`` in this thread for the block, then restore the mask exactly.

    Processes started meanwhile (fork, forkserver, spawn: the mask survives fork and exec) keep them
    blocked for life, so only the launcher hears a stop. That matters under Slurm, whose slurmstepd
    sends scancel's TERM and the time-limit USR1 to *every* process of the step: a forkserver killed
    by one makes multiprocessing report each worker as "exited with status 255". A signal that
    arrives in the block is held, not lost: it reaches the launcher's handler when the mask is restored.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
