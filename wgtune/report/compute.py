"""What a study's trials cost: per trial, per cell (its search included), and per trial for planning.

Every trial run logs its compute so far as `cost/device_s` (GPU-seconds when it holds GPUs, else CPU-core-seconds;
which one is its `wgtune.device` tag) and the training images it has processed (`train/images_seen`). A run's
latest value of each is what it spent: the last report of a FAILED or KILLED run counts as much as a FINISHED
one's, because that compute was spent (`run/driver.py: device_cost` says what a retried trial's value covers).

A cell's cost is the sum over every trial run of the cell, search and final seeds, whatever their status, so
`cell_cost(trials).total_s == sum(trial_cost(t).device_s for t in trials)` (a run that logged no cost adds
nothing and is counted in `unrecorded`). `trial_cost_estimate` is the per-trial figure a planner needs (issue 16:
expected device-hours of a cell's next trials, from its own trials or a neighbour's scaled by images).
Pure functions of `TrialRecord`s, no MLflow: the report, `wgtune status` and a dry run can share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

from trainables.metrics import DEVICE_SECONDS, ELAPSED_SECONDS, IMAGES_SEEN
from wgtune.tracking.records import DEVICE_CPU, DEVICE_GPU, PHASE_FINAL

if TYPE_CHECKING:
    from wgtune.report.build import ReportRow
    from wgtune.tracking.records import TrialRecord

__all__ = ["CellCost", "ComputeLine", "ComputePoint", "PerTrialCost", "SECONDS_PER_HOUR", "TrialCost", "cell_cost",
           "compute_lines", "device_unit", "trial_cost", "trial_cost_estimate"]

SECONDS_PER_HOUR = 3600.0
MIXED = "mixed"
"""A cell's device kind when its trials counted both (its resources changed between launches)."""


class TrialCost(NamedTuple):
    """What one trial run spent: device-seconds of `device` (None: it logged none), images, wall seconds."""

    device_s: float | None
    device: str
    images: float | None
    elapsed_s: float | None
    search: bool


def _value(trial: TrialRecord, key: str) -> float | None:
    value = trial.metrics.get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def trial_cost(trial: TrialRecord) -> TrialCost:
    """A trial run's cost: the latest logged values (its last report, whatever its status)."""
    return TrialCost(_value(trial, DEVICE_SECONDS), trial.device, _value(trial, IMAGES_SEEN),
                     _value(trial, ELAPSED_SECONDS), trial.phase != PHASE_FINAL)


@dataclass(frozen=True)
class CellCost:
    """A cell's compute over every trial run it has, search and final seeds, failed and killed ones included."""

    search_s: float = 0.0
    """Device-seconds of its search trials (a trial whose phase is not final, as `build` counts them)."""
    final_s: float = 0.0
    """Device-seconds of its final-seed trials."""
    images: float = 0.0
    trials: int = 0
    """Trial runs counted (every status)."""
    unrecorded: int = 0
    """Trial runs that logged no device-seconds (from before costs were logged, or stopped before a report)."""
    device: str = ""
    """`gpu`, `cpu`, `mixed` (both: the sums mix units), or empty when no run logged a cost."""

    @property
    def total_s(self) -> float:
        """Device-seconds of the whole cell: its search and its final seeds."""
        return self.search_s + self.final_s

    @property
    def total_hours(self) -> float:
        return self.total_s / SECONDS_PER_HOUR

    @property
    def search_hours(self) -> float:
        return self.search_s / SECONDS_PER_HOUR

    @property
    def final_hours(self) -> float:
        return self.final_s / SECONDS_PER_HOUR

    @property
    def recorded(self) -> bool:
        """Whether any of its runs logged a cost (else its totals are unknown, not zero)."""
        return self.trials > self.unrecorded


def cell_cost(trials: Iterable[TrialRecord]) -> CellCost:
    """The cost of a cell's trial runs: the sum of `trial_cost` over them, split by phase."""
    search = final = images = 0.0
    count = unrecorded = 0
    devices = set()
    for trial in trials:
        cost = trial_cost(trial)
        count += 1
        images += cost.images or 0.0
        if cost.device_s is None:
            unrecorded += 1
            continue
        devices.add(cost.device or "?")
        if cost.search:
            search += cost.device_s
        else:
            final += cost.device_s
    device = "" if not devices else devices.pop() if len(devices) == 1 else MIXED
    return CellCost(search, final, images, count, unrecorded, device)


