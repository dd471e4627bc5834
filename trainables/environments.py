"""What an objective calls an environment: a trial setting, `environments`, looked up by name.

Groups are encoded ``g = attribute * n_classes + y`` (see `trainables.datasets.base`).

- `groups`: each (attribute, label) group is an environment, as WILDS' `groupby_fields`
  ['background', 'y'] / ['male', 'y'] make them for IRM and Group DRO (p-lambda/wilds
  examples/configs/datasets.py) and group_DRO's groups (kohpangwei/group_DRO).
- `attribute`: the spurious attribute alone; each environment holds both labels.
- `examples`: every example of a batch is its own environment, as the ILC authors' CIFAR-10 code
  (gibipara92/learning-explanations-hard-to-vary and_mask/run_cifar.py: `batch_size=1`,
  `n_agreement_envs=batch_size`) and the original study (kylrth/worst_group_scale run.py,
  `penalty` for "ilc": `batch_size=1, n_agreement_envs=len(y)`) run ILC.

`label_pure` says whether every environment holds a single label, which decides how the AND-mask
treats the classifier's bias (see `trainables.objectives.masking`). Adding a kind is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from trainables.registry import Registry

if TYPE_CHECKING:  # imported where a batch is split: the kinds' names cost no torch
    import torch


@dataclass(frozen=True)
class EnvironmentKind:
    """How a batch's examples are assigned to environments, and how many environments there are.

    `of_batch(g, n_classes)`: the environment index of every example of a batch with groups `g`.
    `counts(train_group_counts, n_classes, batch_size)`: training examples per environment
    (Group DRO's size adjustment reads it); for `examples` every environment holds one example
    and there are `batch_size` of them.
    """

    name: str
    of_batch: Callable[[torch.Tensor, int], torch.Tensor]
    counts: Callable[[torch.Tensor, int, int], torch.Tensor]
    label_pure: bool
    description: str


def _groups(g: torch.Tensor, n_classes: int) -> torch.Tensor:
    return g


def _group_counts(group_counts: torch.Tensor, n_classes: int, batch_size: int) -> torch.Tensor:
    return group_counts.long()


def _attribute(g: torch.Tensor, n_classes: int) -> torch.Tensor:
    import torch

    return torch.div(g, n_classes, rounding_mode="floor")


def _attribute_counts(group_counts: torch.Tensor, n_classes: int, batch_size: int) -> torch.Tensor:
    import torch

    del batch_size
    env = torch.arange(len(group_counts)) // n_classes
    return torch.zeros(int(env.max()) + 1, dtype=torch.long).index_add_(0, env, group_counts.long())


def _examples(g: torch.Tensor, n_classes: int) -> torch.Tensor:
    import torch

    return torch.arange(len(g), device=g.device)


def _example_counts(group_counts: torch.Tensor, n_classes: int, batch_size: int) -> torch.Tensor:
    import torch

    return torch.ones(batch_size, dtype=torch.long)


ENVIRONMENTS: Registry[EnvironmentKind] = Registry("environments")
ENVIRONMENTS.add("groups", EnvironmentKind(
    name="groups",
    of_batch=_groups,
    counts=_group_counts,
    label_pure=True,
    description="every (attribute, label) group is an environment",
))
ENVIRONMENTS.add("attribute", EnvironmentKind(
    name="attribute",
    of_batch=_attribute,
    counts=_attribute_counts,
    label_pure=False,
    description="every value of the spurious attribute is an environment (both labels in each)",
))
ENVIRONMENTS.add("examples", EnvironmentKind(
    name="examples",
    of_batch=_examples,
    counts=_example_counts,
    label_pure=True,
    description="every example of a batch is its own environment",
))
