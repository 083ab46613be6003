"""One exception root for everything shmhpc raises on purpose.

The CLI maps ``SpecError`` (bad input) to exit 2 and ``RunError`` (a run that
started and failed) to exit 1, printing ``error: <message>`` without a traceback.
"""

from __future__ import annotations

__all__ = ["ShmhpcError", "SpecError", "RunError", "RunInterrupted"]


class ShmhpcError(Exception):
    """Root of every error shmhpc raises deliberately."""

    exit_code = 1


class SpecError(ShmhpcError):
    """Bad input: a job spec, a CLI argument, a data file or a report file.

    Holds one or more one-line messages, each naming the field, the value and
    what is allowed.
    """

    exit_code = 2

    def __init__(self, messages: str | list[str]):
        if isinstance(messages, str):
            messages = [messages]
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class RunError(ShmhpcError):
    """A run that started and failed (a worker died or raised, verification failed).

    ``detail`` holds what does not fit one line (a worker's traceback) for the report.
    """

    exit_code = 1

    def __init__(self, message: str, detail: str | None = None):
        self.detail = detail
        super().__init__(message)


class RunInterrupted(ShmhpcError):
    """The launcher was asked to stop (SIGINT/SIGTERM) between rounds."""

    def __init__(self, signum: int):

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    """``SIGTERM``; real-time signals as ``SIGRTMIN+3`` (the enum names only the first and the last)."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        return f"SIGRTMIN+{signum - rtmin}" if rtmin is not None and signum > rtmin else f"signal {signum}"
