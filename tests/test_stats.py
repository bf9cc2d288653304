import math
import random
import statistics

import pytest

from bnlab.stats import (
    RULE,
    Comparison,
    Spread,
    betainc,
    compare,
    format_p,
    prediction_interval,
    t_cdf,
    t_quantile,
    t_two_sided_p,
    within_prediction_interval,
)

# Student's sleep data (1908), as R ships it: extra hours of sleep with two drugs, the same ten patients.
DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


# --- the t distribution ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "q, df, expected",
    [
        (0.975, 1, 12.706205),
        (0.975, 2, 4.302653),
        (0.975, 4, 2.776445),
        (0.975, 9, 2.262157),
        (0.975, 30, 2.042272),
        (0.995, 10, 3.169273),
        (0.95, 5, 2.015048),
        (0.975, 17.776, 2.1028),  # not a whole number (Welch); half the width of R's interval below over its SE
        (0.975, 1e7, 1.959964),  # the normal distribution's quantile in the limit
    ],
)
def test_t_quantiles_match_the_published_tables(q, df, expected):
    assert t_quantile(q, df) == pytest.approx(expected, abs=1e-4 if df == 17.776 else 2e-6)
    assert t_quantile(1 - q, df) == pytest.approx(-t_quantile(q, df))


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 1.0, 4.2, 100.0])
def test_t_cdf_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_quantile_and_cdf_invert_each_other():
    for df in (1, 3, 7.5, 40):
        for q in (0.001, 0.05, 0.3, 0.5, 0.8, 0.975, 0.9999):
            assert t_cdf(t_quantile(q, df), df) == pytest.approx(q, rel=1e-9)


def test_tails_of_the_t_distribution():
    assert t_two_sided_p(0.0, 5) == 1.0
    assert t_two_sided_p(math.inf, 5) == 0.0 and t_two_sided_p(-math.inf, 5) == 0.0
    assert t_two_sided_p(-2.0, 5) == t_two_sided_p(2.0, 5)
    assert 0 < t_two_sided_p(40.0, 3) < 1e-4


def test_incomplete_beta_has_its_known_values():
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # the uniform distribution
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # 1 - sum of binomial terms, by hand
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert betainc(2.0, 5.0, 0.0) == 0.0 and betainc(2.0, 5.0, 1.0) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: t_quantile(1.0, 4), "q must be a probability"),
        (lambda: t_quantile(0.5, 0), "df"),
        (lambda: t_cdf(1.0, float("nan")), "df"),
        (lambda: t_two_sided_p(float("nan"), 3), "t is nan"),
        (lambda: betainc(-1.0, 1.0, 0.5), "a > 0"),
        (lambda: betainc(1.0, 1.0, 1.5), "0 <= x <= 1"),
    ],
)
def test_the_distribution_functions_reject_arguments_outside_their_domain(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- compare -----------------------------------------------------------------------------------------------------


def test_a_paired_comparison_reproduces_the_worked_example():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE)
    c = compare(DRUG_1, DRUG_2)
    assert c.paired and c.n == 10 and c.df == 9
    assert c.difference == pytest.approx(-1.58)
    assert c.t == pytest.approx(-4.0621, abs=1e-4)
    assert c.p == pytest.approx(0.002833, abs=1e-6)
    assert c.ci == pytest.approx((-2.4598858, -0.7001142), abs=1e-6)
    assert c.supported and c.verdict == "supported"


def test_a_welch_comparison_reproduces_the_worked_example():
    # R: t.test(extra ~ group, data = sleep)
    c = compare(DRUG_1, DRUG_2, paired=False)
    assert not c.paired and c.n == 20
    assert c.df == pytest.approx(17.776, abs=1e-3)
    assert c.t == pytest.approx(-1.8608, abs=1e-4)
    assert c.p == pytest.approx(0.07939, abs=1e-5)
    assert c.ci == pytest.approx((-3.3654832, 0.2054832), abs=1e-6)
    assert not c.supported and c.verdict == "not supported"


def test_pairing_sees_a_consistent_difference_that_the_spread_between_seeds_hides():
    seeds_effect = [90.0, 95.0, 85.0, 92.0, 88.0]  # the seed moves both variants alike
    a = [x + 0.3 + 0.05 * (-1) ** i for i, x in enumerate(seeds_effect)]
    assert compare(a, seeds_effect).supported
    assert not compare(a, seeds_effect, paired=False).supported


def test_supported_means_the_interval_excludes_zero_and_p_is_below_its_level():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(2, 8)
        a = [rng.gauss(0.5, 1) for _ in range(n)]
        b = [rng.gauss(0.0, 1) for _ in range(n)]
        for paired in (True, False):
            for level in (0.9, 0.95, 0.99):
                c = compare(a, b, paired=paired, level=level)
                assert c.ci[0] < c.difference < c.ci[1]
                if abs(c.p - (1 - level)) > 1e-9:
                    assert c.supported == (c.p < 1 - level)


