"""What a trial reports: the metric names (defined here only) and per-group accuracy and loss.

Per-group statistics use `torch.bincount` (wilds' eval needs torch_scatter). Names are
``<split>/<statistic>`` and ``<split>/<statistic>_g<k>`` for group k, e.g. `val/worst_acc`,
`val/acc_g2`, `train/loss_g3`; the best epoch's are ``best/<split>_<statistic>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRAIN, VAL, TEST, BEST = "train", "val", "test", "best"
AVG_ACC, WORST_ACC, WEIGHTED_ACC = "avg_acc", "worst_acc", "weighted_acc"
ACC, LOSS = "acc", "loss"


def metric(split: str, statistic: str) -> str:
    """`val/worst_acc`: one statistic of one split."""
    return f"{split}/{statistic}"


def group_metric(split: str, statistic: str, group: int) -> str:
    """`train/loss_g3`: one statistic of one group of one split."""
    return f"{split}/{statistic}_g{group}"


def best_metric(split: str, statistic: str) -> str:
    """`best/test_worst_acc`: a statistic at the epoch model selection chose."""
    return f"{BEST}/{split}_{statistic}"


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
            metric(prefix, AVG_ACC): self.average,
            metric(prefix, WORST_ACC): self.worst_group,
            metric(prefix, WEIGHTED_ACC): self.weighted,
        }
        metrics.update({group_metric(prefix, ACC, k): acc for k, acc in enumerate(self.per_group)})
        return metrics


@dataclass(frozen=True)
class GroupLoss:
    """Mean cross-entropy of a split's examples, overall and per group (NaN for an absent group)."""

    average: float
    per_group: tuple[float, ...]

    def as_metrics(self, prefix: str, with_average: bool = True) -> dict[str, float]:
        """Flat metric names, e.g. `val/loss`, `val/loss_g2` (the first left out without `with_average`)."""
        metrics = {metric(prefix, LOSS): self.average} if with_average else {}
        metrics.update({group_metric(prefix, LOSS, k): loss for k, loss in enumerate(self.per_group)})
        return metrics


def group_accuracy(
    correct: torch.Tensor, groups: torch.Tensor, n_groups: int, train_proportions: torch.Tensor
) -> GroupAccuracy:
    """Accuracy overall, per group, of the worst present group, and weighted by training proportions.

    The weighted average reweights per-group accuracies by each group's share of the training
    set, as Waterbirds papers report it (val/test are group-balanced there, train is not).
    """
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
        self.sums = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_groups, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch's per-example losses under their groups."""
        groups = groups.to(self.sums.device, torch.long).flatten()
        self.sums.index_add_(0, groups, losses.detach().to(self.sums.device, torch.float64).flatten())
        self.counts.index_add_(0, groups, torch.ones_like(self.counts[groups]))

    def result(self) -> GroupLoss:
        """Per-group means over everything added (one host sync); the average is over examples."""
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
