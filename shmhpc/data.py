"""The job's data: what it looks like (checked before any worker starts) and how
one worker fills its rows of the shared array.

Generated data is reproducible and independent of the worker count: the flat
array is cut into fixed blocks of ``GEN_BLOCK`` elements and block ``b`` is
drawn from ``SeedSequence(seed, spawn_key=(b,))`` — the same stream as
``SeedSequence(seed).spawn(b + 1)[b]`` — whoever generates it. File data is read
straight into the worker's rows of the shared segment (``preadv``), so the
parent never holds a second copy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .errors import SpecError
from .spec import DataSpec

__all__ = ["DataInfo", "describe_data", "fill_rows", "RowFiller", "GEN_BLOCK"]

GEN_BLOCK = 1 << 20  # elements per generation block (4 MiB of float32)
_READ_PIECE = 64 << 20  # bytes per preadv call


@dataclass(frozen=True)
class DataInfo:
    """Resolved data description, picklable, sent to every worker."""

    source: str
    shape: tuple[int, ...]
    dtype: str
    distribution: str
    seed: int
    path: str | None  # absolute
    offset_bytes: int  # where element 0 starts in the file
    # One node's slice of a multi-node job (``run --mpi``): this array is global rows
    # [row_offset, row_offset + shape[0]) of ``total_rows``; generated values depend on the global index only.
    row_offset: int = 0
    total_rows: int | None = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.n_elements * self.itemsize

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def row_bytes(self) -> int:
        return self.row_elements * self.itemsize

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "nbytes": self.nbytes,
            "distribution": self.distribution if self.source == "generate" else None,
            "seed": self.seed if self.source == "generate" else None,
            "path": self.path,
            "offset_bytes": self.offset_bytes,
            **({"row_offset": self.row_offset, "total_rows": self.total_rows} if self.total_rows is not None else {}),
        }

    def node_slice(self, lo: int, hi: int) -> DataInfo:
        """Global rows ``[lo, hi)`` as an array of their own: a file is read from its offset, generated data
        keeps its global element indices (so its values do not depend on how many nodes share the job)."""
        shape = (hi - lo, *self.shape[1:])
        if self.source in ("npy", "raw"):
            return replace(self, shape=shape, offset_bytes=self.offset_bytes + lo * self.row_bytes)
        return replace(self, shape=shape, row_offset=self.row_offset + lo, total_rows=self.total_rows or self.n_rows)


def describe_data(data: DataSpec, base_dir: str | os.PathLike[str] = ".") -> DataInfo:
    """Resolve shape, dtype and file offset; check files before any worker starts.

    Raises ``SpecError`` naming the field for a missing, truncated or mismatched file.
    """
    if data.source in ("generate", "array", "empty"):  # array/empty: the Python API's (Session.share)
        shape = tuple(data.shape) if data.shape else (int(data.size or 0),)
        return DataInfo(data.source, shape, data.resolved_dtype, data.distribution, data.seed, None, 0)
    path = Path(data.path or "")
    if not path.is_absolute():
        path = Path(base_dir) / path
    path = path.resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SpecError(f"data.path: {data.path!r} does not exist (looked for {path})") from None
    except OSError as exc:
        raise SpecError(f"data.path: cannot read {data.path!r}: {exc.strerror}") from None
    if not path.is_file():
        raise SpecError(f"data.path: {data.path!r} is not a regular file")
    if data.source == "npy":
        return _describe_npy(data, path, st.st_size)
    # raw
    shape = tuple(data.shape) if data.shape else (int(data.size or 0),)
    dtype = data.dtype or "float32"
    need = data.offset_bytes + math.prod(shape) * np.dtype(dtype).itemsize
    if st.st_size < need:
        raise SpecError(
            f"data.path: {data.path!r} has {st.st_size} bytes; shape {list(shape)} of {dtype} "
            f"from offset {data.offset_bytes} needs {need}"
        )
    return DataInfo("raw", shape, dtype, "", 0, str(path), data.offset_bytes)


def _describe_npy(data: DataSpec, path: Path, file_size: int) -> DataInfo:
    try:
        with open(path, "rb") as f:
            major, _minor = npformat.read_magic(f)
            if major == 1:
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            elif major in (2, 3):
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {major}")
            offset = f.tell()
    except ValueError as exc:
        raise SpecError(f"data.path: {data.path!r} is not a readable .npy file ({exc})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise SpecError(f"data.path: {data.path!r} holds dtype {dtype}; allowed: numeric (float, int, uint)")
    if not dtype.isnative and dtype.itemsize > 1:
        raise SpecError(f"data.path: {data.path!r} is {dtype.str} (non-native byte order); re-save it native")
    if len(shape) == 0 or len(shape) > 2:
        raise SpecError(f"data.path: {data.path!r} has shape {list(shape)}; allowed: 1-D or 2-D arrays")
    if fortran and len(shape) == 2 and shape[1] > 1:
        raise SpecError(
            f"data.path: {data.path!r} is Fortran-ordered; rows must be contiguous: save np.ascontiguousarray(a)"
        )
    if math.prod(shape) == 0:
        raise SpecError(f"data.path: {data.path!r} is empty (shape {list(shape)})")
    name = np.dtype(dtype).name
    if data.dtype is not None and data.dtype != name:
        raise SpecError(f"data.dtype: spec says {data.dtype} but {data.path!r} holds {name}")
    want = tuple(data.shape) if data.shape else ((data.size,) if data.size else None)
    if want is not None and tuple(want) != tuple(shape):
        raise SpecError(f"data.shape: spec says {list(want)} but {data.path!r} holds {list(shape)}")
    need = offset + math.prod(shape) * dtype.itemsize
    if file_size < need:
        raise SpecError(f"data.path: {data.path!r} is truncated: {file_size} bytes, the header promises {need}")
    return DataInfo("npy", tuple(int(s) for s in shape), name, "", 0, str(path), offset)


def fill_rows(array: np.ndarray, info: DataInfo, row_start: int, row_stop: int) -> None:
    """Write rows ``[row_start, row_stop)`` of the shared ``array`` (the first touch).

    Called by the worker that owns the rows, after it has pinned itself. One call; a worker filling
    its rows chunk by chunk uses a :class:`RowFiller`.
    """
    RowFiller(array, info).fill(row_start, row_stop)


class RowFiller:
    """Fills one worker's rows of the shared array, chunk after chunk, in order.

    Generated data: a block cut by the boundary between two of the worker's chunks is drawn once and
    kept for the next chunk. Drawn again, it costs up to a block per chunk boundary: the seed job's two
    workers drew 15 and 26 % more than their rows, and drawing is most of what loading costs.
    """

    def __init__(self, array: np.ndarray, info: DataInfo) -> None:
        self.flat = array.reshape(-1)
        self.info = info
        self._kept: tuple[int, np.ndarray] | None = None  # (block, its values): a block cut at a chunk boundary

    def fill(self, row_start: int, row_stop: int) -> None:
        """Write rows ``[row_start, row_stop)``."""
        info = self.info
        e0, e1 = row_start * info.row_elements, row_stop * info.row_elements
        if e1 <= e0:
            return
        if info.source == "generate":
            self._generate(e0, e1)
        elif info.source in ("npy", "raw"):
            _read_file(self.flat, info, e0, e1)
        # "empty": the owner's reservation has zeroed its pages (Session.fill writes them); "array": the
        # launcher copies it (only it has the array)

    def _generate(self, e0: int, e1: int) -> None:
        flat, info = self.flat, self.info
        # Blocks are numbered by global element index: a node's slice draws what a single node would.
        off = info.row_offset * info.row_elements
        total = (info.total_rows if info.total_rows is not None else info.n_rows) * info.row_elements
        e0, e1 = e0 + off, e1 + off
        for b in range(e0 // GEN_BLOCK, (e1 - 1) // GEN_BLOCK + 1):
            lo, hi = b * GEN_BLOCK, min((b + 1) * GEN_BLOCK, total)
            s, e = max(lo, e0), min(hi, e1)
            if s == lo and e == hi:  # whole block: draw straight into shared memory
                _draw(info, b, flat[s - off : e - off])
                continue
            # A block cut by a boundary: draw it whole, keep our part, so the values do not depend on
            # where the boundary falls; keep the block too, for the next chunk of the same worker.
            if self._kept is None or self._kept[0] != b:
                buf = self._kept[1] if self._kept is not None else np.empty(GEN_BLOCK, dtype=info.dtype)
                _draw(info, b, buf[: hi - lo])
                self._kept = (b, buf)
            flat[s - off : e - off] = self._kept[1][s - lo : e - lo]


def _draw(info: DataInfo, block: int, out: np.ndarray) -> None:
    """Block ``block`` of the generated data into ``out`` (its length): the same values whoever draws it."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(info.seed, spawn_key=(block,))))
    if info.distribution == "uniform":
        rng.random(out=out, dtype=out.dtype)
    else:
        rng.standard_normal(out=out, dtype=out.dtype)


def _read_file(flat: np.ndarray, info: DataInfo, e0: int, e1: int) -> None:
    if info.path is None:
        raise SpecError("data.path: missing")
    dest = memoryview(flat[e0:e1]).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
    pos = info.offset_bytes + e0 * info.itemsize
    fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < len(dest):
            piece = dest[done : done + _READ_PIECE]
            n = os.preadv(fd, [piece], pos + done)
            if n <= 0:
                raise SpecError(f"data.path: {info.path} ended early at byte {pos + done} (file shrank?)")
            done += n
    finally:
        os.close(fd)
