"""Example user kernels for shmhpc (pure numpy).

A job names a user kernel as ``"module:attribute"``; the job file's own
directory is searched first, so a job in ``jobs/`` can say::

    kernel: example_kernels:sincos_energy     # a plain function
    kernel: example_kernels:Histogram         # a class with map/combine/finalize

Two styles are accepted:

* a **plain function** ``f(chunk) -> number | ndarray``: shmhpc calls it on
  every chunk and adds the partial results together;
* an **object** with ``map(chunk)``, ``combine(a, b)`` and ``finalize(state)``:
  a class is instantiated once with no arguments, an instance (such as
  ``histogram16`` below) is used as it is.

Either may carry ``rtol`` / ``atol`` attributes: the verifier reruns the same
kernel in one process and accepts ``|value - reference| <= atol + rtol*|reference|``
(defaults ``rtol=1e-6``, ``atol=0``).

Chunks can be large (up to ~1 GB) and are views into shared memory: never
modify them, and work through them in sub-blocks so that temporaries stay in
cache instead of doubling the memory traffic.
"""

from __future__ import annotations

import numpy as np

# Sub-block length: 64K float64 temporaries are 512 KiB each, so the handful
# that the expressions below create together fit in a core's L2 cache.
BLOCK_ELEMENTS = 1 << 16
# How many times the transcendental expression is evaluated per element; each
# pass uses a slightly different frequency so no pass can be skipped or cached.
SINCOS_REPEATS = 3


def sincos_energy(chunk: np.ndarray) -> float:
    """Compute-bound example: sum over elements of sin(w*x)**2 + cos(3*w*x) * exp(-(w*x)**2 / 2).

    Evaluated for ``SINCOS_REPEATS`` frequencies ``w = 1, 1.125, 1.25, ...``
    in float64, 64K elements at a time. With three transcendental calls per
    element and pass this costs well over 10 ns per element on one core,
    far more than reading the element from memory, so it scales with cores,
    not with memory bandwidth.

    Parameters
    ----------
    chunk : numpy.ndarray
        Any real dtype and shape; all elements are used.

    Returns
    -------
    float
        This chunk's contribution; contributions of chunks are added.
    """
    flat = chunk.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, BLOCK_ELEMENTS):
        x = flat[start : start + BLOCK_ELEMENTS].astype(np.float64)  # private float64 copy of the block
        for r in range(SINCOS_REPEATS):
            wx = x * (1.0 + r / 8.0)
            s = np.sin(wx)
            term = s * s + np.cos(3.0 * wx) * np.exp(-0.5 * wx * wx)
            total += float(term.sum())  # pairwise inside the block, then in python floats
    return total


# Partial sums are added in a different order in parallel than in the
# single-process reference; for sums of terms in [-1, 2] the relative
# difference stays far below 1e-9.
sincos_energy.rtol = 1e-9  # type: ignore[attr-defined]


class Histogram:
    """Object-style example: counts of values in equal-width bins over ``[lo, hi]``.

    Values outside ``[lo, hi]`` and NaN are not counted (as ``np.histogram``
    does with an explicit range). The state is an int64 array of counts;
    states combine by addition and the result is a list of python ints.
    Counts must match the single-process reference exactly, hence
    ``rtol = atol = 0``.

    Parameters
    ----------
    bins : int
        Number of bins (default 32).
    lo, hi : float
        Range covered by the bins (default -4 to 4).
    """

    rtol = 0.0
    atol = 0.0

    def __init__(self, bins: int = 32, lo: float = -4.0, hi: float = 4.0):
        self.bins = int(bins)
        self.lo = float(lo)
        self.hi = float(hi)

    def map(self, chunk: np.ndarray) -> np.ndarray:
        """Counts for one chunk, 64K elements at a time."""
        flat = chunk.reshape(-1)
        counts = np.zeros(self.bins, dtype=np.int64)
        for start in range(0, flat.size, BLOCK_ELEMENTS):
            block = flat[start : start + BLOCK_ELEMENTS]
            counts += np.histogram(block, bins=self.bins, range=(self.lo, self.hi))[0]
        return counts

    def combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Counts of two chunks together."""
        return a + b

    def finalize(self, state: np.ndarray) -> list[int]:
        """The counts as a list of python ints."""
        return [int(c) for c in state]


# An instance is used as it is, so other bin layouts need no new class.
histogram16 = Histogram(bins=16)
