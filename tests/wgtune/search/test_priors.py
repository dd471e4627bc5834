"""Priors: a cell's own history as observations, its neighbours' as transfer and a narrowed box."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from wgtune.search.priors import cell_priors, parse_params
from wgtune.spec.grid import Cell
from wgtune.spec.schema import PriorSettings
from wgtune.spec.spaces import load_space
from wgtune.tracking.summary import CellSummary, Observation

SPACE = load_space("erm", objective_defaults={})


def cell(model: str, family: str = "resnet", objective: str = "erm", dataset: str = "d", pretrained: bool = False):
    return Cell(dataset, model, family, model.split("-", 1)[1], objective, pretrained)


def obs(run: str, value: float | None, lr: float, wd: float = 1e-4, batch: int = 64, optimizer: str = "sgd"):
    # MLflow holds params as strings.
    params = {"lr": str(lr), "weight_decay": str(wd), "batch_size": str(batch), "optimizer": optimizer}
    return Observation(run, run, params, value)


def summary(cell_id: str, *observations: Observation) -> CellSummary:
    scored = [o for o in observations if o.value is not None]
    best = max(scored, key=lambda o: o.value) if scored else None
    return CellSummary(cell_id, "parent", finished=len(observations), best_value=best.value if best else None,
                       best_run_id=best.run_id if best else None, observations=tuple(observations))


SMALL, MID, BIG, VIT = cell("resnet-10"), cell("resnet-18"), cell("resnet-50"), cell("vit-tiny", "vit")
SIZES = {SMALL.id: 8_000_000, MID.id: 11_000_000, BIG.id: 23_000_000, VIT.id: 10_000_000}
PEERS = [SMALL, MID, BIG, VIT]


def test_own_history_becomes_observations_in_hyperopts_encoding_with_negated_accuracy():
    history = summary(MID.id, obs("r1", 0.7, 0.01), obs("r2", 0.4, 0.2, optimizer="adamw"))

    priors = cell_priors(MID, SPACE, {MID.id: history}, SIZES, PEERS, PriorSettings(transfer="none"))

    assert priors.observed_runs == ("r1", "r2")
    (vals1, loss1), (vals2, loss2) = priors.observations
    assert (loss1, loss2) == (-0.7, -0.4)
    assert math.isclose(vals1["lr"], 0.01) and vals1["optimizer"] == 0 and vals2["optimizer"] == 1
    assert vals1["batch_size"] == [32, 64, 128].index(64)
    assert priors.first_points == ()


def test_history_that_no_longer_fits_the_space_is_skipped_with_the_reason():
    history = summary(MID.id, obs("in", 0.7, 0.01), obs("out", 0.9, 5.0), obs("unscored", None, 0.01),
                      obs("gone", 0.5, 0.01, batch=256))

    priors = cell_priors(MID, SPACE, {MID.id: history}, SIZES, PEERS, PriorSettings(transfer="none"))

    assert priors.observed_runs == ("in",)
    reasons = dict(priors.skipped)
    assert "outside the current search space" in reasons["out"] and "lr" in reasons["out"]
    assert reasons["unscored"] == "no objective value was logged"
    assert "256" in reasons["gone"]


def test_a_diverged_trial_is_observed_as_a_failure_and_does_not_count_as_history():
    diverged = Observation("d", "d", obs("d", None, 0.25).params, None, diverged=True)
    summaries = {MID.id: summary(MID.id, diverged), SMALL.id: summary(SMALL.id, obs("s1", 0.8, 0.03)),
                 BIG.id: summary(BIG.id, obs("b1", 0.9, 0.01))}

    priors = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="none", top_k=2))

    [(vals, loss)] = priors.observations
    assert loss is None and math.isclose(vals["lr"], 0.25), "TPE ranks it below every loss"
    # No finished history yet, so the neighbours' best still go first.
    assert [p["lr"] for p in priors.first_params] == [0.03, 0.01]

    boxed = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="box", top_k=2, margin=0.0))
    lr = next(d for d in boxed.space.searched() if d.name == "lr")
    assert lr.args[1] == pytest.approx(0.03), "a diverged lr does not widen the box"
    assert boxed.observations == () and "outside the current search space" in dict(boxed.skipped)["d"]


def test_a_new_cell_first_tries_its_nearest_neighbours_best_configs():
    summaries = {
        SMALL.id: summary(SMALL.id, obs("s1", 0.6, 0.05), obs("s2", 0.8, 0.03)),
        BIG.id: summary(BIG.id, obs("b1", 0.9, 0.004), obs("b2", 0.5, 0.1)),
        VIT.id: summary(VIT.id, obs("v1", 0.95, 0.0005)),  # nearer in size, but another family
    }

    priors = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(top_k=2, narrow="none"))

    assert [n.cell_id for n in priors.neighbours] == [SMALL.id, BIG.id]  # nearer in log size first
    assert [p["lr"] for p in priors.first_params] == [0.03, 0.004]
    assert [SPACE.decode(v)["lr"] for v in priors.first_points] == [0.03, 0.004]
    assert priors.observations == () and not priors.narrowed


def test_neighbours_ask_the_same_question_dataset_objective_and_pretrained():
    others = [cell("resnet-10", dataset="other"), cell("resnet-10", objective="groupdro"),
              cell("resnet-10", pretrained=True)]
    summaries = {c.id: summary(c.id, obs(c.id, 0.9, 0.01)) for c in others}
    sizes = {**SIZES, **{c.id: 5_000_000 for c in others}}

    priors = cell_priors(MID, SPACE, summaries, sizes, [MID, *others], PriorSettings())

    assert priors.neighbours == () and priors.first_points == ()


def test_the_box_spans_the_neighbours_top_configs_and_survives_a_relaunch():
    summaries = {
        SMALL.id: summary(SMALL.id, obs("s1", 0.8, 0.03), obs("s2", 0.7, 0.02), obs("s3", 0.1, 0.0002)),
        BIG.id: summary(BIG.id, obs("b1", 0.9, 0.01), obs("b2", 0.6, 0.015)),
    }
    settings = PriorSettings(narrow="box", top_k=2, margin=0.0)

    first = cell_priors(MID, SPACE, summaries, SIZES, PEERS, settings)
    lr = next(d for d in first.space.searched() if d.name == "lr")

    assert first.narrowed
    assert lr.args[0] == pytest.approx(0.01) and lr.args[1] == pytest.approx(0.03)  # s3 is not in the top 2
    # Relaunched after its own trials, one of which lies outside that box: the box is kept,
    # widened to hold the cell's own history, and every own trial is an observation.
    summaries[MID.id] = summary(MID.id, obs("m1", 0.85, 0.02), obs("m2", 0.3, 0.1))
    again = cell_priors(MID, SPACE, summaries, SIZES, PEERS, settings)
    lr = next(d for d in again.space.searched() if d.name == "lr")

    assert again.narrowed and again.observed_runs == ("m1", "m2") and again.first_points == ()
    assert lr.args[0] == pytest.approx(0.01) and lr.args[1] == pytest.approx(0.1)


def test_params_logged_as_strings_parse_back_to_the_spaces_types():
    params = parse_params(SPACE, {"lr": "0.01", "weight_decay": "1e-05", "batch_size": "128", "optimizer": "adamw"})

    assert params == {"lr": 0.01, "weight_decay": 1e-05, "batch_size": 128, "optimizer": "adamw"}
    assert SPACE.contains(params) is None


def with_config(o: Observation, **settings: str) -> Observation:
    """`o` as a run that logged its whole config (`records.config_params`), with `settings` fixed."""
    from wgtune.tracking.records import config_params

    return replace(o, params={**o.params, **config_params({**o.params, **settings})})


EXPECTED = {"momentum": "0.9", "schedule": "cosine", "epochs": "10", "dataset": "d"}


def test_history_trained_under_other_fixed_settings_is_skipped_with_the_reason():
    """Guards issue 13, defect 1: only searched params were logged and parsed, so a change of a fixed
    setting (momentum, schedule, epochs, optimizer when fixed...) went unseen and such runs were used."""
    same = with_config(obs("same", 0.7, 0.01), **EXPECTED)
    other = with_config(obs("other", 0.9, 0.02), **{**EXPECTED, "epochs": "3", "momentum": "0.5"})
    legacy = obs("legacy", 0.6, 0.03)  # logged before configs were
    history = summary(MID.id, same, other, legacy)

    priors = cell_priors(MID, SPACE, {MID.id: history}, SIZES, PEERS, PriorSettings(transfer="none"),
                         {MID.id: EXPECTED})

    assert priors.observed_runs == ("same", "legacy") and priors.unverified == ("legacy",)
    reason = dict(priors.skipped)["other"]
    assert "epochs: 3 there, 10 here" in reason and "momentum: 0.5 there, 0.9 here" in reason
    assert priors.describe()["unverified_runs"] == ["legacy"]


def test_a_neighbour_trained_with_another_fixed_optimizer_is_no_transfer_point():
    """Guards issue 13, defect 1: a ViT cell fixing `optimizer: adamw` got a ResNet neighbour's SGD
    configuration as its first point. Here within one family a neighbour that fixed another optimizer
    is skipped, and its next best, trained alike, goes first."""
    fixed = load_space("erm", {"optimizer": "adamw"}, objective_defaults={})
    here = {**EXPECTED, "optimizer": "adamw"}
    summaries = {SMALL.id: summary(SMALL.id, with_config(obs("sgd", 0.9, 0.03), **{**EXPECTED, "optimizer": "sgd"}),
                                   with_config(obs("adamw", 0.8, 0.001), **here))}

    priors = cell_priors(MID, fixed, summaries, SIZES, PEERS, PriorSettings(narrow="none"), {MID.id: here})

    assert [p["lr"] for p in priors.first_params] == [0.001]
    assert "optimizer: sgd there, adamw here" in dict(priors.skipped)["sgd"]


def test_transfer_stays_within_a_model_family_unless_the_grid_says_otherwise():
    """Guards issue 13, defect 1: a neighbour could be of another model family (a ViT's optimum
    transferred to a ResNet). `priors: {across_families: true}` lets it in, after the same family."""
    summaries = {VIT.id: summary(VIT.id, obs("v1", 0.95, 0.0005)), BIG.id: summary(BIG.id, obs("b1", 0.9, 0.01))}

    within = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings())
    across = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(across_families=True))

    assert [n.cell_id for n in within.neighbours] == [BIG.id]
    assert [n.cell_id for n in across.neighbours] == [BIG.id, VIT.id]


def test_a_failed_transfer_point_is_not_proposed_first_again_and_errored_trials_are_failed_observations():
    """Guards issue 13, defects 4 and 7: a transfer point that diverged or errored was proposed first
    again on relaunch (no finished history yet), and an errored trial, a failed TPE point inside its
    launch, was forgotten after it."""
    summaries = {SMALL.id: summary(SMALL.id, obs("s1", 0.8, 0.03)), BIG.id: summary(BIG.id, obs("b1", 0.9, 0.01))}
    first = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="none"))
    assert [p["lr"] for p in first.first_params] == [0.03, 0.01]

    diverged = replace(obs("d", None, 0.03), diverged=True)
    errored = replace(obs("e", None, 0.01), errored=True)
    summaries[MID.id] = summary(MID.id, diverged, errored)
    again = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="none"))

    assert again.first_params == ()
    assert again.observed_runs == ("d", "e") and [loss for _, loss in again.observations] == [None, None]


def test_an_asha_stopped_trial_is_observed_at_its_best_so_far_but_is_no_transfer_point():
    """Guards issue 13, defect 7: ASHA-stopped trials entered the neighbour ranking as if fully trained.
    Their value (best so far) is what TPE saw in their launch, so it stays their observation."""
    stopped = replace(obs("s-stopped", 0.95, 0.2), stopped=True)
    summaries = {SMALL.id: summary(SMALL.id, stopped, obs("s-full", 0.8, 0.03))}

    priors = cell_priors(BIG, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="none"))
    own = cell_priors(MID, SPACE, {MID.id: summary(MID.id, stopped)}, SIZES, PEERS, PriorSettings(transfer="none"))

    assert [p["lr"] for p in priors.first_params] == [0.03]
    assert [loss for _, loss in own.observations] == [-0.95]


def test_a_run_met_twice_is_skipped_once_and_top_k_counts_configs_not_neighbours():
    """Guards issue 13, defect 8: `skipped` listed a run once per use (box, then first points), and
    `top_k` was both how many neighbours and how many configs of each spanned the box."""
    outside = obs("far", 0.99, 5.0)  # lr outside the space: skipped as a box point and as a first point
    summaries = {c.id: summary(c.id, outside if c is SMALL else obs(f"{c.id}-1", 0.9, 0.01), obs(f"{c.id}-2", 0.5, 0.02))
                 for c in (SMALL, BIG, cell("resnet-101"))}
    sizes = {**SIZES, cell("resnet-101").id: 42_000_000}

    priors = cell_priors(MID, SPACE, summaries, sizes, [*PEERS, cell("resnet-101")],
                         PriorSettings(narrow="box", top_k=1, neighbours=2))

    assert [run for run, _ in priors.skipped] == ["far"]
    assert len(priors.neighbours) == 2


def ridge(model_size: int, n: int, offset: float = 0.0) -> list[Observation]:
    """A size's search around an optimum lr that falls 0.5 decades per decade of parameters."""
    best = -1.5 - 0.5 * (math.log10(model_size) - 7) + offset
    rng = np.random.default_rng(model_size % 1000)
    out = []
    for i in range(n):
        x = best + rng.normal(0, 0.4)
        out.append(obs(f"{model_size}-{i}", 0.9 - 0.3 * (x - best) ** 2, 10 ** x))
    return out


