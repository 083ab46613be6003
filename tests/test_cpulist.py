"""The kernel's ``0-3,8`` CPU-list notation: parsing, formatting, and what is refused."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shmhpc.cpulist import format_cpulist, parse_cpulist

# -- round trips -------------------------------------------------------------------------


@given(st.sets(st.integers(min_value=0, max_value=2000)))
def test_format_then_parse_gives_the_sorted_set(cpus: set[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == sorted(cpus)


@given(st.lists(st.integers(min_value=0, max_value=2000)))
def test_format_is_canonical(cpus: list[int]) -> None:
    text = format_cpulist(cpus)
    assert format_cpulist(parse_cpulist(text)) == text
    # Each part is "N" or "A-B" with A < B, parts ascend, and no two parts could merge.
    prev_hi = -2
    for part in text.split(",") if text else []:
        lo_s, _, hi_s = part.partition("-")
        lo, hi = int(lo_s), int(hi_s or lo_s)
        assert lo < hi if hi_s else True
        assert lo > prev_hi + 1
        prev_hi = hi


@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1), st.randoms(use_true_random=False))
def test_parse_accepts_any_order_and_duplicates(cpus: list[int], rnd: random.Random) -> None:
    parts = [str(c) for c in cpus] + [str(c) for c in cpus]
    rnd.shuffle(parts)
    assert parse_cpulist(",".join(parts)) == sorted(set(cpus))


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([], ""),
        ([0], "0"),
        ([0, 1], "0-1"),
        ([0, 1, 2, 3, 8], "0-3,8"),
        ([8, 3, 2, 1, 0, 3], "0-3,8"),
        ([4, 5, 20, 21], "4-5,20-21"),  # Slurm-style allocation, not starting at 0
        ([1, 3, 5], "1,3,5"),
        (range(0, 64), "0-63"),
    ],
)
def test_format_examples(cpus: Iterable[int], text: str) -> None:
    assert format_cpulist(cpus) == text


def test_format_accepts_any_iterable() -> None:
    assert format_cpulist(iter([2, 1])) == "1-2"
    assert format_cpulist(frozenset({7})) == "7"
    assert format_cpulist(c for c in (0, 2)) == "0,2"


def test_format_refuses_negative_ids() -> None:
    with pytest.raises(ValueError, match="-1"):
        format_cpulist([-1, 0, 1])


# -- parsing the forms the kernel and taskset write --------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", [0]),
        ("0-3,8", [0, 1, 2, 3, 8]),
        ("8,0-3", [0, 1, 2, 3, 8]),
        ("0-3,2-5", [0, 1, 2, 3, 4, 5]),  # overlapping ranges merge
        ("5-5", [5]),
        ("007", [7]),
        ("0-8:2", [0, 2, 4, 6, 8]),  # taskset stride form
        ("1-8:3", [1, 4, 7]),
        ("0-3:1", [0, 1, 2, 3]),
        ("0-3:10", [0]),
        ("0-9:2/5", [0, 1, 5, 6]),  # kernel group form: first 2 of each group of 5
        ("0-6:2/4", [0, 1, 4, 5]),
        ("0-4:2/4", [0, 1, 4]),  # the last group is cut at the end of the range
        ("0-3:4/4", [0, 1, 2, 3]),
        ("0-3\n", [0, 1, 2, 3]),  # as read from /sys/devices/system/cpu/online
        ("  0-1 , 4 \n", [0, 1, 4]),
        ("0 - 3", [0, 1, 2, 3]),
        ("\t2\n", [2]),
    ],
)
def test_parse_examples(text: str, cpus: list[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["", " ", "\n", " \t\n"])
def test_empty_text_is_the_empty_list(text: str) -> None:
    # An empty cpulist file is real: node*/cpulist of a memory-only (CXL/HBM) node.
    assert parse_cpulist(text) == []


@given(st.integers(0, 500), st.integers(0, 500), st.integers(1, 50))
def test_stride_matches_python_range(a: int, b: int, step: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert parse_cpulist(f"{lo}-{hi}:{step}") == list(range(lo, hi + 1, step))


@given(st.integers(0, 300), st.integers(0, 300), st.integers(1, 20), st.integers(1, 20))
def test_group_form_matches_the_kernel_rule(a: int, b: int, x: int, y: int) -> None:
    lo, hi = min(a, b), max(a, b)
    used, group = min(x, y), max(x, y)
    expected = [c for c in range(lo, hi + 1) if (c - lo) % group < used]
    assert parse_cpulist(f"{lo}-{hi}:{used}/{group}") == expected


def test_parse_returns_a_fresh_list_of_ints() -> None:
    out = parse_cpulist("0-2")
    assert type(out) is list
    assert all(type(c) is int for c in out)


# -- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bad_part", "why"),
    [
        ("1-", "1-", "not a non-negative integer"),
        ("-1", "-1", "not a non-negative integer"),
        ("0-3,-2", "-2", "not a non-negative integer"),
        ("a", "a", "not a non-negative integer"),
        ("0-3,x", "x", "not a non-negative integer"),
        ("0x3", "0x3", "not a non-negative integer"),
        ("1.5", "1.5", "not a non-negative integer"),
        ("+1", "+1", "not a non-negative integer"),
        ("1 2", "1 2", "not a non-negative integer"),
        ("1;2", "1;2", "not a non-negative integer"),
        ("1-2-3", "1-2-3", "not a non-negative integer"),
        ("²", "²", "not a non-negative integer"),  # str.isdigit() is True, int() refuses
        ("١", "١", "not a non-negative integer"),  # Arabic-Indic one: int() would accept it
        ("3-1", "3-1", "reversed"),
        ("0-8:0", "0-8:0", "0"),
        ("0-8:", "0-8:", "not a non-negative integer"),
        ("0-8:x", "0-8:x", "not a non-negative integer"),
        ("0-8:-2", "0-8:-2", "not a non-negative integer"),
        ("5:2", "5:2", "no range"),
        ("0-9:3/2", "0-9:3/2", "group"),
        ("0-9:2/0", "0-9:2/0", "0"),
        ("0-9:0/4", "0-9:0/4", "0"),
        ("0-9:2/", "0-9:2/", "not a non-negative integer"),
        ("0-99999999999", "0-99999999999", "largest supported id"),
        ("70000", "70000", "largest supported id"),
    ],
)
def test_malformed_parts_raise_value_error_naming_the_part(text: str, bad_part: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad CPU list") as info:
        parse_cpulist(text)
    msg = str(info.value)
    assert repr(bad_part) in msg
    assert why in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["1,,2", "1,", ",1", ",", "0-3, ,5"])
def test_empty_parts_are_refused(text: str) -> None:
    # The kernel never writes an empty part; one in user input is a typo, not "nothing".
    with pytest.raises(ValueError, match="empty part"):
        parse_cpulist(text)


def test_error_quotes_the_whole_list() -> None:
    with pytest.raises(ValueError, match=r"'0-3,8,z'"):
        parse_cpulist("0-3,8,z\n")


@given(st.text(alphabet="0123456789-,:/ \nab", max_size=20))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        out = parse_cpulist(text)
    except ValueError as e:
        message = str(e)
        out = None
    if out is None:
        assert message.startswith("bad CPU list")
    else:
        assert out == sorted(set(out))
        assert all(0 <= c <= 65535 for c in out)


def test_parse_cpumask_reads_the_kernels_hex_words_most_significant_first():
    from shmhpc.cpulist import parse_cpumask

    assert parse_cpumask("0000000f\n") == [0, 1, 2, 3]
    assert parse_cpumask("00000001,00000000") == [32]
    assert parse_cpumask("00000000,00000000") == []
    with pytest.raises(ValueError, match="not a hex CPU mask"):
        parse_cpumask("0x1f")
