"""Soft, gated narrowing: bands from the size fit, mass kept outside, every choice kept, thin neighbours gated."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wgtune.search.soft_prior import (
    MIN_HALF_WIDTH,
    MIN_INFORMED,
    OUTSIDE,
    NeighbourTrials,
    SoftPrior,
    build_prior,
    gate,
)
from wgtune.spec.spaces import load_space

SPACE = load_space("erm", objective_defaults={})  # lr, weight_decay loguniform; batch_size, optimizer choices
LR_LOW, LR_HIGH = next(d.args[:2] for d in SPACE.dims if d.name == "lr")  # the shipped space's bounds
LR_RANGE = math.log(LR_HIGH / LR_LOW)


def trials(rng: np.random.Generator, k: int, lr: float, *, spread: float = 0.3, optimizer: str | None = None,
           batch_size: int | None = None) -> tuple:
    """k scored trials whose score peaks at `lr` (log10 spread `spread`); choices random unless given."""
    out = []
    for _ in range(k):
        x = math.log10(lr) + rng.normal(0, spread)
        params = {"lr": float(min(max(10**x, LR_LOW), LR_HIGH)), "weight_decay": float(10 ** rng.uniform(-6, -1)),
                  "batch_size": batch_size or int(rng.choice([32, 64, 128])),
                  "optimizer": optimizer or str(rng.choice(["sgd", "adamw"]))}
        out.append((params, -((x - math.log10(lr)) ** 2) + rng.normal(0, 1e-3)))
    return tuple(out)


def neighbour(label: str, n: int, rows: tuple) -> NeighbourTrials:
    return NeighbourTrials(label, n, rows)


def test_a_neighbour_needs_its_start_up_plus_informed_trials_to_shape_a_prior():
    rng = np.random.default_rng(0)
    need = 5 + MIN_INFORMED
    thin = neighbour("thin", 10**6, trials(rng, need - 1, 0.01))
    diverged = neighbour("diverged", 10**6, trials(rng, need - 1, 0.01) + (({"lr": 0.3}, math.nan),))
    enough = neighbour("enough", 10**7, trials(rng, need, 0.01))

    kept, skipped = gate([thin, diverged, enough], n_startup=5)

    assert [n.label for n in kept] == ["enough"]
    reasons = dict(skipped)
    assert f"{need - 1} scored trials" in reasons["thin"] and str(need) in reasons["thin"]
    assert "diverged" in reasons  # a diverged trial is not a score


def test_no_neighbour_past_the_gate_leaves_the_original_prior_and_says_why():
    rng = np.random.default_rng(1)
    prior = build_prior(SPACE, [neighbour("thin", 10**6, trials(rng, 3, 0.01))], 10**7, n_startup=5)

    assert not prior.informed and prior.bands == () and prior.choices == ()
    assert prior.skipped[0][0] == "thin"
    assert SPACE.contains(prior.sample(np.random.default_rng(0))) is None


def test_bands_centre_on_the_optimum_the_size_trend_predicts():
    rng = np.random.default_rng(2)
    # lr optimum falls 0.5 decades per decade of parameters; every trial SGD, batch 64.
    rows = {n: trials(rng, 20, 0.1 * (n / 1e6) ** -0.5, optimizer="sgd", batch_size=64) for n in (10**6, 10**8)}
    prior = build_prior(SPACE, [neighbour(str(n), n, r) for n, r in rows.items()], 10**7, n_startup=5)

    band = prior.band_for("lr", {"optimizer": "sgd", "batch_size": 64})

    assert band is not None and band.low < math.log(0.1 * 10**-0.5) < band.high
    assert abs(band.centre - math.log(0.1 * 10**-0.5)) < 0.3 * math.log(10)
    assert prior.fit.dims["lr"].slope < -0.3  # the data pull the slope toward -0.5 past its zero prior


def test_margin_zero_works_and_a_band_keeps_a_minimum_width():
    rng = np.random.default_rng(3)
    same = tuple(({"lr": 0.01, "weight_decay": 1e-4, "batch_size": 64, "optimizer": "sgd"}, float(s))
                 for s in rng.uniform(0, 1, 20))

    prior = build_prior(SPACE, [neighbour("same", 10**6, same)], 10**6, n_startup=5, margin=0.0)

    band = prior.band_for("lr", {"optimizer": "sgd", "batch_size": 64})
    assert band.high - band.low >= 2 * MIN_HALF_WIDTH * LR_RANGE - 1e-9
    draws = [prior.sample(rng) for _ in range(50)]
    assert all(SPACE.contains(d) is None for d in draws) and len({d["lr"] for d in draws}) > 40


def test_margin_widens_every_band_by_that_fraction_of_the_range():
    rng = np.random.default_rng(4)
    rows = [neighbour("a", 10**6, trials(rng, 20, 0.01, optimizer="sgd", batch_size=64))]
    tight = build_prior(SPACE, rows, 3 * 10**6, n_startup=5, margin=0.0)
    wide = build_prior(SPACE, rows, 3 * 10**6, n_startup=5, margin=0.05)

    combo = {"optimizer": "sgd", "batch_size": 64}
    a, b = tight.band_for("lr", combo), wide.band_for("lr", combo)
    assert math.isclose((b.high - b.low) - (a.high - a.low), 2 * 0.05 * LR_RANGE, rel_tol=1e-6)


def test_quantized_integer_and_normal_dimensions_with_identical_values_still_get_a_band():
    space = load_space("erm", {"batch_size": {"qloguniform": [16, 256, 16]}, "momentum": {"normal": [0.9, 0.05]}},
                       objective_defaults={})
    rows = tuple(({"lr": 0.01, "weight_decay": 1e-4, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9}, float(i))
                 for i in range(20))

    prior = build_prior(space, [neighbour("same", 10**6, rows)], 10**6, n_startup=5, margin=0.0)

    bs = prior.band_for("batch_size", {"optimizer": "sgd"})
    assert math.exp(bs.high) - math.exp(bs.low) >= 16 - 1e-6  # at least one q wide
    assert prior.band_for("momentum", {"optimizer": "sgd"}) is not None
    rng = np.random.default_rng(5)
    for _ in range(100):
        draw = prior.sample(rng)
        assert space.contains(draw) is None and isinstance(draw["batch_size"], int)


def test_choice_options_are_never_dropped():
    rng = np.random.default_rng(6)
    # Every neighbour trial used batch 128 and AdamW: today's box would keep only those.
    rows = [neighbour(str(n), n, trials(rng, 20, 0.001, optimizer="adamw", batch_size=128)) for n in (10**6, 10**7)]

    prior = build_prior(SPACE, rows, 3 * 10**6, n_startup=5)

    weights = {c.name: c.weights for c in prior.choices}
    assert len(weights["batch_size"]) == 3 and len(weights["optimizer"]) == 2
    assert min(weights["batch_size"]) >= OUTSIDE / 3 and min(weights["optimizer"]) >= OUTSIDE / 2
    assert max(weights["optimizer"]) == weights["optimizer"][1]  # adamw favoured
    draws = [prior.sample(rng) for _ in range(200)]
    assert {d["batch_size"] for d in draws} == {32, 64, 128} and {d["optimizer"] for d in draws} == {"sgd", "adamw"}


def test_the_mixture_keeps_prior_mass_outside_every_band():
    rng = np.random.default_rng(7)
    rows = [neighbour(str(n), n, trials(rng, 20, 0.01, spread=0.1, optimizer="sgd", batch_size=64))
            for n in (10**6, 10**7)]
    prior = build_prior(SPACE, rows, 3 * 10**6, n_startup=5)
    band = prior.band_for("lr", {"optimizer": "sgd", "batch_size": 64})
    inside = (band.high - band.low) / LR_RANGE  # the full draw's chance of landing in the band

    draws = [prior.sample(rng) for _ in range(600)]
    mine = [d for d in draws if d["optimizer"] == "sgd" and d["batch_size"] == 64]
    outside = np.mean([not band.low <= math.log(d["lr"]) <= band.high for d in mine])

    expected = OUTSIDE * (1 - inside)
    assert abs(outside - expected) < 4 * math.sqrt(expected * (1 - expected) / len(mine))
    assert outside > 0.1


def test_transferred_points_are_the_neighbours_bests_moved_only_along_a_clear_slope():
    rng = np.random.default_rng(10)
    steep = {n: trials(rng, 20, 0.1 * (n / 1e6) ** -0.5, spread=0.1, optimizer="sgd", batch_size=64)
             for n in (10**6, 10**8)}
    prior = build_prior(SPACE, [neighbour(str(n), n, r) for n, r in steep.items()], 10**9, n_startup=5)
    best = {n: max(r, key=lambda t: t[1])[0] for n, r in steep.items()}

    slope = prior.fit.dims["lr"].slope
    assert abs(slope) >= 2 * prior.fit.dims["lr"].slope_se
    first = prior.transferred[0]  # the nearest neighbour's best, moved a decade up in size
    assert math.isclose(math.log(first["lr"]), math.log(best[10**8]["lr"]) + slope * math.log(10), rel_tol=1e-9)
    assert first["optimizer"] == best[10**8]["optimizer"] and len(prior.transferred) == 2

    flat = [neighbour("one", 10**6, trials(rng, 20, 0.01))]  # one size: slope 0 ± prior, not moved
    one = build_prior(SPACE, flat, 10**8, n_startup=5)
    assert one.transferred == (max(flat[0].trials, key=lambda t: t[1])[0],)


def test_a_best_trial_at_the_edge_of_its_band_widens_that_side():
    rng = np.random.default_rng(8)
    rows = [neighbour("a", 10**6, trials(rng, 20, 0.01, spread=0.1, optimizer="sgd", batch_size=64))]
    combo = {"optimizer": "sgd", "batch_size": 64}
    plain = build_prior(SPACE, rows, 10**6, n_startup=5).band_for("lr", combo)
    edge = math.exp(plain.high)  # the cell's own best so far sits on the band's upper edge

    widened = build_prior(SPACE, rows, 10**6, n_startup=5, own_best={**combo, "lr": edge, "weight_decay": 1e-4})

    band = widened.band_for("lr", combo)
    assert band.widened and band.high > plain.high + 0.5 * (plain.high - plain.low) / 2 and band.low == plain.low


def test_holds_and_describe():
    rng = np.random.default_rng(9)
    rows = [neighbour(str(n), n, trials(rng, 20, 0.01)) for n in (10**6, 10**7)]
    prior = build_prior(SPACE, rows, 3 * 10**6, n_startup=5)

    combo = {"optimizer": "sgd", "batch_size": 64}
    band = prior.band_for("lr", combo)
    wd = prior.band_for("weight_decay", combo)
    inside = {**combo, "lr": math.exp(band.centre), "weight_decay": math.exp(wd.centre)}
    assert prior.holds(inside)
    assert not prior.holds({**inside, "lr": math.exp(band.low) / 2})  # below the band (inside the space)
    described = json.loads(json.dumps(prior.describe()))
    assert described["sources"] == ["1000000", "10000000"] and described["fit"]["dims"]["lr"]["band"]
    assert {b["name"] for b in described["bands"]} == {"lr", "weight_decay"}


@pytest.mark.parametrize(("kwargs", "needle"), [({"outside": 0.0}, "outside"), ({"margin": -0.1}, "margin")])
def test_bad_settings_name_the_setting(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        build_prior(SPACE, [], 10**6, n_startup=5, **kwargs)


def test_an_uninformed_prior_is_the_original_space():
    prior = SoftPrior(SPACE)
    assert not prior.informed and prior.holds({"lr": 0.3, "weight_decay": 1e-6, "batch_size": 32, "optimizer": "sgd"})
