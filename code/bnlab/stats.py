"""The book's one statistical rule: a difference counts as supported by the seeds when a paired t-test over the
seeds gives p < 0.05, that is, when its 95 % confidence interval excludes zero.

Two variants trained with the same seeds give pairs ``(a_i, b_i)``, one per seed. With ``d_i = a_i - b_i`` over
``n`` seeds, mean ``d`` and sample standard deviation ``s``::

    SE = s / sqrt(n)        t = d / SE        df = n - 1
    p  = P(|T_df| >= |t|)   CI = d -/+ t_{(1 + level) / 2, df} * SE

Pairing removes what the seed does to both variants alike (the same seed draws the same batches). Values that
are not paired (different seeds, or different counts) are compared by Welch's t-test: ``SE^2 = s_a^2 / n_a +
s_b^2 / n_b`` with the Welch-Satterthwaite degrees of freedom.

Student's t distribution is computed here, from the regularised incomplete beta function, so that nothing
beyond the standard library is needed::

    P(|T_df| >= |t|) = I_x(df / 2, 1 / 2),   x = df / (df + t^2)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

RULE = (
    "a difference counts as supported by the seeds when a paired t-test over the seeds gives p < 0.05 "
    "(its 95 % confidence interval excludes zero)"
)


# --- Student's t distribution ------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"the incomplete beta function did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0; got a={a!r}, b={b!r}.")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1; got x={x!r}.")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if not (isinstance(df, (int, float)) and not isinstance(df, bool) and df > 0 and math.isfinite(df)):
        raise ValueError(f"df (degrees of freedom) must be a positive finite number; got {df!r}.")


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom (1 for ``t = 0``, 0 for ``t = +/-inf``)."""
    _check_df(df)
    if math.isnan(t):
        raise ValueError("t is nan: there is no p-value for it.")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``t`` with ``P(T <= t) = q`` for Student's t with ``df`` degrees of freedom, by bisection on ``t_cdf``."""
    _check_df(df)
    if not (isinstance(q, (int, float)) and 0.0 < q < 1.0):
        raise ValueError(f"q must be a probability strictly between 0 and 1; got {q!r}.")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    tail = 2.0 * (1.0 - q)  # the two-sided p of the answer; bisect on it (no cancellation near q = 1)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_two_sided_p(middle, df) > tail:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return 0.5 * (low + high)


# --- spread and comparison ---------------------------------------------------------------------------------------


def _as_numbers(values, name: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numbers (one per seed); got {values!r}.") from err
    for i, v in enumerate(numbers):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] is {v}: every value must be a finite number (did a run diverge?).")
    return numbers


@dataclass(frozen=True)
class Spread:
    """One number measured several times (once per seed, or per round of a benchmark).

    ``mean`` and ``std``, the sample standard deviation (``n - 1`` in the denominator; ``nan`` for a single value,
    which has no spread to measure); ``median``, ``low`` and ``high`` (the range) describe the same values.
    ``str`` gives ``"mean ± std"``; ``f"{spread:.4f}"`` formats both numbers alike.
    """

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> "Spread":
        values = _as_numbers(values, "values")
        if not values:
            raise ValueError("Spread.of needs at least one value.")
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def __str__(self) -> str:
        return self.__format__(".2f")

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        if self.n == 1:
            return f"{self.mean:{spec}} (one value)"
        return f"{self.mean:{spec}} ± {self.std:{spec}}"


@dataclass(frozen=True)
class Comparison:
    """Variant a against variant b on one number: what ``compare`` returns.

    Attributes:
        difference: mean of a minus mean of b (paired: the mean of the per-seed differences, the same number).
        ci: ``(low, high)``, the ``level`` confidence interval of that difference, from Student's t.
        t: the t statistic (``+/-inf`` when every seed gives the same nonzero difference, ``nan`` when a and b
            are equal on every seed).
        p: the two-sided p-value of "no difference".
        df: degrees of freedom (paired: ``n - 1``; Welch: Welch-Satterthwaite, not a whole number).
        n_a, n_b: how many values each side had (paired: both the number of seeds).
        paired: whether the values were paired by seed.
        level: the confidence level, 0.95 unless asked otherwise.
    """

    difference: float
    ci: tuple[float, float]
    t: float
    p: float
    df: float
    n_a: int
    n_b: int
    paired: bool
    level: float = 0.95

    @property
    def n(self) -> int:
        """The number of seeds behind the comparison: pairs when paired, else the values of a and b together."""
        return self.n_a if self.paired else self.n_a + self.n_b

    @property
    def supported(self) -> bool:
        """Whether the seeds support a difference: the confidence interval excludes zero (``p < 1 - level``)."""
        low, high = self.ci
        return low > 0 or high < 0

    @property
    def verdict(self) -> str:
        """``"supported"`` or ``"not supported"`` (by the seeds), for tables and prose."""
        return "supported" if self.supported else "not supported"

    @property
    def constant(self) -> bool:
        """Whether there is no seed-to-seed variation at all (every seed gives the same difference)."""
        return self.ci[0] == self.ci[1]

    def describe(self, a_label: str, b_label: str, unit: str = "points", *, digits: int = 2,
                 verb: str = "scores") -> str:
        """One sentence saying how a compares with b and whether the seeds support a difference, e.g.
        ``"BN before ReLU scores 0.12 points higher than BN after ReLU (95 % CI 0.03 to 0.21); the seeds support
        the difference."``. ``unit`` follows each number (``""`` for none); ``verb`` fits "higher" and "lower" (its plural, "is" -> "are", "scores" -> "score", where a and b are equal)."""
        size = abs(self.difference)
        unit = f" {unit}" if unit else ""
        level = f"{self.level * 100:g} %"

        def number(x: float) -> str:
            return f"{abs(x):.{digits}f}"

        both = {"is": "are", "has": "have"}.get(verb, verb[:-1] if verb.endswith("s") else verb)  # a and b ...

        if self.constant:
            if self.difference == 0:
                return (f"{a_label} and {b_label} {both} exactly the same on every seed; "
                        "there is no difference to support.")
            direction = "higher" if self.difference > 0 else "lower"
            return (
                f"{a_label} {verb} {number(size)}{unit} {direction} than {b_label} on every seed alike; "
                "the seeds support the difference."
            )
        low, high = self.ci
        if self.supported:
            direction = "higher" if self.difference > 0 else "lower"
            near, far = (low, high) if self.difference > 0 else (high, low)
            return (
                f"{a_label} {verb} {number(size)}{unit} {direction} than {b_label} ({level} CI {number(near)} to "
                f"{number(far)}); the seeds support the difference."
            )
        interval = f"{level} CI {number(low)} lower to {number(high)} higher"
        if round(self.difference, digits) == 0:
            return (
                f"{a_label} and {b_label} {both} the same to {digits} decimals on average ({interval}); "
                "the seeds do not support a difference."
            )
        direction = "higher" if self.difference > 0 else "lower"
        return (
            f"{a_label} {verb} {number(size)}{unit} {direction} than {b_label} ({interval}); "
            "the seeds do not support a difference."
        )


