"""Every file shmhpc writes goes through here: one rule for reports, sweeps, plots and scripts.

The rule, checked *before* any work starts (``check_output``) and again at the moment of
writing (``write_text``):

- the target is absent or a regular file; a device, FIFO, socket or symbolic link is never
  replaced, with or without ``--force`` (``--report /dev/null --force`` as root would otherwise
  swap the machine's ``/dev/null`` for a JSON file; a link would redirect the write onto
  another file);
- an existing regular file is replaced only when the caller was asked to (``--force``);
- the parent folder exists, or is created on purpose where the writer says so (report paths
  from a spec template, a sweep's folder); it must be a folder we can create files in,
  which is tried, not guessed (read-only mounts and permissions show up here);
- writing is atomic (a temp file in the same folder, then a rename): a crash or a full disk
  never leaves half a file, and the name is never opened for writing, so nothing is written
  *through* it;
- files get mode ``0666 & ~umask`` like any other program's output (``mkstemp`` alone makes
  them 0600). Shared-memory segments are not outputs and stay 0600.

A write that fails after the work is done is the caller's failure to report (a run then
exits 1 and prints its report to stderr instead).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError

__all__ = ["Output", "OutputError", "check_output", "write_text", "write_with", "STDOUT"]

STDOUT = "-"  # `--report -`: the CLI prints the report itself; nothing here writes to stdout


class OutputError(SpecError):
    """An output location that must not or cannot be written (exit 2, before any work)."""


@dataclass(frozen=True)
class Output:
    """A checked output location."""

    what: str  # how the user named it: "report", "--out", "-o"
    path: Path
    overwrite: bool = False


_KINDS = [
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _lstat(path: Path, what: str = "output") -> os.stat_result | None:
    """The entry itself (links not followed); None when absent, or when a folder on the way is a file."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"{what}: {str(path)!r} cannot be looked at: {exc.strerror}") from None


def check_output(
    path: str | os.PathLike[str],
    *,
    what: str,
    overwrite: bool = False,
    make_parents: bool = False,
    folder: bool = False,
    exists_hint: str = "pass --force to replace it",
) -> Output:
    """Check an output location before any work; returns it ready for ``write_text``.

    ``folder=True`` checks a folder to write files into (a sweep's ``--out``), created here
    if missing. ``make_parents`` creates missing parent folders (on purpose: the writer's
    docs say so); otherwise a missing parent is an error. ``exists_hint`` ends the message for
    an existing file when ``overwrite`` is false.
    """
    p = Path(path)
    if str(path) == "" or (not folder and p.name in ("", ".", "..")):
        raise OutputError(f"{what}: {str(path)!r} is not a file name")
    st = _lstat(p, what)
    if st is not None:
        if folder and stat.S_ISDIR(st.st_mode):
            _try_create_in(p, what)
            return Output(what, p, overwrite)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{what}: {str(p)!r} is {_kind(st.st_mode)}, not a regular file; shmhpc only ever replaces "
                "regular files (not even with --force)"
            )
        if folder:
            raise OutputError(f"{what}: {str(p)!r} is a file, not a folder")
        if not overwrite:
            raise OutputError(f"{what}: {str(p)!r} already exists; {exists_hint}")
    parent = p if folder else p.parent
    _ensure_folder(parent, what, create=make_parents or folder, target=p)
    _try_create_in(parent, what)
    return Output(what, p, overwrite)


def _ensure_folder(folder: Path, what: str, *, create: bool, target: Path) -> None:
    st = _lstat(folder, what)
    if st is not None:
        if not stat.S_ISDIR(os.stat(folder).st_mode):  # a link to a folder is a folder here
            raise OutputError(f"{what}: {str(target)!r}: {str(folder)!r} is not a folder")
        return
    existing = next((a for a in folder.parents if _lstat(a, what) is not None), Path("."))
    if not existing.is_dir():
        raise OutputError(f"{what}: {str(target)!r}: {str(existing)!r} is not a folder")
    if not create:
        raise OutputError(f"{what}: {str(target)!r}: the folder {str(folder)!r} does not exist; create it first")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create the folder {str(folder)!r}: {exc.strerror}") from None


def _try_create_in(folder: Path, what: str) -> None:
    """Create and remove a temp file: the only honest test of "can I write here" (ro mounts, ACLs, root)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".shmhpc-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write in {str(folder)!r}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def _umask() -> int:
    """This process's umask, read without changing it where the kernel says it (Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_text(out: Output | str | os.PathLike[str], text: str, overwrite: bool = False) -> Path:
    """Write ``text`` atomically to a checked output (or a path); returns where it went.

    With ``overwrite=False`` an existing file is never replaced: when the name appeared
    while we worked, the text goes to ``NAME.<pid>.EXT`` beside it and that path is returned.
    """
    return write_with(out, lambda f: f.write(text.encode()), overwrite)


def write_with(out: Output | str | os.PathLike[str], fill: Callable, overwrite: bool = False) -> Path:
    """Like ``write_text`` with ``fill(binary_file)`` producing the content (a figure's ``savefig``)."""
    if isinstance(out, Output):
        p, overwrite = out.path, out.overwrite or overwrite
    else:
        p = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        p = _put_in_place(tmp, p, overwrite)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def _put_in_place(tmp: str, p: Path, overwrite: bool) -> Path:
    """Link the finished temp file to its name; replace only a regular file, and only if asked."""
    try:
        os.link(tmp, p)  # fails if the name exists (as anything): never onto another file
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links (FAT, some FUSE): check, then rename
        if _lstat(p) is None:
            os.replace(tmp, p)
            return p
    else:
        os.unlink(tmp)
        return p
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{p}: became {_kind(st.st_mode)} while shmhpc ran; not replaced (only regular files are)")
    if not overwrite:  # someone wrote it while we ran: keep theirs
        p = p.with_name(f"{p.stem}.{os.getpid()}{p.suffix}")
    os.replace(tmp, p)
    return p
