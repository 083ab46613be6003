"""Run a command with chosen Linux system calls refused by a real seccomp-BPF filter.

    python tests/deny_syscall.py [--errno EPERM] mbind set_mempolicy -- CMD ARGS...

Containers often refuse the NUMA policy calls: Docker's default seccomp profile answers
mbind, set_mempolicy and move_pages with EPERM unless the container has CAP_SYS_NICE. The
tests use this tool to prove that shmhpc degrades gracefully there instead of failing.

The filter is installed in this process (PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP), which
then execs CMD. Filters are inherited over fork and exec, so a launcher and all its worker
processes see the refusal, as they would in such a container. A named call returns -1 with
the given errno; every other call is allowed; a call made under another architecture's ABI
(e.g. i386 on x86_64) kills the process, as in the seccomp(2) man page example.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import struct
import sys

# machine -> (AUDIT_ARCH_* value, {syscall name: number}); x86_64 from asm/unistd_64.h,
# aarch64 from asm-generic/unistd.h.
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239, "migrate_pages": 256, "move_pages": 279},
    ),
    "aarch64": (
        0xC00000B7,
        {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237, "migrate_pages": 238, "move_pages": 239},
    ),
}

PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 22, 38, 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JMP_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
OFFSET_NR, OFFSET_ARCH = 0, 4  # struct seccomp_data { int nr; __u32 arch; __u64 ip; __u64 args[6]; }


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter


def build_filter(arch: int, numbers: list[int], err: int) -> bytes:
    """BPF program: wrong arch -> kill; a listed nr -> ERRNO(err); anything else -> allow."""
    prog = [
        _insn(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        _insn(BPF_JMP_JEQ_K, 1, 0, arch),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    # On x86_64, x32 calls carry arch AUDIT_ARCH_X86_64 too but nr | 0x40000000 (__X32_SYSCALL_BIT):
    # they match no listed number and are allowed. Nothing here runs x32 code, so that is fine.
    for nr in numbers:
        prog += [_insn(BPF_JMP_JEQ_K, 0, 1, nr), _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (err & 0xFFFF))]
    prog.append(_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    return b"".join(prog)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    ul = ctypes.c_ulong
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, ul(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _fail(msg: str) -> int:
    print(f"deny_syscall: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        return _fail("usage: deny_syscall.py [--errno NAME] SYSCALL... -- CMD [ARGS...]")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="deny_syscall.py", description=__doc__)
    parser.add_argument("--errno", default="EPERM", help="errno name the refused calls return (default EPERM)")
    parser.add_argument("syscalls", nargs="+", help="system call names to refuse")
    args = parser.parse_args(argv[:cut])
    err = getattr(errno, args.errno, None)
    if not args.errno.startswith("E") or not isinstance(err, int):
        return _fail(f"unknown errno name {args.errno!r}")
    machine = platform.machine()
    if machine not in ARCHES:
        return _fail(f"unsupported machine {machine!r} (known: {', '.join(ARCHES)})")
    arch, table = ARCHES[machine]
    unknown = [name for name in args.syscalls if name not in table]
    if unknown:
        return _fail(f"unknown syscall {', '.join(unknown)} on {machine} (known: {', '.join(sorted(table))})")
    try:
        install(build_filter(arch, [table[name] for name in args.syscalls], err))
    except OSError as exc:
        return _fail(f"cannot install the seccomp filter: {exc}")
    cmd = argv[cut + 1 :]
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 (running the given command is the point)
    except OSError as exc:
        print(f"deny_syscall: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