def test_swapping_the_sides_mirrors_the_comparison():
    c, mirrored = compare(DRUG_1, DRUG_2), compare(DRUG_2, DRUG_1)
    assert mirrored.difference == pytest.approx(-c.difference)
    assert mirrored.ci == pytest.approx((-c.ci[1], -c.ci[0]))
    assert mirrored.p == pytest.approx(c.p) and mirrored.supported == c.supported


def test_a_wider_level_gives_a_wider_interval():
    narrow, wide = compare(DRUG_1, DRUG_2, level=0.9), compare(DRUG_1, DRUG_2, level=0.99)
    assert wide.ci[0] < narrow.ci[0] and narrow.ci[1] < wide.ci[1]
    assert wide.p == narrow.p


def test_identical_values_on_every_seed_are_no_difference():
    c = compare([90.0, 91.0, 92.0], [90.0, 91.0, 92.0])
    assert c.difference == 0 and c.ci == (0.0, 0.0) and c.p == 1.0 and math.isnan(c.t)
    assert not c.supported and c.constant


def test_the_same_nonzero_difference_on_every_seed_is_supported():
    c = compare([91.0, 92.0, 93.0], [90.0, 91.0, 92.0])
    assert c.difference == pytest.approx(1.0) and c.t == math.inf and c.p == 0.0
    assert c.supported and c.constant
    welch = compare([1.0, 1.0], [0.0, 0.0], paired=False)
    assert welch.supported and welch.t == math.inf


@pytest.mark.parametrize(
    "a, b, kwargs, message",
    [
        ([1.0], [2.0], {}, "at least 2 seeds; got 1"),
        ([1.0, 2.0], [2.0, 3.0, 4.0], {}, "equal numbers"),
        ([1.0], [2.0, 3.0], {"paired": False}, "a_values has 1"),
        ([], [], {}, "at least 2 seeds; got 0"),
        ([1.0, float("nan")], [1.0, 2.0], {}, r"a_values\[1\] is nan"),
        ([1.0, 2.0], [1.0, float("inf")], {}, r"b_values\[1\] is inf"),
        (["x", "y"], [1.0, 2.0], {}, "must be numbers"),
        ([1.0, 2.0], [1.0, 3.0], {"level": 95}, "level must be"),
    ],
)
def test_compare_refuses_what_it_cannot_compare_and_says_why(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare(a, b, **kwargs)


def make_comparison(difference, low, high, p=0.5, level=0.95):
    return Comparison(difference, (low, high), difference, p, 4.0, 5, 5, True, level)


@pytest.mark.parametrize(
    "comparison, sentence",
    [
        (make_comparison(0.12, 0.03, 0.21, p=0.01),
         "BN before ReLU scores 0.12 points higher than BN after ReLU (95 % CI 0.03 to 0.21); "
         "the seeds support the difference."),
        (make_comparison(-0.12, -0.21, -0.03, p=0.01),
         "BN before ReLU scores 0.12 points lower than BN after ReLU (95 % CI 0.03 to 0.21); "
         "the seeds support the difference."),
        (make_comparison(0.05, -0.10, 0.20),
         "BN before ReLU scores 0.05 points higher than BN after ReLU (95 % CI 0.10 lower to 0.20 higher); "
         "the seeds do not support a difference."),
        (make_comparison(-0.05, -0.20, 0.10),
         "BN before ReLU scores 0.05 points lower than BN after ReLU (95 % CI 0.20 lower to 0.10 higher); "
         "the seeds do not support a difference."),
        (make_comparison(0.001, -0.10, 0.10),
         "BN before ReLU and BN after ReLU score the same to 2 decimals on average "
         "(95 % CI 0.10 lower to 0.10 higher); the seeds do not support a difference."),
        (make_comparison(0.0, 0.0, 0.0, p=1.0),
         "BN before ReLU and BN after ReLU score exactly the same on every seed; there is no difference to support."),
        (make_comparison(0.3, 0.3, 0.3, p=0.0),
         "BN before ReLU scores 0.30 points higher than BN after ReLU on every seed alike; "
         "the seeds support the difference."),
        (make_comparison(0.12, 0.01, 0.23, p=0.04, level=0.9),
         "BN before ReLU scores 0.12 points higher than BN after ReLU (90 % CI 0.01 to 0.23); "
         "the seeds support the difference."),
    ],
)
def test_describe_reads_as_one_english_sentence_in_every_branch(comparison, sentence):
    assert comparison.describe("BN before ReLU", "BN after ReLU") == sentence


def test_describe_takes_the_unit_digits_and_verb():
    c = compare([0.30, 0.25, 0.28], [0.10, 0.12, 0.09])
    text = c.describe("with dropout", "without", unit="", digits=3, verb="is")
    assert text.startswith("with dropout is 0.173 higher than without (95 % CI ")
    assert "  " not in text and text.endswith("the seeds support the difference.")


def test_the_rule_is_one_sentence_naming_the_test_and_the_threshold():
    assert "paired t-test" in RULE and "p < 0.05" in RULE and "95 % confidence interval excludes zero" in RULE


def test_p_values_format_for_a_table():
    assert format_p(0.0028329) == "0.003"
    assert format_p(0.0004) == "< 0.001"
    assert format_p(1.0) == "1.000"


# --- Spread ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(97.5, 97.9, 98.1), (1.0, 2.0), (0.25, 0.5, 0.75, 3.0, -1.0)])
def test_spread_is_the_mean_and_sample_standard_deviation(values):
    spread = Spread.of(values)
    assert spread.mean == pytest.approx(statistics.fmean(values))
    assert spread.std == pytest.approx(statistics.stdev(values))
    assert spread.values == tuple(values) and spread.n == len(values)


def test_spread_gives_the_median_and_the_range():
    spread = Spread.of([14.0, 9.0, 15.5])
    assert (spread.median, spread.low, spread.high) == (14.0, 9.0, 15.5)
    assert Spread.of([2.0, 3.0]).median == 2.5


def test_spread_formats_mean_and_std_alike():
    spread = Spread.of([1.0, 2.0])
    assert str(spread) == "1.50 ± 0.71"
    assert f"{spread:.4f}" == "1.5000 ± 0.7071"
    assert f"{spread}" == "1.50 ± 0.71"


def test_one_value_has_no_measurable_spread():
    spread = Spread.of([3])
    assert spread.mean == 3.0 and math.isnan(spread.std)
    assert str(spread) == "3.00 (one value)"


def test_spread_refuses_no_values_or_values_that_are_not_finite_numbers():
    with pytest.raises(ValueError, match="at least one value"):
        Spread.of([])
    with pytest.raises(ValueError, match=r"values\[1\] is nan"):
        Spread.of([1.0, float("nan")])


# --- a number recorded elsewhere against our seeds

def test_prediction_interval_is_mean_plus_minus_t_times_s_times_sqrt_one_plus_one_over_n():
    low, high = prediction_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) * math.sqrt(1.2)  # t_{0.975, 4}, s^2 = 2.5, n = 5
    assert low == pytest.approx(3.0 - half, rel=1e-9) and high == pytest.approx(3.0 + half, rel=1e-9)


