"""CPU lists in the kernel's ``0-3,8`` notation, in and out.

The same notation is used by ``/sys/devices/system/cpu/online``,
``node*/cpulist``, ``cpuset.cpus.effective`` and ``taskset -c``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["format_cpulist", "parse_cpulist", "parse_cpumask"]

# Larger than any kernel's NR_CPUS (8192 on x86 MAXSMP): a typo such as
# ``0-99999999999`` is refused instead of building a set of 10**11 ints.
_MAX_CPU_ID = 65535


_Bad = Callable[[str], ValueError]  # builds the error for one part, given why it is bad


def parse_cpulist(text: str) -> list[int]:
    """Parse ``"0-3,8,10-14:2"`` into a sorted list of unique CPU ids.

    Accepted parts, separated by commas (whitespace and a trailing newline are ignored):

    * ``N`` -- one CPU;
    * ``A-B`` -- CPUs ``A`` to ``B`` inclusive;
    * ``A-B:S`` -- every ``S``-th CPU from ``A`` to ``B`` (``taskset -c`` stride form);
    * ``A-B:U/G`` -- the first ``U`` CPUs of every group of ``G`` from ``A`` to ``B``
      (the kernel's ``bitmap_parselist`` group form, as in ``isolcpus=``).

    The empty string (or only whitespace) is the empty list.

    Raises
    ------
    ValueError
        On malformed input; the message quotes the whole list and the offending part.
        Empty parts (``"1,,2"``, ``"1,"``), reversed ranges (``"3-1"``), negative or
        non-ASCII numbers, zero strides and ids above 65535 are all refused.
    """
    cpus: set[int] = set()
    if not text.strip():
        return []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"bad CPU list {text.strip()!r}: empty part between commas")
        cpus.update(_parse_part(part, text.strip()))
    return sorted(cpus)


def _parse_part(part: str, whole: str) -> range | list[int]:
    def bad(why: str) -> ValueError:
        return ValueError(f"bad CPU list {whole!r}: part {part!r} {why}")

    span, colon, step = part.partition(":")
    if "-" not in span:
        if colon:
            raise bad("has a stride but no range (write A-B:S)")
        return [_cpu_id(span, bad)]
    lo_s, _, hi_s = span.partition("-")
    lo, hi = _cpu_id(lo_s, bad), _cpu_id(hi_s, bad)
    if hi < lo:
        raise bad(f"is a reversed range ({lo} > {hi})")
    if not colon:
        return range(lo, hi + 1)
    used_s, slash, group_s = step.partition("/")
    if not slash:
        stride = _count(used_s, bad)
        return range(lo, hi + 1, stride)
    used, group = _count(used_s, bad), _count(group_s, bad)
    if used > group:
        raise bad(f"uses {used} CPUs of each group of {group}")
    return [c for start in range(lo, hi + 1, group) for c in range(start, min(start + used, hi + 1))]


def _digits(s: str, bad: _Bad) -> int:
    s = s.strip()
    # isdigit() alone accepts "²" and "١"; CPU ids are ASCII decimal.
    if not (s.isascii() and s.isdigit()):
        raise bad(f"has {s!r}, which is not a non-negative integer")
    return int(s)


def _cpu_id(s: str, bad: _Bad) -> int:
    n = _digits(s, bad)
    if n > _MAX_CPU_ID:
        raise bad(f"has CPU {n}, above the largest supported id {_MAX_CPU_ID}")
    return n


def _count(s: str, bad: _Bad) -> int:
    n = _digits(s, bad)
    if n == 0:
        raise bad("has a stride or group size of 0")
    return n


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids as ``"0-3,8"`` (sorted, duplicates dropped); ``""`` when empty.

    Raises ``ValueError`` for a negative id, which the notation cannot express.
    """
    ids = sorted(set(cpus))
    if ids and ids[0] < 0:
        raise ValueError(f"CPU ids must be non-negative, got {ids[0]}")
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def parse_cpumask(text: str) -> list[int]:
    """Parse the kernel's hex CPU mask (``node*/cpumap``: ``"00000000,0000f00f"``, 32-bit words, most
    significant first) into a sorted list of CPU ids.

    Raises
    ------
    ValueError
        When a word is not hexadecimal; the message quotes the whole mask.
    """
    words = text.strip().split(",")
    if not all(words) or not all(all(ch in "0123456789abcdefABCDEF" for ch in w) for w in words):
        raise ValueError(f"{text.strip()!r} is not a hex CPU mask (32-bit words separated by commas)")
    mask = int("".join(words), 16)
    return [i for i in range(mask.bit_length()) if mask >> i & 1]
