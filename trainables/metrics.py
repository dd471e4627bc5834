"""What a trial reports: the names of every metric (defined here only), and per-group accuracy and loss.

The names are the contract between a trial and whatever reads its results (the scheduler and
searcher of a study, MLflow, the report): defined here once and imported everywhere else. They are
``<split>/<statistic>`` and ``<split>/<statistic>_g<k>`` for group k (`val/worst_acc`, `val/acc_g2`,
`train/loss_g3`); the best epoch's are ``best/<split>_<statistic>``. Per-group statistics use
`torch.bincount` (wilds' eval needs torch_scatter); torch is imported inside the functions, so
reading the names costs no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TRAIN, VAL, TEST, BEST, COST = "train", "val", "test", "best", "cost"
"""Prefixes: training statistics, the two evaluated splits, the model-selected (best-epoch) values, and what the
trial has cost (reported by whoever knows the resources it holds: the study's driver)."""
AVG_ACC, WORST_ACC, WEIGHTED_ACC = "avg_acc", "worst_acc", "weighted_acc"
ACC, LOSS = "acc", "loss"
EPOCH, LR = "epoch", "lr"
REPORTED_PREFIXES = tuple(f"{prefix}/" for prefix in (TRAIN, VAL, TEST, BEST, COST))
BEST_PREFIX = f"{BEST}/"
"""Every per-epoch metric a trial reports starts with one of these (or is `epoch` / `lr`)."""


def metric_key(prefix: str, name: str) -> str:
    """A per-epoch metric's name: `val/worst_acc`, `train/loss`."""
    return f"{prefix}/{name}"


def group_key(prefix: str, statistic: str, group: int) -> str:
    """One statistic of one group: `train/loss_g3`, `val/acc_g2`."""
    return f"{prefix}/{statistic}_g{group}"


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
IMAGES_SEEN = metric_key(TRAIN, "images_seen")
"""Training images processed so far (each forward-backward pass counts once), over every epoch since the trial
began, across resumes (carried in the checkpoint). The same for identical runs, so not a timing."""
ELAPSED_SECONDS = metric_key(TRAIN, "elapsed_s")
"""Wall seconds the trial has run so far: set-up (data, model), training, evaluation and checkpoints, over every
attempt its checkpoints carry (a resumed attempt adds its own time, set-up included, to its checkpoint's)."""
DEVICE_SECONDS = metric_key(COST, "device_s")
"""`ELAPSED_SECONDS` times the devices the trial holds: GPU-seconds when it holds GPUs (a fraction of one when it
shares), else CPU-core-seconds. Reported by the study's driver, which knows the trial's resources; which of the
two it counts is a tag on the trial's run (`wgtune.tracking.records.DEVICE_TAG`)."""
COST_METRICS = (ELAPSED_SECONDS, IMAGES_SEEN, DEVICE_SECONDS)
"""What a trial has spent so far: also reported when it ends without an epoch (a diverged loss), since it was spent."""
TIMINGS = (IMAGES_PER_S, CHECKPOINT_SECONDS, DATA_WAIT_FRACTION, ELAPSED_SECONDS, DEVICE_SECONDS)
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
        metrics.update({group_key(prefix, ACC, k): acc for k, acc in enumerate(self.per_group)})
        return metrics


@dataclass(frozen=True)
class GroupLoss:
    """Mean cross-entropy of a split's examples, overall and per group (NaN for an absent group)."""

    average: float
    per_group: tuple[float, ...]

    def as_metrics(self, prefix: str, with_average: bool = True) -> dict[str, float]:
        """Flat metric names, e.g. `val/loss`, `val/loss_g2` (the first left out without `with_average`)."""
        metrics = {metric_key(prefix, LOSS): self.average} if with_average else {}
        metrics.update({group_key(prefix, LOSS, k): loss for k, loss in enumerate(self.per_group)})
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


class GroupLossSum:
    """Running per-group sums of per-example losses, kept on the losses' device (no host sync per add)."""

    def __init__(self, n_groups: int, device: torch.device | str = "cpu") -> None:
        import torch

        self.sums = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_groups, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch's per-example losses under their groups."""
        import torch

        groups = groups.to(self.sums.device, torch.long).flatten()
        self.sums.index_add_(0, groups, losses.detach().to(self.sums.device, torch.float64).flatten())
        self.counts.index_add_(0, groups, torch.ones_like(self.counts[groups]))

    def result(self) -> GroupLoss:
        """Per-group means over everything added (one host sync); the average is over examples."""
        import torch

        sums, counts = self.sums.cpu(), self.counts.cpu()
        per_group = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        total = counts.sum()
        return GroupLoss(
            average=float(sums.sum() / total) if total > 0 else float("nan"),
            per_group=tuple(float(v) for v in per_group),
        )


def group_loss(losses: torch.Tensor, groups: torch.Tensor, n_groups: int) -> GroupLoss:
    """Mean loss overall and per group of one split's per-example losses."""
    running = GroupLossSum(n_groups, losses.device)
    running.add(losses, groups)
    return running.result()
