"""Empirical risk minimisation: the mean cross-entropy of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.objectives.base import Objective, Scale


class ERM(Objective):
    """Mean cross-entropy over the whole batch; environments are ignored."""

    name = "erm"
    defaults = {}

    def backward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float | torch.Tensor]:
        """Forward the batch once and backpropagate its mean cross-entropy."""
        del env
        loss = F.cross_entropy(model(x), y)
        scale(loss).backward()
        return {"loss": loss.detach()}  # a device tensor: the loop reads statistics back in bulk
