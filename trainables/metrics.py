"""Per-group accuracy metrics, and the names of every metric a trial reports.

The names are the contract between a trial and whatever reads its results (the scheduler and
searcher of a study, MLflow, the report): they are defined here once and imported everywhere
else. Group accuracies are computed with `torch.bincount` (wilds' eval needs torch_scatter);
torch is imported inside the function, so reading the names costs no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TRAIN, VAL, TEST, BEST = "train", "val", "test", "best"
"""Prefixes: training statistics, the two evaluated splits, and the model-selected (best-epoch) values."""
AVG_ACC, WORST_ACC, WEIGHTED_ACC = "avg_acc", "worst_acc", "weighted_acc"
EPOCH, LR = "epoch", "lr"
REPORTED_PREFIXES = tuple(f"{prefix}/" for prefix in (TRAIN, VAL, TEST, BEST))
BEST_PREFIX = f"{BEST}/"
"""Every per-epoch metric a trial reports starts with one of these (or is `epoch` / `lr`)."""


def metric_key(prefix: str, name: str) -> str:
    """A per-epoch metric's name: `val/worst_acc`, `train/loss`."""
    return f"{prefix}/{name}"


def best_key(split: str, name: str) -> str:
    """A model-selected metric's name: the value at the selected epoch, `best/test_worst_acc`."""
    return f"{BEST}/{split}_{name}"


STEP_METRIC = metric_key(VAL, WORST_ACC)
"""This epoch's validation worst-group accuracy: what early stopping compares, within a cell."""
SELECTION_METRIC = best_key(VAL, WORST_ACC)
"""What a trial is selected on: its best epoch's validation worst-group accuracy (model selection
by worst-group validation accuracy, as group_DRO's and WILDS' Waterbirds/CelebA results report)."""
BEST_EPOCH = f"{BEST}/{EPOCH}"
SELECTED = ((VAL, WORST_ACC), (VAL, AVG_ACC), (TEST, WORST_ACC), (TEST, AVG_ACC), (TEST, WEIGHTED_ACC))
"""The (split, metric) pairs a trial reports at its selected epoch, as `best_key(split, metric)`."""
BEST_TEST_WORST, BEST_TEST_AVG, BEST_TEST_WEIGHTED = (best_key(TEST, m) for m in (WORST_ACC, AVG_ACC, WEIGHTED_ACC))
BEST_VAL_AVG = best_key(VAL, AVG_ACC)
IMAGES_PER_S = metric_key(TRAIN, "images_per_s")
"""Training throughput of the epoch."""
CHECKPOINT_SECONDS = metric_key(TRAIN, "checkpoint_s")
"""Wall seconds the epoch's checkpoint took to write (part of the cost of resumable trials)."""
DATA_WAIT_FRACTION = metric_key(TRAIN, "data_wait_fraction")
"""The share of the epoch's wall time spent waiting for the next batch (the data path keeping up, or not)."""
TIMINGS = (IMAGES_PER_S, CHECKPOINT_SECONDS, DATA_WAIT_FRACTION)
"""Metrics that measure the machine, not the training: they differ between identical runs."""


@dataclass(frozen=True)
class GroupAccuracy:
    """Accuracies of one evaluated split. Groups absent from the split have accuracy NaN."""

    average: float
    worst_group: float
    weighted: float
    per_group: tuple[float, ...]
    counts: tuple[int, ...]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric names, e.g. `val/worst_acc`, `val/acc_g2`."""
        metrics = {
            metric_key(prefix, AVG_ACC): self.average,
            metric_key(prefix, WORST_ACC): self.worst_group,
            metric_key(prefix, WEIGHTED_ACC): self.weighted,
        }
        metrics.update({metric_key(prefix, f"acc_g{k}"): acc for k, acc in enumerate(self.per_group)})
        return metrics


def group_accuracy(
    correct: torch.Tensor, groups: torch.Tensor, n_groups: int, train_proportions: torch.Tensor
) -> GroupAccuracy:
    """Accuracy overall, per group, of the worst present group, and weighted by training proportions.

    The weighted average reweights per-group accuracies by each group's share of the training
    set, as Waterbirds papers report it (val/test are group-balanced there, train is not).
    """
    import torch

    correct = correct.detach().to("cpu", torch.float64).flatten()
    groups = groups.detach().to("cpu", torch.long).flatten()
    counts = torch.bincount(groups, minlength=n_groups)
    hits = torch.bincount(groups, weights=correct, minlength=n_groups)
    present = counts > 0
    per_group = torch.where(present, hits / counts.clamp(min=1), torch.full_like(hits, float("nan")))
    weights = train_proportions.to(torch.float64) * present
    weighted = float((per_group.nan_to_num() * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    return GroupAccuracy(
        average=float(correct.mean()) if correct.numel() else float("nan"),
        worst_group=float(per_group[present].min()) if present.any() else float("nan"),
        weighted=weighted,
        per_group=tuple(float(a) for a in per_group),
        counts=tuple(int(c) for c in counts),
    )
