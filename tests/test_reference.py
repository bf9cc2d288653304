"""bnlab.reference: where a number recorded elsewhere lies against the spread of our seeds."""

import math

import pytest

from bnlab.reference import prediction_interval, within_prediction_interval


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