def test_a_higher_level_gives_a_wider_interval_and_two_values_a_wide_one():
    values = [97.6, 97.8, 97.7, 97.9]
    low90, high90 = prediction_interval(values, level=0.90)
    low95, high95 = prediction_interval(values, level=0.95)
    assert low95 < low90 < high90 < high95
    low, high = prediction_interval([1.0, 2.0])  # t_{0.975, 1} = 12.706
    assert high - low == pytest.approx(2 * 12.706204736174698 * math.sqrt(0.5) * math.sqrt(1.5), rel=1e-9)


def test_within_the_interval_or_outside_it():
    values = [97.6, 97.8, 97.7, 97.9, 97.75]
    low, high = prediction_interval(values)
    assert within_prediction_interval(97.77, values)
    assert not within_prediction_interval(round(high + 0.02, 2), values)
    assert not within_prediction_interval(round(low - 0.02, 2), values)


def test_equal_values_give_one_point_and_only_the_recorded_rounding_widens_it():
    assert prediction_interval([100.0, 100.0, 100.0]) == (100.0, 100.0)
    assert within_prediction_interval(100.00, [99.996] * 5)  # 99.996 rounds to 100.00
    assert not within_prediction_interval(99.98, [100.0] * 5)
    assert within_prediction_interval(11.3, [11.34] * 3, decimals=1)


@pytest.mark.parametrize(
    "values, kwargs, message",
    [
        ([97.0], {}, "at least 2 finite numbers"),
        ([97.0, float("nan")], {}, "at least 2 finite numbers"),
        ([97.0, 98.0], {"level": 95}, "level must be a probability"),
    ],
)
def test_bad_values_or_level_are_clear_errors(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prediction_interval(values, **kwargs)


def test_a_recorded_number_that_is_not_a_number_is_a_clear_error():
    with pytest.raises(ValueError, match="recorded must be a finite number"):
        within_prediction_interval("97.77", [97.0, 98.0])


@pytest.mark.parametrize(
    ("comparison", "sentence"),
    [
        (make_comparison(0.001, -0.10, 0.10),
         "The shift with BatchNorm and without are the same to 2 decimals on average "
         "(95 % CI 0.10 lower to 0.10 higher); the seeds do not support a difference."),
        (make_comparison(0.0, 0.0, 0.0, p=1.0),
         "The shift with BatchNorm and without are exactly the same on every seed; there is no difference to support."),
        (make_comparison(0.3, 0.3, 0.3, p=0.0),
         "The shift with BatchNorm is 0.30 points higher than without on every seed alike; "
         "the seeds support the difference."),
    ],
)
def test_describe_with_another_verb_keeps_it_in_every_branch(comparison, sentence):
    assert comparison.describe("The shift with BatchNorm", "without", verb="is") == sentence
