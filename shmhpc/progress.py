"""Progress for long runs: a live bar on a terminal (tqdm), plain lines in batch logs.

Progress goes to stderr so stdout stays for results.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

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
        self._bar: Any = None
        self._total = 0
        self._warmup = 0
        self._t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

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
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="repeats", unit="round", file=self.stream, leave=False)

    def round_done(self, index: int, seconds: float) -> None:
        kind = "warmup" if index < self._warmup else "repeat"
        i = index + 1 if index < self._warmup else index - self._warmup + 1
        n = self._warmup if index < self._warmup else self._total - self._warmup
        if self._bar is not None:
            self._bar.set_postfix_str(f"{kind} {i}/{n}: {seconds * 1e3:.2f} ms")
            self._bar.update(1)
        else:
            self._line(f"[shmhpc {time.perf_counter() - self._t0:7.2f}s] {kind} {i}/{n}: {seconds * 1e3:.3f} ms")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(quiet: bool = False, stream: IO[str] | None = None) -> NullProgress:
    return NullProgress() if quiet else Progress(stream)
