"""Size-aware transfer: the fit of each hyperparameter's optimum against log parameter count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wgtune.search.size_prior import SHARED, SLOPE_PRIOR_SD, SizeTrials, fit_sizes, rank_weights

U0 = math.log(1e6)


def size(n: int, values, scores, options=(), label: str = "") -> SizeTrials:
    return SizeTrials(n, tuple({"lr": float(v)} for v in values), tuple(float(s) for s in scores), label or str(n),
                      tuple(options))


def peaked(rng: np.random.Generator, n: int, optimum: float, spread: float = 0.3, k: int = 24) -> SizeTrials:
    """k trials around `optimum`, scored by closeness to it (the better half lies near it)."""
    values = optimum + rng.normal(0, spread, k)
    return size(n, values, -((values - optimum) ** 2) + rng.normal(0, 1e-3, k))


def test_rank_weights_are_positive_decreasing_and_sum_to_one():
    w = rank_weights(6)
    assert np.all(w > 0) and np.all(np.diff(w) < 0) and math.isclose(w.sum(), 1.0)
    assert rank_weights(1).tolist() == [1.0]


def test_slope_is_recovered_on_data_with_a_known_slope():
    rng = np.random.default_rng(1)
    ns = [10**6, 10**7, 10**8, 10**9]
    sizes = [peaked(rng, n, -3.0 - 0.5 * (math.log(n) - U0)) for n in ns]

    fit = fit_sizes(sizes, 3 * 10**9, ["lr"]).dims["lr"]

    assert fit.slope_se < 0.1  # four sizes over three decades pin the slope: the prior barely matters
    assert abs(fit.slope - (-0.5)) < 3 * fit.slope_se
    truth = -3.0 - 0.5 * (math.log(3e9) - U0)
    assert fit.low < truth < fit.high


def test_a_flat_optimum_gets_a_slope_near_zero():
    rng = np.random.default_rng(2)
    sizes = [peaked(rng, n, -3.0) for n in (10**6, 10**7, 10**8)]

    fit = fit_sizes(sizes, 10**9, ["lr"]).dims["lr"]

    assert abs(fit.slope) < 3 * fit.slope_se and fit.slope_se < 0.15


def _simulated_coverage(target: float, sims: int = 200) -> tuple[float, float]:
    """Data drawn as the method models them: the slope from its prior; each size's top trials a
    cloud whose centre misses the optimum by one draw of the cloud's spread, a SHARED part of that
    miss common to every size. Returns (coverage of the true optimum, mean band half-width)."""
    rng = np.random.default_rng(3)
    ns = (10**6, 4 * 10**6, 16 * 10**6)
    hits, halves = 0, []
    for _ in range(sims):
        a, b, s = rng.normal(-4, 1), rng.normal(0, SLOPE_PRIOR_SD), rng.uniform(0.2, 0.6)
        shared = rng.normal(0, s * math.sqrt(SHARED))
        sizes = []
        for n in ns:
            optimum = a + b * (math.log(n) - U0)
            centre = optimum + shared + rng.normal(0, s * math.sqrt(1 - SHARED))
            top = centre + rng.normal(0, s, 12)
            rest = rng.uniform(-10, 0, 12)  # the worse half: below the median score, never "top"
            scores = np.concatenate([rng.uniform(1, 2, 12), rng.uniform(-2, -1, 12)])  # ranks unrelated to position
            sizes.append(size(n, np.concatenate([top, rest]), scores))
        fit = fit_sizes(sizes, int(math.exp(target)), ["lr"]).dims["lr"]
        truth = a + b * (target - U0)
        hits += fit.low <= truth <= fit.high
        halves.append((fit.high - fit.low) / 2)
    return hits / sims, float(np.mean(halves))


@pytest.mark.parametrize("target", [math.log(2e6), math.log(8e6), math.log(1e8)], ids=["between", "inside", "beyond"])
def test_the_95_percent_band_covers_the_truth_at_its_nominal_rate(target):
    coverage, _ = _simulated_coverage(target)

    # Binomial sd of a 0.95 rate over 200 simulations is 0.015; a band too narrow or too wide shows.
    assert 0.90 <= coverage <= 0.99


def test_extrapolating_gives_a_wider_band_than_interpolating_and_wider_the_further_out():
    rng = np.random.default_rng(4)
    sizes = [peaked(rng, n, -3.0 - 0.3 * (math.log(n) - U0)) for n in (10**6, 10**7)]

    sd = {n: fit_sizes(sizes, n, ["lr"]).dims["lr"] for n in (3 * 10**6, 10**8, 10**9, 3 * 10**5)}

    assert sd[10**8].extrapolation > 0 and sd[3 * 10**6].extrapolation == 0
    assert sd[3 * 10**6].sd < sd[10**8].sd < sd[10**9].sd
    assert sd[3 * 10**6].sd < sd[3 * 10**5].sd  # below the smallest too


def test_one_size_gives_slope_zero_and_a_band_that_widens_with_the_size_gap():
    rng = np.random.default_rng(5)
    one = [peaked(rng, 10**7, -4.0)]

    at_own = fit_sizes(one, 10**7, ["lr"]).dims["lr"]
    far = fit_sizes(one, 10**9, ["lr"]).dims["lr"]

    assert at_own.slope == 0.0 and at_own.slope_se == SLOPE_PRIOR_SD
    assert math.isclose(at_own.sd, at_own.sizes[0].sd)
    assert math.isclose(far.sd**2, at_own.sd**2 + (SLOPE_PRIOR_SD * math.log(100)) ** 2)
    assert far.centre == at_own.centre


def test_identical_top_trials_are_not_certain_with_a_floor():
    same = [size(10**6, [-3.0] * 20, range(20))]

    fit = fit_sizes(same, 10**6, ["lr"], min_sd={"lr": 0.1}).dims["lr"]

    assert math.isclose(fit.sd, 0.1) and fit.low < -3.0 < fit.high


def test_the_worse_half_never_locates_the_optimum():
    # The neighbour's three worst trials used to become a cell's first points (issue 13, defect 2).
    values = [-3.0] * 10 + [-9.0] * 10
    scores = list(range(10, 20)) + list(range(10))

    fit = fit_sizes([size(10**6, values, scores)], 10**6, ["lr"]).dims["lr"]

    assert math.isclose(fit.centre, -3.0)


def test_option_shifts_are_estimated_and_predictions_follow_the_options():
    # SGD's best lr sits 1.6 decades above AdamW's at every size; the top trials mix both.
    rng = np.random.default_rng(6)
    shift = 1.6 * math.log(10)
    sizes = []
    for n in (10**6, 10**7):
        optimizer = rng.choice(["sgd", "adamw"], 24)
        values = -6.0 + np.where(optimizer == "sgd", shift, 0.0) + rng.normal(0, 0.2, 24)
        scores = rng.uniform(0, 1, 24)
        sizes.append(size(n, values, scores, [{"optimizer": str(o)} for o in optimizer]))

    fit = fit_sizes(sizes, 3 * 10**6, ["lr"]).dims["lr"]

    sgd, adamw = fit.at({"optimizer": "sgd"}), fit.at({"optimizer": "adamw"})
    assert sgd is not None and adamw is not None
    assert abs((sgd[0] - adamw[0]) - shift) < 0.3
    assert abs(sgd[0] - (-6.0 + shift)) < 3 * sgd[1] and abs(adamw[0] - (-6.0)) < 3 * adamw[1]
    assert fit.at({"optimizer": "lion"}) is None  # never seen: no estimable shift
    assert fit.at({"unrelated": 1}) == (fit.centre, fit.sd)  # a choice it is not conditioned on


def test_cells_of_one_size_are_pooled_into_one_regression_point():
    rng = np.random.default_rng(7)
    a, b = peaked(rng, 10**6, -3.0), peaked(rng, 10**6, -3.0)

    fit = fit_sizes([a, b, peaked(rng, 10**7, -3.5)], 10**8, ["lr"]).dims["lr"]

    assert len(fit.sizes) == 2 and "+" in fit.sizes[0].label


def test_names_without_values_are_left_out():
    fit = fit_sizes([size(10**6, [-3.0, -2.0], [1.0, 0.0])], 10**6, ["lr", "momentum"])

    assert set(fit.dims) == {"lr"}
    assert set(fit.describe()["dims"]["lr"]) >= {"slope", "slope_se", "centre", "band", "sizes"}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"target_n_params": 0}, "target_n_params"),
    ({"level": 1.0}, "level"),
    ({"top_k": 0}, "top_k"),
])
def test_bad_arguments_name_the_argument(kwargs, needle):
    args = {"sizes": [size(10**6, [-3.0], [1.0])], "target_n_params": 10**6, "names": ["lr"], **kwargs}
    with pytest.raises(ValueError, match=needle):
        fit_sizes(**args)


def test_size_trials_need_one_score_per_point():
    with pytest.raises(ValueError, match="one score"):
        SizeTrials(10**6, ({"lr": 1.0},), (), "x")
