"""The training loop: what it reports, how it selects, resumes and fails."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.trainables.wilds_layouts import make_waterbirds, textured
from trainables.config import TrialConfig
from trainables.datasets import load_dataset
from trainables.datasets.cache import CACHE_DIR_ENV
from trainables.metrics import CHECKPOINT_SECONDS, ELAPSED_SECONDS, IMAGES_PER_S, IMAGES_SEEN, TIMINGS
from trainables.models import create_model, resolve
from trainables.objectives import OBJECTIVES
from trainables.sampling import SAMPLERS
from trainables.setting import resolve_config
from trainables.training import CHECKPOINT_FILE, DivergedError, resolve_preprocessing, train

TINY = {"dataset": "spurious_digits", "model": "resnet-10x0.25", "epochs": 2, "batch_size": 128, "lr": 0.05,
        "image_size": 16}


def strip(report: dict, *prefixes: str) -> dict:
    """A report without its timing metrics (and keys with `prefixes`): what identical runs share."""
    return {k: v for k, v in report.items() if k not in TIMINGS and not k.startswith(prefixes)}


def run(config: dict, tmp_path: Path, **kwargs) -> tuple[list[dict], list[Path], dict]:
    reports: list[dict] = []
    checkpoints: list[Path] = []

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        reports.append(dict(metrics))
        checkpoints.append(checkpoint_dir)
        assert (checkpoint_dir / CHECKPOINT_FILE).exists(), "the checkpoint is written before the report"

    final = train(config, report, workdir=tmp_path, **kwargs)
    return reports, checkpoints, final


def test_reports_every_epoch_with_per_group_metrics_of_val_and_test(tmp_path):
    reports, checkpoints, final = run({**TINY, "eval_test": "every"}, tmp_path)

    assert [r["epoch"] for r in reports] == [1.0, 2.0]
    for r in reports:
        for split in ("val", "test"):
            assert {f"{split}/avg_acc", f"{split}/worst_acc", f"{split}/weighted_acc", f"{split}/loss"} <= r.keys()
            groups = [r[f"{split}/acc_g{k}"] for k in range(4)]
            assert r[f"{split}/worst_acc"] == min(groups)
            assert all(math.isfinite(r[f"{split}/loss_g{k}"]) for k in range(4))
        assert all(math.isfinite(r[f"train/loss_g{k}"]) for k in range(4))
        assert math.isfinite(r["train/loss"]) and r[IMAGES_PER_S] > 0 and r[CHECKPOINT_SECONDS] > 0
    assert final == reports[-1]
    assert len(set(checkpoints)) == 1


def test_the_best_epoch_is_chosen_by_validation_worst_group_accuracy(tmp_path):
    reports, _, final = run({**TINY, "epochs": 3}, tmp_path)

    best = max(reports, key=lambda r: r["val/worst_acc"])  # first maximum, like the loop
    assert final["best/epoch"] == best["epoch"]
    assert final["best/val_worst_acc"] == best["val/worst_acc"]
    assert final["best/test_worst_acc"] == best["test/worst_acc"]
    assert final["best/test_avg_acc"] == best["test/avg_acc"]


def test_test_is_evaluated_only_where_validation_improves_and_selection_is_unchanged(tmp_path):
    every, _, final_every = run({**TINY, "epochs": 4, "eval_test": "every"}, tmp_path / "every")
    best, _, final_best = run({**TINY, "epochs": 4, "eval_test": "best"}, tmp_path / "best")

    record = float("-inf")
    for e, b in zip(every, best):
        improved = e["val/worst_acc"] > record  # the first epoch always improves
        record = max(record, e["val/worst_acc"])
        tested = {k: v for k, v in e.items() if k.startswith("test/")}
        assert {k: v for k, v in b.items() if k.startswith("test/")} == (tested if improved else {})
        assert strip(b, "test/") == strip(e, "test/")
    assert any(not k.startswith("test/") for k in best[0])
    assert {k: v for k, v in final_best.items() if k.startswith("best/")} == \
        {k: v for k, v in final_every.items() if k.startswith("best/")}


def test_same_seed_gives_identical_runs_on_cpu(tmp_path):
    first, _, _ = run(TINY, tmp_path / "a")
    second, _, _ = run(TINY, tmp_path / "b")

    assert [strip(r) for r in first] == [strip(r) for r in second]


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_resuming_from_a_checkpoint_continues_exactly_where_it_stopped(sampler, tmp_path):
    config = {**TINY, "epochs": 3, "sampler": sampler}
    straight, _, _ = run(config, tmp_path / "straight")

    # Stop after epoch 1 by raising from the report, as a killed worker would.
    class Stop(Exception):
        pass

    def stop_after_first(metrics: dict, checkpoint_dir: Path) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(config, stop_after_first, workdir=tmp_path / "interrupted")
    resumed, _, _ = run(config, tmp_path / "resumed", resume_from=tmp_path / "interrupted" / "checkpoint")

    assert [r["epoch"] for r in resumed] == [2.0, 3.0]
    # Identical per-group training losses: the resumed epochs drew the same batches in the same order.
    assert [strip(r) for r in resumed] == [strip(r) for r in straight[1:]]


def test_images_seen_count_every_trained_image_and_carry_across_a_resume(tmp_path):
    config = {**TINY, "epochs": 3, "batch_size": 83}  # 1079 = 13 x 83: every image trains each epoch
    straight, _, _ = run(config, tmp_path / "straight")

    assert [r[IMAGES_SEEN] for r in straight] == [1079.0, 2158.0, 3237.0]
    seconds = [r[ELAPSED_SECONDS] for r in straight]
    assert 0 < seconds[0] < seconds[1] < seconds[2]

    class Stop(Exception):
        pass

    def stop_after_first(metrics: dict, checkpoint_dir: Path) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(config, stop_after_first, workdir=tmp_path / "interrupted")
    checkpoint = torch.load(tmp_path / "interrupted" / "checkpoint" / CHECKPOINT_FILE, weights_only=True)
    resumed, _, _ = run(config, tmp_path / "resumed", resume_from=tmp_path / "interrupted" / "checkpoint")

    # The resumed attempt continues both counts from its checkpoint: the trial's cost, not the attempt's.
    assert [r[IMAGES_SEEN] for r in resumed] == [2158.0, 3237.0]
    assert checkpoint["images_seen"] == 1079 and checkpoint["elapsed_s"] > 0
    assert resumed[0][ELAPSED_SECONDS] > checkpoint["elapsed_s"]
    assert resumed[1][ELAPSED_SECONDS] > resumed[0][ELAPSED_SECONDS]


def test_a_checkpoint_of_another_sampler_is_refused(tmp_path):
    run({**TINY, "epochs": 1}, tmp_path / "a")

    with pytest.raises(ValueError, match="differs in sampler"):
        train({**TINY, "sampler": "group_balanced"}, workdir=tmp_path / "b", resume_from=tmp_path / "a" / "checkpoint")


def test_the_checkpoint_records_the_resolved_environments_and_sampler(tmp_path):
    run({**TINY, "objective": "groupdro", "epochs": 1}, tmp_path)

    config = torch.load(tmp_path / "checkpoint" / CHECKPOINT_FILE, weights_only=True)["config"]
    assert (config["environments"], config["sampler"]) == ("groups", "group_balanced")


def test_per_group_losses_are_reported_and_are_those_of_the_model(tmp_path):
    # 1079 training images in 13 batches of 83: ERM's `train/loss` (a mean of batch means) is then
    # the mean over examples, which the per-group training losses must reproduce.
    reports, _, final = run({**TINY, "epochs": 1, "batch_size": 83}, tmp_path)

    cfg = TrialConfig.from_mapping(resolve_config({**TINY, "batch_size": 83}))
    data = load_dataset("spurious_digits", None, resolve_preprocessing(resolve(cfg.model), cfg.dataset, cfg))
    counts = torch.bincount(data.train.g, minlength=4).double()
    train_losses = torch.tensor([final[f"train/loss_g{k}"] for k in range(4)], dtype=torch.float64)
    assert float((counts * train_losses).sum() / counts.sum()) == pytest.approx(final["train/loss"], rel=1e-5)

    # Validation and test losses are the checkpointed (final) model's cross-entropy, per group.
    model = create_model(cfg.model, 2, cfg.image_size, False, None)
    model.load_state_dict(torch.load(tmp_path / "checkpoint" / CHECKPOINT_FILE, weights_only=True)["model"])
    model.eval()
    for name, split in (("val", data.val), ("test", data.test)):
        with torch.no_grad():
            losses = F.cross_entropy(model(split.inputs), split.y, reduction="none")
        for k in range(4):
            assert final[f"{name}/loss_g{k}"] == pytest.approx(float(losses[split.g == k].mean()), rel=1e-4)
        assert final[f"{name}/loss"] == pytest.approx(float(losses.mean()), rel=1e-4)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    run({**TINY, "epochs": 1}, tmp_path / "a")

    with pytest.raises(ValueError, match="differs in model"):
        train({**TINY, "model": "resnet-10x0.5"}, workdir=tmp_path / "b", resume_from=tmp_path / "a" / "checkpoint")


def test_a_diverging_loss_ends_the_trial_with_a_clear_error(tmp_path):
    reports: list[dict] = []
    with pytest.raises(DivergedError, match=r"training loss became (nan|inf) at epoch 1, step \d+ \(lr=1e\+12"):
        train({**TINY, "lr": 1e12, "momentum": 0.0, "schedule": "constant"}, lambda m, _: reports.append(m),
              workdir=tmp_path)
    # Caught before the epoch's checkpoint and report, though the check reads back in bulk.
    assert reports == [] and not (tmp_path / "checkpoint" / CHECKPOINT_FILE).exists()


def test_a_diverged_trial_says_what_it_spent_though_no_epoch_reported_it(tmp_path):
    with pytest.raises(DivergedError) as raised:
        train({**TINY, "lr": 1e12, "momentum": 0.0, "schedule": "constant"}, workdir=tmp_path)

    # Its steps up to the bulk check ran (images counted per step, at most one epoch), and its wall time.
    spent = raised.value.metrics
    assert 0 < spent[IMAGES_SEEN] <= 1079
    assert spent[ELAPSED_SECONDS] > 0


@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_every_objective_trains_through_the_loop(objective, tmp_path):
    # A small training split: ILC's default per-example environments take a backward pass per example.
    small = {"val_fraction": 0.4, "test_fraction": 0.4}
    reports, _, final = run({**TINY, "objective": objective, "epochs": 1, "dataset_options": small}, tmp_path)

    assert len(reports) == 1
    assert 0.0 <= final["best/test_worst_acc"] <= 1.0
    assert math.isfinite(final["train/loss"])


def test_environments_can_be_the_spurious_attribute_instead_of_the_groups(tmp_path):
    _, _, final = run({**TINY, "objective": "groupdro", "environments": "attribute", "epochs": 1}, tmp_path)

    assert math.isfinite(final["train/loss"])


def test_lazily_decoded_wilds_data_trains_through_dataloader_workers(tmp_path):
    make_waterbirds(tmp_path / "data")
    config = {"dataset": "waterbirds", "data_root": str(tmp_path / "data"), "model": "resnet-10x0.25",
              "image_size": 16, "epochs": 1, "batch_size": 4, "num_workers": 1, "cache": False}

    reports, _, _ = run(config, tmp_path / "work")

    # Waterbirds' val split of the tiny layout has every group present (see wilds_layouts).
    assert not any(math.isnan(reports[0][f"val/acc_g{k}"]) for k in range(4))


@pytest.mark.parametrize("objective", ["erm", "groupdro"])
def test_the_decoded_cache_changes_no_metric_on_a_fixed_seed(objective, tmp_path):
    textured(make_waterbirds(tmp_path / "data"))
    # batch_size 4 over 13 training images: a last batch of one, which training skips.
    config = {"dataset": "waterbirds", "data_root": str(tmp_path / "data"), "model": "resnet-10x0.25",
              "objective": objective, "image_size": 16, "epochs": 3, "batch_size": 4, "eval_test": "every"}

    plain, _, _ = run({**config, "cache": False}, tmp_path / "plain")
    cached, _, _ = run({**config, "cache": True}, tmp_path / "cached")

    assert len(cached) == 3 and any(f.suffix == ".u8" for f in Path(os.environ[CACHE_DIR_ENV]).iterdir())
    for a, b in zip(plain, cached):
        assert strip(a).keys() == strip(b).keys()
        assert strip(b) == pytest.approx(strip(a), rel=1e-6, abs=1e-9)


def test_an_unknown_setting_fails_before_any_work(tmp_path):
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        train({**TINY, "batchsize": 3}, workdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_loop_runs_on_the_cpu_without_amp(tmp_path):
    reports, _, _ = run({**TINY, "epochs": 1, "amp": True, "device": "auto"}, tmp_path)

    assert reports and not torch.cuda.is_available()


def test_a_last_batch_of_one_is_skipped_and_the_schedule_counts_the_steps_taken(tmp_path):
    cfg = TrialConfig.from_mapping(TINY)
    n = len(load_dataset("spurious_digits", None, resolve_preprocessing(resolve(cfg.model), cfg.dataset, cfg)).train)
    batch_size = next(b for b in range(60, 2, -1) if n % b == 1)  # BatchNorm cannot train on one example

    reports, _, _ = run({**TINY, "batch_size": batch_size, "schedule": "cosine"}, tmp_path)

    # Cosine reaches zero after exactly the steps the schedule was told of: the batches trained.
    assert reports[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert reports[0]["lr"] > 0


def test_compiling_in_place_keeps_the_checkpoint_keys_of_the_plain_model():
    # `compile: true` runs torch.compile (a minute on the CPU, measured by bench/gpu.py instead);
    # what must hold without running it: checkpoints of compiled and plain runs are interchangeable.
    from trainables.models import create_model

    plain = create_model("resnet-10x0.25", 2, 16)
    compiled = create_model("resnet-10x0.25", 2, 16)
    compiled.compile()
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert list(torch.compile(plain).state_dict()) != list(plain.state_dict())  # why not torch.compile(model)
