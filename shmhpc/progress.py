"""Progress for long runs: a live status line on a terminal, plain lines in batch logs.

Progress goes to stderr so stdout stays for results. On a terminal the line
``repeats [####      ] 4/10  repeat 3/9: 4.21 ms`` is redrawn in place (``\r`` and
erase-to-end-of-line); without one (a Slurm batch log) every event is one
timestamped line, so logs stay greppable.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["Progress", "NullProgress", "make_progress"]


class NullProgress:
    def phase(self, text: str) -> None: ...

    def phase_done(self, text: str, seconds: float) -> None: ...

    def start_rounds(self, total: int, warmup: int) -> None: ...

    def round_done(self, index: int, seconds: float) -> None: ...

    def close(self) -> None: ...


class Progress(NullProgress):
    """Phases and rounds; ``tty`` picks the live bar, else one plain line per event."""

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._live = False
        self._total = 0
        self._warmup = 0
        self._t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        if self._live:  # keep the live line below the message
            self.stream.write("\r\x1b[K")
        print(text, file=self.stream, flush=True)
        self._live = False

    def phase(self, text: str) -> None:
        if self.tty:
            self._line(f"{text}…")
        else:
            self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {text}")

    def phase_done(self, text: str, seconds: float) -> None:
        self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {text}: {seconds:.3f} s")

    def start_rounds(self, total: int, warmup: int) -> None:
        self._total, self._warmup = total, warmup
        if self.tty:
            self._draw(0, "")

    def round_done(self, index: int, seconds: float) -> None:
        kind = "warmup" if index < self._warmup else "repeat"
        i = index + 1 if index < self._warmup else index - self._warmup + 1
        n = self._warmup if index < self._warmup else self._total - self._warmup
        if self.tty:
            self._draw(index + 1, f"{kind} {i}/{n}: {seconds * 1e3:.2f} ms")
        else:
            self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {kind} {i}/{n}: {seconds * 1e3:.3f} ms")

    def _draw(self, done: int, status: str) -> None:
        width = 20
        filled = width * done // max(1, self._total)
        bar = "#" * filled + " " * (width - filled)
        self.stream.write(f"\rrepeats [{bar}] {done}/{self._total}  {status}\x1b[K")
        self.stream.flush()
        self._live = True

    def close(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._live = False


def make_progress(quiet: bool = False, stream: IO[str] | None = None) -> NullProgress:
    return NullProgress() if quiet else Progress(stream)
