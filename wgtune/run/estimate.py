"""What a study will cost before it runs: expected device-hours per cell and in total, and where each figure
comes from (issue 16, item 1). `wgtune launch --dry-run` prints it (`run/study.py: describe`).

A cell's expected cost is its remaining trials times the expected device-seconds of one trial, in the unit its
trials hold (`records.device_use`: GPU-seconds when they hold GPUs, else CPU-core-seconds; never added together,
docs/design.md decision 13). One trial's cost comes from the first source that has it:

1. **own**: the cell's own trials in MLflow (`report.compute.trial_cost_estimate`): the mean device-seconds of its
   finished search trials for each search trial left, and of its finished final seeds for each seed left (no
   final seed yet: its search trials' cost per training image times the images of the longest search trial, a
   final seed runs to the end).
2. **calibrate**: with `--calibrate`, a few real training epochs of the cell on this machine (`run/calibrate.py`):
   set-up plus `epochs` × one epoch's seconds, times the devices a trial holds.
3. **neighbour**: the nearest cell of the same data set and model family (the same objective first, then the
   nearest parameter count) that has its own trials, scaled by parameter count and by training length:
   per-trial seconds × (N_cell / N_neighbour) × (epochs_cell / epochs_neighbour). The training compute of a
   forward and backward pass grows linearly with the parameter count per example (Kaplan et al. 2020, "Scaling
   Laws for Neural Language Models", arXiv:2001.08361, section 2.1: C ≈ 6·N·D), and a trial's examples are its
   data set's training images times its epochs. For convolutional nets that holds within one family at one input
   size (each weight is applied at a fixed number of positions per layer), not across families or data sets of
   other image sizes: hence only same data set and family. Small models on a CPU are bound by overheads that do
   not scale with N, so a neighbour's estimate there errs (the benchmark `bench/estimate_accuracy.py` measures it);
   `--calibrate` measures instead. Device-seconds are taken as independent of how many cores or GPUs a trial
   holds (perfect scaling).

Otherwise the cost is unknown ("—", with why). ASHA's early stopping is ignored by sources 2 and 3 (each search
trial is counted as running to the end: an upper bound); source 1 includes it as the cell's search ran it.
Concurrent trials slowing each other are not modelled. Pure functions of plain data: no MLflow, no torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple, Sequence

from wgtune.report.compute import SECONDS_PER_HOUR, device_unit, trial_cost, trial_cost_estimate
from wgtune.tracking.records import PHASE_FINAL, PHASE_SEARCH, device_use

if TYPE_CHECKING:
    from wgtune.run.plan import PlannedCell
    from wgtune.tracking.records import TrialRecord

__all__ = ["CalibratedTrial", "CellEstimate", "TrialSeconds", "calibrated_seconds", "estimate_cells",
           "estimate_lines", "neighbour_seconds", "own_seconds"]

SOURCE_OWN, SOURCE_CALIBRATE, SOURCE_NEIGHBOUR = "own trials", "calibrate", "neighbour"


class TrialSeconds(NamedTuple):
    """Expected device-seconds of one search trial and one final seed of a cell, and where they come from."""

    device: str
    search_s: float
    final_s: float
    source: str
    """`own trials (n)`, `calibrate (...)`, `neighbour <cell> × ...`: said per cell by the dry run."""


class CalibratedTrial(NamedTuple):
    """A cell's trial timed on this machine (`run/calibrate.py`): wall seconds of set-up and of one epoch."""

    setup_s: float
    epoch_s: float
    epochs: int
    """The epochs the cell's trials train (its grid's)."""


class CellEstimate(NamedTuple):
    """A cell's expected cost for what is left of its budget: None per trial when no source knows it (`why`)."""

    cell_id: str
    label: str
    device: str
    search_trials: int
    final_trials: int
    per_trial: TrialSeconds | None
    why: str = ""

    @property
    def search_s(self) -> float | None:
        return None if self.per_trial is None else self.per_trial.search_s * self.search_trials

    @property
    def final_s(self) -> float | None:
        return None if self.per_trial is None else self.per_trial.final_s * self.final_trials

    @property
    def total_s(self) -> float | None:
        return None if self.per_trial is None else (self.search_s or 0.0) + (self.final_s or 0.0)


def own_seconds(trials: Sequence[TrialRecord], device: str) -> TrialSeconds | None:
    """One trial's expected cost from the cell's own finished trials of `device` (None: none logged a cost)."""
    search = trial_cost_estimate(trials, PHASE_SEARCH)
    final = trial_cost_estimate(trials, PHASE_FINAL)
    search = search if search is not None and search.device == device else None
    final = final if final is not None and final.device == device else None
    if search is None and final is None:
        return None
    if final is not None:
        final_s = final.mean_s
    else:
        assert search is not None
        images = [c.images for c in map(trial_cost, trials) if c.search and c.device == device and c.images]
        final_s = search.per_image_s * max(images) if search.per_image_s and images else search.mean_s
    search_s = search.mean_s if search is not None else final_s
    n = (search.n if search else 0) + (final.n if final else 0)
    return TrialSeconds(device, search_s, final_s, f"{SOURCE_OWN} ({n})")