def compare(a_values, b_values, *, paired: bool = True, level: float = 0.95) -> Comparison:
    """Compare a's values with b's: paired by position (seed) when ``paired``, else Welch's t-test.

    Paired values must come in equal numbers, at least 2 pairs; Welch needs at least 2 values on each side.
    """
    a = _as_numbers(a_values, "a_values")
    b = _as_numbers(b_values, "b_values")
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a confidence level strictly between 0 and 1, e.g. 0.95; got {level!r}.")
    if paired:
        if len(a) != len(b):
            raise ValueError(
                f"paired values must come in equal numbers (one per seed); got {len(a)} and {len(b)}. "
                "Pass paired=False for Welch's t-test."
            )
        if len(a) < 2:
            raise ValueError(f"a paired comparison needs at least 2 seeds; got {len(a)}.")
        differences = [x - y for x, y in zip(a, b)]
        difference = statistics.fmean(differences)
        standard_error = statistics.stdev(differences) / math.sqrt(len(a))
        df = float(len(a) - 1)
    else:
        for name, values in (("a_values", a), ("b_values", b)):
            if len(values) < 2:
                raise ValueError(f"Welch's t-test needs at least 2 values on each side; {name} has {len(values)}.")
        difference = statistics.fmean(a) - statistics.fmean(b)
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        standard_error = math.sqrt(va + vb)
        denominator = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
        df = (va + vb) ** 2 / denominator if denominator > 0 else float(len(a) + len(b) - 2)
    if standard_error == 0:  # no variation at all: the difference is the same on every seed
        t = math.nan if difference == 0 else math.copysign(math.inf, difference)
        p = 1.0 if difference == 0 else 0.0
        ci = (difference, difference)
    else:
        t = difference / standard_error
        p = t_two_sided_p(t, df)
        half_width = t_quantile((1.0 + level) / 2.0, df) * standard_error
        ci = (difference - half_width, difference + half_width)
    return Comparison(difference, ci, t, p, df, len(a), len(b), paired, level)


def format_p(p: float) -> str:
    """A p-value for a table: ``"0.003"``, ``"< 0.001"``, ``"1.000"``."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# --- a number recorded elsewhere against our seeds --------------------------------------------------------------


def prediction_interval(values, *, level: float = 0.95) -> tuple[float, float]:
    """Where one more run would land with probability ``level``, from ``n >= 2`` runs' values, if runs vary
    normally: ``mean -/+ t_{(1 + level) / 2, n - 1} * s * sqrt(1 + 1 / n)``, ``s`` the sample standard deviation.
    Equal values give the single point ``(mean, mean)``."""
    values = [float(v) for v in values]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be at least 2 finite numbers (one per seed); got {values!r}.")
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a probability strictly between 0 and 1, e.g. 0.95; got {level!r}.")
    n, mean, s = len(values), statistics.fmean(values), statistics.stdev(values)
    half_width = t_quantile((1.0 + level) / 2.0, n - 1) * s * math.sqrt(1.0 + 1.0 / n) if s > 0 else 0.0
    return mean - half_width, mean + half_width


def within_prediction_interval(recorded: float, values, *, level: float = 0.95, decimals: int = 2) -> bool:
    """Whether a number recorded elsewhere, rounded to ``decimals`` places, lies inside the ``level`` prediction
    interval of our runs' ``values`` (``prediction_interval``), widened by half a unit of its last decimal."""
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)) or not math.isfinite(recorded):
        raise ValueError(f"recorded must be a finite number; got {recorded!r}.")
    low, high = prediction_interval(values, level=level)
    slack = 0.5 * 10.0**-decimals
    return low - slack <= recorded <= high + slack
