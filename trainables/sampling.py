"""The order in which a training epoch visits examples: a trial setting, `sampler`, looked up by name.

A sampler maps the training split's group labels, a number of groups and a seeded generator to
one epoch's sequence of example indices; the loop cuts that sequence into batches. Every order
is a pure function of (trial seed, epoch) (see `epoch_order`), so a run resumed from an epoch's
checkpoint draws exactly the epochs it would have drawn without the interruption.

- `shuffle`: a permutation of the split (every example once per epoch), as `DataLoader(shuffle=True)`
  does in every reference's ERM (p-lambda/wilds examples/configs/algorithm.py: ERM,
  `uniform_over_groups: False`; kohpangwei/group_DRO data/dro_dataset.py without `--reweight_groups`).
- `group_balanced`: each draw picks a group uniformly, then an example of it uniformly: the
  weights 1 / count(group of the example) of a `WeightedRandomSampler(weights, len(dataset),
  replacement=True)`, as both references build it (p-lambda/wilds wilds/common/data_loaders.py
  `get_train_loader`, 'standard' loader with `uniform_over_groups=True`; kohpangwei/group_DRO
  data/dro_dataset.py `get_loader` with `reweight_groups`). As there, draws are with replacement
  ("otherwise we'll run out of minority samples") and an epoch is as many draws as the split has
  examples, so an epoch keeps its length and the LR schedule its step count. Groups absent from
  the split are never drawn (their weight would be 1/0).
  Deliberate deviation: WILDS trains IRM with its 'group' loader (`GroupSampler`: each batch
  holds the same number of examples of each of `n_groups_per_batch` distinct groups); here IRM
  gets the same i.i.d. uniform-over-groups draws as Group DRO, which balance groups in
  expectation rather than in every batch.

Adding a sampler is one `SAMPLERS.add` line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from trainables.registry import Registry

if TYPE_CHECKING:  # imported where an epoch is drawn: the samplers' names cost no torch
    import torch

Sampler = Callable[["torch.Tensor", int, "torch.Generator"], "torch.Tensor"]
"""`(groups, n_groups, generator) -> indices`: one epoch's order over a split with these group labels."""

SAMPLERS: Registry[Sampler] = Registry("sampler")


def shuffle(groups: torch.Tensor, n_groups: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation: each example once per epoch."""
    import torch

    del n_groups
    return torch.randperm(len(groups), generator=generator)


def group_balanced(groups: torch.Tensor, n_groups: int, generator: torch.Generator) -> torch.Tensor:
    """`len(groups)` draws with replacement, each of a uniformly chosen present group, then of an
    example uniformly within it (WeightedRandomSampler's weights 1 / group count)."""
    import torch

    groups = groups.to("cpu", torch.long)
    counts = torch.bincount(groups, minlength=n_groups).to(torch.float64)
    weights = (1.0 / counts)[groups]  # every example's group is present, so no division by 0 is used
    # torch.multinomial is what WeightedRandomSampler calls, with the same arguments.
    return torch.multinomial(weights, len(groups), replacement=True, generator=generator)


SAMPLERS.add("shuffle", shuffle)
SAMPLERS.add("group_balanced", group_balanced)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's order: distinct per (trial seed, epoch), fixed across resumes."""
    return seed * 100_003 + epoch


def epoch_order(name: str, groups: torch.Tensor, n_groups: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch `epoch`'s order of the split with these group labels under sampler `name`.

    Unknown names raise `UnknownNameError` listing the registered samplers.
    """
    import torch

    sampler = SAMPLERS.get(name)
    return sampler(groups, n_groups, torch.Generator().manual_seed(epoch_seed(seed, epoch)))
