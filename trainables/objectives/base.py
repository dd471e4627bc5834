"""The objective interface: one class per training objective, DomainBed-style."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

Scale = Callable[[torch.Tensor], torch.Tensor]
"""Applied to a loss before backward: identity, or a CUDA AMP `GradScaler.scale`."""


class Objective(ABC):
    """Computes a batch's loss and leaves the parameter gradients in `.grad`.

    Subclasses declare `name` and their hyperparameters with defaults in `defaults`; the
    training loop zeroes gradients, calls `backward`, then steps the optimizer.
    """

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        """`env_counts[e]`: training examples in environment e; `params`: `defaults` merged with the user's."""
        self.env_counts = env_counts
        self.n_envs = len(env_counts)
        self.params = dict(params)

    @abstractmethod
    def backward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float | torch.Tensor]:
        """Forward and backward one batch; return scalar statistics, at least `loss`.

        A statistic is a number or a 0-dim tensor; tensors may stay on the device (detached), so
        the loop reads them back every few steps (`trainables.meter`) instead of waiting each step.

        `env` holds each example's environment index in ``[0, n_envs)``. A statistic
        `reset_optimizer: 1.0` asks the loop to reset its optimizer state (IRM's anneal end).
        """

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (e.g. Group DRO's weights)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state
