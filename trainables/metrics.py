"""Per-group accuracy metrics, computed with `torch.bincount` (wilds' eval needs torch_scatter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
            f"{prefix}/avg_acc": self.average,
            f"{prefix}/worst_acc": self.worst_group,
            f"{prefix}/weighted_acc": self.weighted,
        }
        metrics.update({f"{prefix}/acc_g{k}": acc for k, acc in enumerate(self.per_group)})
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