def device_unit(device: str, hours: bool = True) -> str:
    """What a cost of `device` is counted in, for people: `GPU-hours`, `CPU-core-hours` (`-seconds`)."""
    unit = "hours" if hours else "seconds"
    return {DEVICE_GPU: f"GPU-{unit}", DEVICE_CPU: f"CPU-core-{unit}"}.get(device, f"device-{unit}")


class PerTrialCost(NamedTuple):
    """What one trial costs, from `n` trials that logged it: device-seconds per trial and per training image."""

    device: str
    mean_s: float
    per_image_s: float | None
    """Device-seconds per training image: scales to another data size or training length (× images it will see)."""
    mean_images: float | None
    n: int


def trial_cost_estimate(trials: Sequence[TrialRecord], phase: str | None = None,
                        statuses: tuple[str, ...] = ("FINISHED",)) -> PerTrialCost | None:
    """Expected device-seconds of one trial, from trials that ran: the mean over those with `statuses` (in
    `phase`, or all) that logged a cost of one device kind, the kind most of them counted. Search trials stopped
    early by ASHA are in the mean as the search ran them (what its next trials are expected to cost); final
    seeds always run to the end. `per_image_s` lets a planner scale a neighbour's cost by the images a cell's
    trial will see (its data size × epochs) and, by the caller's rule, its parameter count. None: no such trial."""
    costs = [trial_cost(t) for t in trials if t.status in statuses and (phase is None or t.phase == phase)]
    costs = [c for c in costs if c.device_s is not None]
    if not costs:
        return None
    kinds = [c.device for c in costs]
    device = max(sorted(set(kinds)), key=kinds.count)
    seconds = [(c.device_s or 0.0, c.images or 0.0) for c in costs if c.device == device]
    imaged = [(s, i) for s, i in seconds if i > 0]
    return PerTrialCost(device, sum(s for s, _ in seconds) / len(seconds),
                        sum(s for s, _ in imaged) / sum(i for _, i in imaged) if imaged else None,
                        sum(i for _, i in imaged) / len(imaged) if imaged else None, len(seconds))


class ComputePoint(NamedTuple):
    """One cell on the compute figure: its total device-hours and test worst-group error (mean, interval)."""

    cell_id: str
    model: str
    hours: float
    error: float
    error_low: float | None
    error_high: float | None
    device: str


class ComputeLine(NamedTuple):
    """One objective's cells of one data set (and pretraining, and family where a data set has several), in
    order of compute."""

    dataset: str
    objective: str
    pretrained: bool
    label: str
    points: tuple[ComputePoint, ...]


def compute_lines(rows: Sequence[ReportRow]) -> tuple[ComputeLine, ...]:
    """The data of the worst-group error vs total compute figure: cells with a test worst-group result and a
    recorded cost, one line per objective within each data set; pretrained and from-scratch cells (and model
    families, where a data set has several) are separate lines, since one line through both would be no curve."""
    usable = [r for r in rows if r.dataset and r.test_worst is not None and r.cost.recorded and r.cost.total_s > 0]
    families = {d: {r.family for r in usable if r.dataset == d} for d in {r.dataset for r in usable}}
    groups: dict[tuple[str, str, bool, str], list[ComputePoint]] = {}
    for row in usable:
        worst = row.test_worst
        assert worst is not None
        family = row.family if len(families[row.dataset]) > 1 else ""
        groups.setdefault((row.dataset, row.objective, row.pretrained, family), []).append(ComputePoint(
            row.cell_id, row.model, row.cost.total_hours, 1 - worst.mean,
            None if worst.high is None else 1 - worst.high, None if worst.low is None else 1 - worst.low,
            row.cost.device))
    return tuple(
        ComputeLine(dataset, objective, pretrained, " ".join(filter(None, (objective, family, "pretrained" if pretrained else ""))),
                    tuple(sorted(points, key=lambda p: (p.hours, p.cell_id))))
        for (dataset, objective, pretrained, family), points in sorted(groups.items()))
