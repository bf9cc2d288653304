"""One rule for every verdict: a paired t-test over seeds.

A difference counts as supported by the seeds when a paired t-test over the seeds gives p < 0.05 (its 95 %
confidence interval excludes zero). Paired by seed when both variants ran the same seeds; Welch otherwise.

The t distribution is computed here (regularised incomplete beta function), so bnlab needs no SciPy:

    P(|T| > t) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2)      for T ~ Student's t with nu degrees of freedom
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one number over seeds."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> "Spread":
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("Spread.of needs at least one value; got none.")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, values)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"

    def __format__(self, spec: str) -> str:
        return f"{self.mean:{spec}} ± {self.std:{spec}}" if spec else str(self)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (0.5 < q < 1), by bisection on the distribution function."""
    if not 0.5 < q < 1.0:
        raise ValueError(f"q must lie in (0.5, 1); got {q!r}.")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 2 * (1 - q):
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_two_sided_p(mid, df) > 2 * (1 - q):
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` over seeds: ``difference`` = mean(a) - mean(b), its confidence interval ``ci``, the t
    statistic, the two-sided p value, the number of seeds ``n`` and whether the seeds support a difference."""

    difference: float
    ci: tuple[float, float]
    t: float
    p: float
    n: int
    paired: bool
    level: float = 0.95

    @property
    def supported(self) -> bool:
        """True iff the confidence interval excludes zero (two-sided p < 1 - level)."""
        return self.ci[0] > 0 or self.ci[1] < 0

    def describe(self, a_label: str, b_label: str, unit: str = "points") -> str:
        """One sentence on what the seeds support."""
        low, high = self.ci
        unit = f" {unit}" if unit else ""
        interval = f"{self.level:.0%} CI {low:+.3g} to {high:+.3g}{unit}, p = {self.p:.2g}, {self.n} seeds"
        if self.supported:
            direction = "higher" if self.difference > 0 else "lower"
            return f"{a_label} is {direction} than {b_label} by {abs(self.difference):.3g}{unit} ({interval})."
        return (
            f"The seeds do not support a difference between {a_label} and {b_label}: "
            f"{self.difference:+.3g}{unit} ({interval})."
        )


def compare(a_values, b_values, *, paired: bool = True, level: float = 0.95) -> Comparison:
    """Compare two variants' per-seed values: a paired t-test where ``paired`` (the same seeds, in the same order),
    Welch's t-test otherwise."""
    a, b = [float(v) for v in a_values], [float(v) for v in b_values]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"compare needs at least 2 values on each side; got {len(a)} and {len(b)}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}.")
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired=True needs one value per seed on each side; got {len(a)} and {len(b)}.")
        diffs = [x - y for x, y in zip(a, b)]
        n = len(diffs)
        difference = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n)
        df = n - 1.0
    else:
        n = min(len(a), len(b))
        difference = statistics.fmean(a) - statistics.fmean(b)
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) or float("inf"))
    if se == 0:
        t = 0.0 if difference == 0 else math.copysign(float("inf"), difference)
        p = 1.0 if difference == 0 else 0.0
        return Comparison(difference, (difference, difference), t, p, n, paired, level)
    t = difference / se
    half = t_quantile(0.5 + level / 2, df) * se
    return Comparison(difference, (difference - half, difference + half), t, t_two_sided_p(t, df), n, paired, level)
