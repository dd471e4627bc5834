"""Expected device-hours before a launch (`run/estimate.py`): from a cell's own trials, a neighbour's scaled by
parameters × epochs, or a calibration; unknown where no source has it; GPU and CPU never added together."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from trainables.metrics import DEVICE_SECONDS, IMAGES_SEEN
from wgtune.run.estimate import CalibratedTrial, cell_line, estimate_cells, estimate_lines
from wgtune.run.plan import plan_cells
from wgtune.spec.grid import load_grid
from wgtune.tracking.records import DEVICE_CPU, DEVICE_GPU, PHASE_FINAL, PHASE_SEARCH, TrialRecord
from wgtune.tracking.summary import CellSummary

GRID = """\
study: estimate
study_dir: study
datasets: [spurious_digits]
models: {{resnet: [10x0.25, 10x0.5, 18x0.5]}}
objectives: [erm, groupdro]
epochs: {epochs}
final_seeds: 3
search: {{num_samples: 5}}
resources: {{cpu: 2, overrides: {{resnet-18x0.5: {{cpu: 1, gpu: 0.5}}}}}}
"""

_clock = itertools.count(1)
N_PARAMS = {"resnet-10x0.25": 1_000, "resnet-10x0.5": 4_000, "resnet-18x0.5": 9_000}


def run(cell: str, device_s: float, phase: str = PHASE_SEARCH, status: str = "FINISHED", images: float = 1000.0,
        device: str = DEVICE_CPU) -> TrialRecord:
    n = next(_clock)
    return TrialRecord(f"r{n}", cell, f"t{n}", "", status, "tpe", phase, {}, {DEVICE_SECONDS: device_s,
                       IMAGES_SEEN: images}, n, None, None, device=device)


def plans(tmp_path: Path, history: dict | None = None, epochs: int = 4):
    (tmp_path / "grid.yaml").write_text(GRID.format(epochs=epochs))
    grid = load_grid(tmp_path / "grid.yaml")
    cells = plan_cells(grid, history)
    return cells, {c.cell.id: N_PARAMS[c.cell.model] for c in cells}


def by_model(estimates, model: str, objective: str = "erm"):
    """The estimate (or plan) of the cell of `model` and `objective`."""
    [found] = [e for e in estimates if f"/{model}/{objective}/" in (e.cell_id if hasattr(e, "cell_id") else e.cell.id)]
    return found


def test_own_trials_give_the_mean_of_their_costs_times_the_trials_left(tmp_path: Path) -> None:
    cells, n_params = plans(tmp_path)
    small = by_model(cells, "resnet-10x0.25").cell.id
    history = {small: CellSummary(small, "parent", finished=2, final_done=1)}
    cells, n_params = plans(tmp_path, history)
    trials = [run(small, 100.0), run(small, 300.0), run(small, 50.0, status="FAILED"),  # failed: not in the mean
              run(small, 500.0, PHASE_FINAL)]
    estimate = by_model(estimate_cells(cells, trials, n_params), "resnet-10x0.25")
    assert (estimate.search_trials, estimate.final_trials) == (3, 2)  # 5 - 2 finished, 3 - 1 done
    assert estimate.search_s == pytest.approx(200.0 * 3)
    assert estimate.final_s == pytest.approx(500.0 * 2)
    assert estimate.per_trial.source.startswith("own trials")


def test_without_final_seeds_a_final_costs_the_search_per_image_over_a_full_training(tmp_path: Path) -> None:
    """ASHA stopped one search trial after a quarter of its images: a final seed runs to the end."""
    cells, n_params = plans(tmp_path)
    small = by_model(cells, "resnet-10x0.25").cell.id
    trials = [run(small, 100.0, images=1000.0), run(small, 25.0, images=250.0)]
    estimate = by_model(estimate_cells(cells, trials, n_params), "resnet-10x0.25")
    assert estimate.per_trial.search_s == pytest.approx(62.5)
    assert estimate.per_trial.final_s == pytest.approx(100.0)  # 0.1 s per image × 1000 images


def test_a_neighbour_scales_by_parameters_and_epochs_same_objective_first(tmp_path: Path) -> None:
    cells, n_params = plans(tmp_path)
    small = by_model(cells, "resnet-10x0.25").cell.id
    small_dro = by_model(cells, "resnet-10x0.25", "groupdro").cell.id
    trials = [run(small, 100.0), run(small, 100.0, PHASE_FINAL), run(small_dro, 1000.0)]
    estimates = estimate_cells(cells, trials, n_params)
    mid = by_model(estimates, "resnet-10x0.5")
    assert mid.per_trial.search_s == pytest.approx(100.0 * 4)  # 4× the parameters, same epochs
    assert mid.per_trial.source.startswith("neighbour spurious_digits · resnet-10x0.25 · erm × 4")
    assert by_model(estimates, "resnet-10x0.5", "groupdro").per_trial.search_s == pytest.approx(1000.0 * 4)


def test_a_neighbour_of_another_training_length_scales_by_epochs(tmp_path: Path) -> None:
    """Per data set epochs: a neighbour's trials of 4 epochs scale to the cell's 8 as twice the images."""
    from dataclasses import replace

    cells, n_params = plans(tmp_path)
    small = by_model(cells, "resnet-10x0.25")
    longer = [replace(c, base_config={**c.base_config, "epochs": 8}) if c is not small else c for c in cells]
    estimates = estimate_cells(longer, [run(small.cell.id, 100.0)], n_params)
    assert by_model(estimates, "resnet-10x0.5").per_trial.search_s == pytest.approx(100.0 * 4 * 2)


def test_unknown_without_a_source_and_units_never_added(tmp_path: Path) -> None:
    cells, n_params = plans(tmp_path)
    small = by_model(cells, "resnet-10x0.25").cell.id
    estimates = estimate_cells(cells, [run(small, 100.0)], n_params)
    gpu = by_model(estimates, "resnet-18x0.5")
    assert gpu.device == DEVICE_GPU and gpu.per_trial is None  # its CPU neighbours are another unit
    assert "—" in cell_line(gpu) and "no trials of its own" in cell_line(gpu)
    totals = estimate_lines(estimates)
    assert len(totals) == 2 and any("GPU-hours" in t and "unknown" in t for t in totals)
    cpu = [t for t in totals if "CPU-core-hours" in t][0]
    expected = sum(e.total_s for e in estimates if e.device == DEVICE_CPU) / 3600
    assert f"{expected:.3g}" in cpu


def test_calibration_is_set_up_plus_epochs_times_an_epoch_times_the_devices_held(tmp_path: Path) -> None:
    cells, n_params = plans(tmp_path)
    gpu = by_model(cells, "resnet-18x0.5").cell.id
    mid = by_model(cells, "resnet-10x0.5").cell.id
    timed = {mid: CalibratedTrial(setup_s=2.0, epoch_s=3.0, epochs=4), gpu: "this machine has no GPU"}
    estimates = estimate_cells(cells, [], n_params, timed)
    assert by_model(estimates, "resnet-10x0.5").per_trial.search_s == pytest.approx((2.0 + 4 * 3.0) * 2)  # 2 CPUs
    assert "calibrate: this machine has no GPU" in by_model(estimates, "resnet-18x0.5").why


def test_a_real_calibration_times_real_epochs(tmp_path: Path) -> None:
    """Two real epochs of the smallest cell on spurious_digits: a positive epoch and set-up; a GPU cell here
    is refused with its reason."""
    from wgtune.run.calibrate import calibrate

    cells, _ = plans(tmp_path, epochs=1)
    small = by_model(cells, "resnet-10x0.25")
    gpu = by_model(cells, "resnet-18x0.5")
    import torch

    timed = calibrate([small, gpu], print_line=lambda _: None)
    assert timed[small.cell.id].epoch_s > 0 and timed[small.cell.id].epochs == 1
    if not torch.cuda.is_available():
        assert "no" in timed[gpu.cell.id]


def test_dry_run_names_each_cells_source(tmp_path: Path) -> None:
    from wgtune.run.dry_run import describe

    (tmp_path / "grid.yaml").write_text(GRID.format(epochs=1))
    text = describe(load_grid(tmp_path / "grid.yaml"))
    assert text.count("expected: —") == 6  # no study yet and no calibration: nothing known
    assert "expected in total" in text and "CPU-core-hours" in text and "GPU-hours" in text


def test_a_dry_run_plans_pretrained_cells_on_a_machine_without_their_weights(tmp_path: Path, monkeypatch) -> None:
    # Planning a study (and its cost) happens before weights are fetched; only a launch needs them.
    from wgtune.run.dry_run import describe

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: no torchvision weights here
    monkeypatch.delenv("WGTUNE_WEIGHTS_DIR", raising=False)
    (tmp_path / "grid.yaml").write_text(GRID.format(epochs=2).replace("[10x0.25, 10x0.5, 18x0.5]", "[18]")
                                        + "pretrained: true\nweights: {resnet: 'torchvision:IMAGENET1K_V1'}\n")
    text = describe(load_grid(tmp_path / "grid.yaml"))

    assert text.count("expected: —") == 2 and "resnet-18 · erm · pretrained" in text