def calibrated_seconds(calibrated: CalibratedTrial, device: str, devices: float) -> TrialSeconds:
    """One trial's cost from a timed calibration: (set-up + epochs × epoch) × the devices a trial holds."""
    seconds = (calibrated.setup_s + calibrated.epochs * calibrated.epoch_s) * devices
    return TrialSeconds(device, seconds, seconds,
                        f"{SOURCE_CALIBRATE} ({calibrated.epoch_s:.2g} s/epoch + {calibrated.setup_s:.2g} s set-up)")


def neighbour_seconds(plan: PlannedCell, known: Mapping[str, tuple[PlannedCell, TrialSeconds]],
                      n_params: Mapping[str, int]) -> TrialSeconds | str:
    """One trial's cost scaled from the nearest cell with its own trials (same data set, family and device; the
    same objective first, then the nearest parameter count in log scale): × N ratio × epochs ratio. A string
    when there is none: why."""
    cell, mine = plan.cell, n_params.get(plan.cell.id)
    device = device_use(plan.resources)[0]
    if not mine:
        return "no parameter count"
    candidates = [(other, seconds) for other, seconds in known.values()
                  if other.cell.dataset == cell.dataset and other.cell.family == cell.family
                  and seconds.device == device and n_params.get(other.cell.id) and other.cell.id != cell.id]
    if not candidates:
        return f"no cell of {cell.dataset} and family {cell.family} on {device} has trials yet"
    other, seconds = min(candidates, key=lambda c: (c[0].cell.objective != cell.objective,
                                                    abs(math.log(mine / n_params[c[0].cell.id])), c[0].cell.id))
    scale = mine / n_params[other.cell.id] * plan.base_config["epochs"] / other.base_config["epochs"]
    what = f"{SOURCE_NEIGHBOUR} {other.cell.label} × {scale:.3g} (parameters × epochs)"
    return TrialSeconds(device, seconds.search_s * scale, seconds.final_s * scale, what)


def estimate_cells(plans: Sequence[PlannedCell], trials: Iterable[TrialRecord], n_params: Mapping[str, int],
                   calibrated: Mapping[str, CalibratedTrial | str] | None = None) -> list[CellEstimate]:
    """Every cell's expected cost for what its budget has left, from its best source (module docstring).
    `calibrated` maps a cell id to its timing, or to why it could not be timed here."""
    by_cell: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        by_cell.setdefault(trial.cell_id, []).append(trial)
    calibrated = calibrated or {}
    own = {}
    for plan in plans:
        seconds = own_seconds(by_cell.get(plan.cell.id, []), device_use(plan.resources)[0])
        if seconds is not None:
            own[plan.cell.id] = (plan, seconds)
    estimates = []
    for plan in plans:
        device, devices = device_use(plan.resources)
        why = []
        per_trial: TrialSeconds | str | None = own[plan.cell.id][1] if plan.cell.id in own else None
        timing = calibrated.get(plan.cell.id)
        if per_trial is None and isinstance(timing, CalibratedTrial):
            per_trial = calibrated_seconds(timing, device, devices)
        elif per_trial is None and isinstance(timing, str):
            why.append(f"calibrate: {timing}")
        if per_trial is None:
            per_trial = neighbour_seconds(plan, own, n_params)
        if isinstance(per_trial, str):
            why.append(per_trial)
            per_trial = None
        estimates.append(CellEstimate(plan.cell.id, plan.cell.label, device, plan.budget.search_left,
                                      plan.budget.final_left, per_trial,
                                      "" if per_trial else "; ".join(["no trials of its own"] + why)))
    return estimates


def _hours(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / SECONDS_PER_HOUR:.3g}"


def cell_line(estimate: CellEstimate) -> str:
    """`expected: 0.12 CPU-core-hours (search 4 × 0.02, final 3 × 0.013); from own trials (5)`, or `—` and why."""
    unit = device_unit(estimate.device)
    if estimate.per_trial is None:
        return f"expected: — {unit} ({estimate.why})"
    per = estimate.per_trial
    return (f"expected: {_hours(estimate.total_s)} {unit} (search {estimate.search_trials} × {_hours(per.search_s)}, "
            f"final {estimate.final_trials} × {_hours(per.final_s)}); from {per.source}")


def estimate_lines(estimates: Sequence[CellEstimate]) -> list[str]:
    """The total per unit (GPU-hours and CPU-core-hours apart), with how many cells' costs are unknown."""
    lines = []
    for device in sorted({e.device for e in estimates}):
        mine = [e for e in estimates if e.device == device]
        known = [e for e in mine if e.per_trial is not None]
        search = sum(e.search_s or 0.0 for e in known)
        final = sum(e.final_s or 0.0 for e in known)
        unknown = len(mine) - len(known)
        lines.append(f"expected in total: {_hours(search + final)} {device_unit(device)} "
                     f"(search {_hours(search)}, final seeds {_hours(final)}) over {len(known)} cell(s)"
                     + (f"; {unknown} cell(s) unknown (—): launch some, or --calibrate" if unknown else ""))
    return lines
