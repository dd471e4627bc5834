"""Data sets with group labels: the registry, and `load_dataset` to get one by name.

Adding a data set is one `DATASETS.add(...)` line below; a WILDS one is a `wilds_dataset(...)`
spec (see `wilds_data.py`). Loading modules import torch/wilds/scikit-learn only when loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from trainables.datasets.base import DataNotFoundError, DatasetSpec, GroupData, GroupSplit, Preprocessing
from trainables.datasets.spurious_digits import SPURIOUS_DIGITS
from trainables.datasets.wilds_data import CELEBA, WATERBIRDS, WildsSource, wilds_dataset
from trainables.options import merge_options
from trainables.registry import Registry

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "DatasetSpec",
    "GroupData",
    "GroupSplit",
    "Preprocessing",
    "WildsSource",
    "check_dataset",
    "load_dataset",
    "wilds_dataset",
]

DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.add(SPURIOUS_DIGITS.name, SPURIOUS_DIGITS)
DATASETS.add(WATERBIRDS.name, WATERBIRDS)
DATASETS.add(CELEBA.name, CELEBA)


def load_dataset(
    name: str, root: str | Path | None, preprocessing: Preprocessing, options: Mapping[str, Any] | None = None
) -> GroupData:
    """Load a registered data set; unknown options raise `OptionError`, missing data `DataNotFoundError`.

    A data set that needs a root checks its own folder layout (without creating anything), so a
    root that does not exist gets the same message, naming the expected paths, as one that is
    incomplete.
    """
    spec = DATASETS.get(name)
    merged = merge_options(f"dataset {name!r}", spec.defaults, options)
    return spec.load(check_dataset(name, root), preprocessing, merged)


def check_dataset(name: str, root: str | Path | None) -> Path | None:
    """The data set's root, once its files are known to be there; raises `DataNotFoundError`.

    Reads the disk only, so a launcher can check every data set before starting anything.
    """
    spec = DATASETS.get(name)
    if not spec.needs_root:
        return None
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} needs a data root (the folder holding its files) and none was given; "
            f"configure the data root, or use a built-in data set: "
            f"{', '.join(n for n in DATASETS if not DATASETS.get(n).needs_root)}"
        )
    path = Path(root).expanduser()
    if spec.check is not None:
        spec.check(path)
    return path
