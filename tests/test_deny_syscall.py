"""tests/deny_syscall.py really refuses the named system calls, in CMD and in CMD's children."""

from __future__ import annotations

import errno
import platform
import subprocess
import sys

import pytest
from conftest import ROOT
from deny_syscall import ARCHES

pytestmark = pytest.mark.skipif(
    platform.machine() not in ARCHES, reason=f"deny_syscall knows no syscall numbers for {platform.machine()}"
)

TOOL = str(ROOT / "tests" / "deny_syscall.py")

# mbind(MPOL_BIND, node 0) on a 1 MiB anonymous mapping; prints "<return value> <errno>".
PROBE = f"""
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
m = mmap.mmap(-1, 1 << 20)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
mask = ctypes.c_ulong(1)
u = ctypes.c_ulong
nr = {ARCHES.get(platform.machine(), (0, {"mbind": -1}))[1]["mbind"]}
r = libc.syscall(ctypes.c_long(nr), ctypes.c_void_p(addr), u(1 << 20), u(2), ctypes.byref(mask), u(64), u(0))
print(r, ctypes.get_errno())
"""

# The same probe run one process further down, as a launcher's worker would be.
GRANDCHILD = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {PROBE!r}]).returncode)"


def _probe(*deny: str, code: str = PROBE) -> tuple[int, int]:
    prefix = [sys.executable, TOOL, *deny, "--"] if deny else []
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    ret, err = out.stdout.split()
    return int(ret), int(err)


@pytest.mark.parametrize("code", [PROBE, GRANDCHILD], ids=["child", "grandchild"])
def test_mbind_refused_with_eperm_only_under_the_tool(code):
    ret, err = _probe(code=code)
    if ret != 0:
        pytest.skip(f"mbind already fails here without the tool ({errno.errorcode.get(err, err)})")
    assert _probe("mbind", code=code) == (-1, errno.EPERM)
    assert _probe("set_mempolicy", "move_pages", code=code) == (0, 0)  # other calls pass


def test_errno_option():
    assert _probe("--errno", "ENOSYS", "mbind", "set_mempolicy") == (-1, errno.ENOSYS)


@pytest.mark.parametrize(
    ("args", "expect"),
    [(["bogus_call"], "unknown syscall bogus_call"), (["--errno", "ENOPE", "mbind"], "unknown errno name")],
)
def test_bad_names_exit_2_with_one_line(args, expect):
    out = subprocess.run(
        [sys.executable, TOOL, *args, "--", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and expect in out.stderr
