"""The objective interface: one class per training objective, DomainBed-style."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, NamedTuple

from trainables.config import ConfigError

if TYPE_CHECKING:  # torch is imported where an objective trains: its names and declared settings cost none
    import torch
    from torch import nn

Scale = Callable[["torch.Tensor"], "torch.Tensor"]
"""Applied to a loss before backward: identity, or a CUDA AMP `GradScaler.scale`."""


class SettingError(ConfigError):
    """A combination of objective, environments, sampler and options that cannot train as intended."""


@dataclass(frozen=True)
class Setting:
    """What decides, before any data is seen, whether an objective can train every parameter.

    `options` are the objective's, already merged over its defaults. `n_groups` counts the
    data set's (attribute, label) groups; `batch_size` is the training batch size.
    """

    objective: str
    environments: str
    sampler: str
    options: Mapping[str, Any]
    n_classes: int
    n_groups: int
    batch_size: int


class Step(NamedTuple):
    """What `Objective.backward` returns: scalar statistics (at least `loss`) and the batch's
    per-example cross-entropy (detached, float32), from which the loop reports per-group loss."""

    stats: dict[str, float | torch.Tensor]
    losses: torch.Tensor


class Objective(ABC):
    """Computes a batch's loss and leaves the parameter gradients in `.grad`.

    Subclasses declare `name`, their hyperparameters with defaults in `defaults`, the
    environments and sampler they train with unless a trial says otherwise (following their
    reference), and the environment kinds they accept. The training loop zeroes gradients,
    calls `backward`, then steps the optimizer.

    Every objective sees the batch through one forward pass (`backward` makes it, subclasses
    get the logits): BatchNorm then normalises with statistics of the whole batch, as in ERM
    and at evaluation (running statistics accumulated from whole batches). A forward pass per
    environment would normalise each environment with its own statistics, which do not exist at
    test time. Measured on spurious_digits (resnet-10x0.25, 32 px, SGD lr 0.05, 6 epochs) with
    the per-environment ILC this replaced (attribute environments): its own training batches
    scored 97% forwarded per environment in train mode, as it trained, but 49% forwarded whole
    in train mode and 69% in eval mode (validation: 52% average, 4.5% worst group). With one
    forward pass, the same setting scores 94.8% both ways; `tests/trainables/
    test_objective_settings.py` checks train and eval mode agree for every objective.
    """

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]] = {}
    default_environments: ClassVar[str] = "groups"
    default_sampler: ClassVar[str] = "shuffle"
    environment_kinds: ClassVar[tuple[str, ...]] = ("groups", "attribute")

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        """`env_counts[e]`: training examples in environment e; `params`: `defaults` merged with the user's."""
        self.env_counts = env_counts
        self.n_envs = len(env_counts)
        self.params = dict(params)

    def backward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> Step:
        """Forward the whole batch once, then backward the objective; return its statistics.

        A statistic is a number or a 0-dim tensor; tensors may stay on the device (detached), so
        the loop reads them back every few steps (`trainables.meter`) instead of waiting each step.

        `env` holds each example's environment index in ``[0, n_envs)``. A statistic
        `reset_optimizer: 1.0` asks the loop to reset its optimizer state (IRM's anneal end).
        """
        import torch.nn.functional as F

        logits = model(x)
        stats = self.backward_from(model, logits, y, env, scale)
        return Step(stats, F.cross_entropy(logits.detach().float(), y, reduction="none"))

    @abstractmethod
    def backward_from(
        self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float | torch.Tensor]:
        """Backward the objective from the batch's logits; leave the gradients in `.grad`. Statistics
        may be 0-dim device tensors (detached): the loop reads them back in bulk (`trainables.meter`)."""

    @classmethod
    def check_setting(cls, setting: Setting) -> None:
        """Raise `SettingError` for a setting this objective cannot train as intended.

        The base refuses environment kinds outside `environment_kinds`; subclasses add their own.
        """
        if setting.environments not in cls.environment_kinds:
            raise SettingError(
                f"objective {cls.name!r} cannot use environments {setting.environments!r}; "
                f"valid: {', '.join(cls.environment_kinds)}"
            )

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (e.g. Group DRO's weights)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state
