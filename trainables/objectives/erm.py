"""Empirical risk minimisation: the mean cross-entropy of the batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.objectives.base import Objective, Scale

if TYPE_CHECKING:
    import torch
    from torch import nn


class ERM(Objective):
    """Mean cross-entropy over the whole batch; environments are ignored.

    Trained on shuffled data by default, as every reference trains ERM (p-lambda/wilds
    examples/configs/algorithm.py: ERM has `uniform_over_groups: False`; kohpangwei/group_DRO
    without `--reweight_groups`). With `sampler: group_balanced` it is the RWG baseline of
    Idrissi et al. 2022 ("Simple data balancing achieves competitive worst-group-accuracy"):
    facebookresearch/BalancingGroups datasets.py `get_loaders` with method "rwg" draws with
    `WeightedRandomSampler(len(dataset) / group_size, len(dataset))`, the same draws as here.
    """

    name = "erm"
    defaults = {}
    default_environments = "groups"
    default_sampler = "shuffle"
    environment_kinds = ("groups", "attribute", "examples")  # ignored, so any grid-wide choice is fine

    def backward_from(
        self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float | torch.Tensor]:
        """Backpropagate the batch's mean cross-entropy."""
        import torch.nn.functional as F

        del model, env
        loss = F.cross_entropy(logits, y)
        scale(loss).backward()
        return {"loss": loss.detach()}  # a device tensor: the loop reads statistics back in bulk
