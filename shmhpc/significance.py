"""Welch's t-test, computed by hand: is a difference between two sets of repeats real?

Two-sided, on the raw per-repeat values, with Welch–Satterthwaite degrees of freedom
(which may be fractional). The p-value comes from Student's t distribution through the
regularized incomplete beta function,

    p = I_x(ν/2, 1/2),  x = ν / (ν + t²),

evaluated with its continued fraction by the modified Lentz method (the expansion of
Abramowitz & Stegun 26.5.8; on the far side of its convergence point through the
symmetry I_x(a, b) = 1 - I_{1-x}(b, a)). No scipy at run time: the tests check the
p-values against closed forms (ν = 1, 2), textbook critical values and a numerical
integral of the t density, and against scipy when it happens to be installed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["ALPHA", "TTest", "welch_test", "t_two_sided_p"]

ALPHA = 0.05


def _betainc_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function, for x < (a+1)/(a+b+2).

    I_x(a, b) = x^a (1-x)^b / (a B(a, b)) · 1 / (1 + d1 / (1 + d2 / (1 + …))) with
    d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m) x / ((a+2m-1)(a+2m)),
    evaluated front to back with the modified Lentz method.
    """
    tiny = 1e-300
    f = tiny
    c = f
    d = 0.0
    for j in range(1, 400):
        if j == 1:
            num = 1.0
        else:
            k = j - 1  # d_k
            m = k // 2
            if k % 2:
                num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
            else:
                num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / a * f


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x < (a + 1.0) / (a + b + 2.0):
        return _betainc_cf(a, b, x)
    return 1.0 - _betainc_cf(b, a, 1.0 - x)  # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) converges there


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` (possibly fractional) degrees of freedom."""
    if math.isnan(t) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, _betainc(df / 2.0, 0.5, df / (df + t * t))))


@dataclass
class TTest:
    """Welch's unequal-variances t-test of ``b`` against ``a``."""

    t: float
    df: float
    p: float
    significant: bool


def welch_test(a: list[float], b: list[float], alpha: float = ALPHA) -> TTest | None:
    """Welch's t-test (two-sided); ``None`` when either sample has fewer than 2 values."""
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return None
    m1, m2 = statistics.fmean(a), statistics.fmean(b)
    v1, v2 = statistics.variance(a) / n1, statistics.variance(b) / n2
    se2 = v1 + v2
    if se2 == 0.0:  # both samples constant: identical means are no difference, different ones are certain
        same = m1 == m2
        return TTest(
            t=0.0 if same else math.copysign(math.inf, m2 - m1),
            df=float(n1 + n2 - 2),
            p=1.0 if same else 0.0,
            significant=not same,
        )
    t = (m2 - m1) / math.sqrt(se2)
    df = se2 * se2 / ((v1 * v1) / (n1 - 1) + (v2 * v2) / (n2 - 1))
    p = t_two_sided_p(t, df)
    return TTest(t=t, df=df, p=p, significant=p < alpha)
