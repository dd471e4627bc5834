"""What every dataset yields: three splits of (x, y, group), the group names and the class count.

Groups are encoded as ``g = attribute * n_classes + y`` so that the spurious attribute of an
example is ``g // n_classes`` and its label ``g % n_classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

if TYPE_CHECKING:  # imported where data is loaded: the registry's specs cost no torch
    import torch
    from torch.utils.data import Dataset


class DataNotFoundError(FileNotFoundError):
    """A dataset folder is missing or incomplete; the message says the expected layout and source."""


@dataclass(frozen=True)
class Preprocessing:
    """How inputs must look for the model: square side in pixels and per-channel normalisation."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: str = "none"
    """The batch augmentation training batches will get (`trainables.augment`): with one, a data set
    may hand out its training split in its training view (larger than `image_size`, for the crop)."""


@dataclass(frozen=True)
class GroupSplit:
    """One split. Labels and groups are always in memory; inputs are either one preprocessed
    tensor (small data sets) or a map-style dataset returning one preprocessed image per index
    (large ones, decoded lazily by DataLoader workers)."""

    inputs: Union[torch.Tensor, Dataset]
    y: torch.Tensor
    g: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def in_memory(self) -> bool:
        import torch

        return isinstance(self.inputs, torch.Tensor)


@dataclass(frozen=True)
class GroupData:
    """train / val / test splits of one data set, with its group names."""

    train: GroupSplit
    val: GroupSplit
    test: GroupSplit
    group_names: tuple[str, ...]
    n_classes: int

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def train_group_counts(self) -> torch.Tensor:
        import torch

        return torch.bincount(self.train.g, minlength=self.n_groups)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: how to load it, and what it needs.

    `load(root, preprocessing, options)` returns `GroupData`; `options` has already been merged
    over `defaults` (unknown keys rejected). `root` is None for data sets that need none.
    `check(root)`, if given, raises `DataNotFoundError` when the files are not there, reading the
    disk only, so a study can refuse to start before any trial would fail.
    `default_epochs` is the training length a grid uses for the data set when it sets none, and
    `reference_epochs` where such lengths come from (reference -> epochs), for the record.
    `augment_options` adjusts an augmentation's parameters for this data set (name -> options).
    """

    name: str
    load: Callable[[Path | None, Preprocessing, Mapping[str, Any]], GroupData]
    check: Callable[[Path | None], Any] | None = None
    default_image_size: int = 224
    defaults: Mapping[str, Any] = field(default_factory=dict)
    n_classes: int = 2
    n_groups: int = 4  # (attribute, label) groups: what `trainables.setting.check_setting` reads before loading
    needs_root: bool = True
    description: str = ""
    default_epochs: int | None = None
    reference_epochs: Mapping[str, int] = field(default_factory=dict)
    augment_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
