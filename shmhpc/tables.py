"""Human output shared by summaries, compare and sweep: durations, plain-text and Markdown tables."""

from __future__ import annotations

from typing import Any

__all__ = ["time_unit", "format_seconds", "text_table", "markdown_table"]


def time_unit(seconds: float) -> tuple[float, str]:
    """The factor and unit that show ``seconds`` readably: µs below 1 ms, ms below 1 s, else s."""
    if seconds < 1e-3:
        return 1e6, "µs"
    if seconds < 1:
        return 1e3, "ms"
    return 1.0, "s"


def format_seconds(seconds: float | None) -> str:
    """A duration in its ``time_unit`` with two decimals: ``412.00 µs``, ``7.48 ms``, ``1.25 s``; ``-`` for None."""
    if seconds is None:
        return "-"
    factor, unit = time_unit(seconds)
    return f"{seconds * factor:.2f} {unit}"


def text_table(headers: list[str], rows: list[list[str]], indent: str = "") -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths[:-1])] + [str(r[-1])]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
