"""Training objectives: ERM, IRM, ILC (AND-mask) and Group DRO, looked up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from trainables.objectives.base import Objective, Scale, Setting, SettingError, Step
from trainables.objectives.erm import ERM
from trainables.objectives.groupdro import GroupDRO
from trainables.objectives.ilc import ILC
from trainables.objectives.irm import IRM
from trainables.options import merge_options
from trainables.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = ["OBJECTIVES", "Objective", "Scale", "Setting", "SettingError", "Step", "create_objective"]

OBJECTIVES: Registry[type[Objective]] = Registry("objective")
OBJECTIVES.add(ERM.name, ERM)
OBJECTIVES.add(IRM.name, IRM)
OBJECTIVES.add(ILC.name, ILC)
OBJECTIVES.add(GroupDRO.name, GroupDRO)


def create_objective(
    name: str, env_counts: torch.Tensor, options: Mapping[str, Any] | None = None
) -> Objective:
    """Build objective `name` with `options` over its defaults.

    Unknown names raise `UnknownNameError`; unknown options, wrongly typed or out-of-range
    values raise `OptionError` naming the option.
    """
    import torch

    cls = OBJECTIVES.get(name)
    env_counts = torch.as_tensor(env_counts)
    if env_counts.dim() != 1 or len(env_counts) == 0:
        raise ValueError(
            f"objective {name!r}: env_counts must be a non-empty 1-d tensor, "
            f"got shape {tuple(env_counts.shape)}"
        )
    return cls(env_counts, merge_options(f"objective {name!r}", cls.defaults, options))
