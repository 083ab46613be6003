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

from .tables import format_seconds

__all__ = ["Progress", "NullProgress", "LiveLine", "round_status", "make_progress"]


class LiveLine:
    """One status line redrawn in place on a terminal (``\\r`` + erase to end of line);
    messages are printed above it."""

    WIDTH = 20

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.live = False

    def draw(self, label: str, done: int, total: int, text: str) -> None:
        filled = self.WIDTH * done // max(1, total)
        bar = "#" * filled + " " * (self.WIDTH - filled)
        self.stream.write(f"\r{label} [{bar}] {text}\x1b[K")
        self.stream.flush()
        self.live = True

    def print(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.live = False
        print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.live = False


def round_status(index: int, total: int, warmup: int) -> tuple[str, int, int]:
    """Round ``index`` of ``total`` (the first ``warmup`` are warm-up) as (kind, i, n): ``repeat 2/5``."""
    if index < warmup:
        return "warmup", index + 1, warmup
    return "repeat", index - warmup + 1, total - warmup


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
        self._line_out = LiveLine(self.stream)
        self._total = 0
        self._warmup = 0
        self._t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        self._line_out.print(text)

    def phase(self, text: str) -> None:
        if self.tty:
            self._line(f"{text}…")
        else:
            self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {text}")

    def phase_done(self, text: str, seconds: float) -> None:
        self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {text}: {format_seconds(seconds)}")

    def start_rounds(self, total: int, warmup: int) -> None:
        self._total, self._warmup = total, warmup
        if self.tty:
            self._draw(0, "")

    def round_done(self, index: int, seconds: float) -> None:
        kind, i, n = round_status(index, self._total, self._warmup)
        if self.tty:
            self._draw(index + 1, f"{kind} {i}/{n}: {format_seconds(seconds)}")
        else:
            self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {kind} {i}/{n}: {format_seconds(seconds)}")

    def _draw(self, done: int, status: str) -> None:
        self._line_out.draw("repeats", done, self._total, f"{done}/{self._total}  {status}")

    def close(self) -> None:
        self._line_out.clear()


def make_progress(quiet: bool = False, stream: IO[str] | None = None) -> NullProgress:
    return NullProgress() if quiet else Progress(stream)
