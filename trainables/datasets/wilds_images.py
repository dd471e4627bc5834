"""A WILDS split's images as a map-style torch `Dataset`, decoded on access (`wilds_data.load_wilds` makes them).

Apart from `wilds_data`, whose data set specs are read without torch, because subclassing
`Dataset` imports it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from PIL import Image

    from trainables.datasets.cache import CacheSource


class WildsImages(Dataset[torch.Tensor]):
    """One split's images: index -> one preprocessed image tensor, decoded on access."""

    def __init__(self, dataset: Any, indices: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset = dataset
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.dataset.get_input(int(self.indices[index])))

    def cache_source(self, split: str) -> CacheSource:
        """These images for the decoded cache: keyed by the wilds data set, version, folder, the
        examples (indices and file names) and the geometric part of the transform."""
        from trainables.datasets.cache import CacheSource, GeometricImages, decompose

        geometric, mean, std = decompose(self.transform)
        examples = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes())
        files = getattr(self.dataset, "_input_array", None)  # file names, where wilds keeps them
        if files is not None:
            examples.update("\n".join(str(files[i]) for i in self.indices).encode())
        key = {"dataset": self.dataset.dataset_name, "version": self.dataset.version,
               "data_dir": str(Path(self.dataset.data_dir).resolve()), "split": split,
               "count": len(self.indices), "examples": examples.hexdigest(), "preprocessing": repr(geometric)}
        return CacheSource(key, GeometricImages(self._decode, len(self.indices), geometric), mean, std)

    def _decode(self, index: int) -> Image.Image:
        return self.dataset.get_input(int(self.indices[index]))
