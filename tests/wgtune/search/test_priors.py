"""Priors: a cell's own history as observations, its neighbours' as transfer and a narrowed box."""

from __future__ import annotations

import math

import pytest

from wgtune.search.priors import cell_priors, parse_params
from wgtune.spec.grid import Cell, PriorSettings
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