def test_a_new_cell_gets_a_size_fit_per_hyperparameter_and_with_narrow_soft_draws_from_it():
    """The size-aware prior is wired: a new cell's fit across its family's searched sizes (slope,
    centre, band per hyperparameter) is what `wgtune priors` shows; `narrow: soft` makes the random
    start-up draw from it, never changes the space TPE searches (so margin 0 works, every choice
    option stays, and nothing can creep across relaunches), and proposes the neighbours' bests, moved to its size along clear slopes, first."""
    sizes = {**SIZES, SMALL.id: 2_000_000, BIG.id: 50_000_000}
    summaries = {c.id: summary(c.id, *ridge(sizes[c.id], 14)) for c in (SMALL, BIG)}

    shown = cell_priors(MID, SPACE, summaries, sizes, PEERS, PriorSettings(narrow="none"))
    soft = cell_priors(MID, SPACE, summaries, sizes, PEERS, PriorSettings(narrow="soft", margin=0.0))

    fit = shown.describe()["size_fit"]["lr"]
    assert fit["sizes"] == 2 and fit["extrapolation_ln_n"] == 0
    assert fit["band"][0] < fit["centre"] < fit["band"][1]
    assert shown.startup_prior is None and shown.describe()["size_prior"]["drawn_from"] is False
    assert soft.startup_prior is not None and soft.space == SPACE
    assert soft.first_params[0] == soft.startup_prior.transferred[0]
    # Between the sizes, the centre sits between the two sizes' optima (lr 10^-1.35 and 10^-2.05).
    assert 10 ** -2.3 < fit["centre"] < 10 ** -1.1


def test_a_neighbour_with_too_few_trials_shapes_no_size_prior():
    """Guards issue 13, defect 2: any neighbour with one finished trial shaped a cell's prior."""
    summaries = {SMALL.id: summary(SMALL.id, *ridge(2_000_000, 3))}
    priors = cell_priors(MID, SPACE, summaries, SIZES, PEERS, PriorSettings(narrow="soft"))
    assert priors.startup_prior is None and "scored trials" in priors.describe()["size_prior"]["skipped"][0]["reason"]
