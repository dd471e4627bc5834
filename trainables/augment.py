"""Training augmentations as batch transforms: tensors in, tensors out, on whatever device they are.

An augmentation is called as ``augment(x, generator, size)``: `x` is a float batch N×C×H×W
(normalised or not: every operation here is a convex combination of pixels, so it commutes with a
per-channel affine normalisation), `generator` a `torch.Generator` that every random draw comes from
(on any device; the draws are a few numbers per example, the pixels stay on `x`'s device), and
`size` the side of the square output. The result is N×C×size×size, of `x`'s dtype, device and
memory format. The same generator state gives the same batch, so a run resumed from a checkpoint
re-draws what it would have drawn (`epoch_generator` derives one per seed and epoch).

Adding an augmentation is one `AUGMENTATIONS.add(name, Class)` line; a data set adjusts an entry's
parameters through its `DatasetSpec.augment_options` (CelebA's crop aspect ratios, as in the references).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from trainables.options import OptionError
from trainables.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUGMENTATIONS", "BatchAugment", "CropBoxes", "NoAugment", "RandomResizedCropFlip",
    "center_crop", "create_augment", "epoch_generator",
]  # fmt: skip

# A stream of its own, so that augmenting does not shift the batch order drawn from the same seed.
AUGMENT_STREAM = 0x0A06
ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries 10 boxes before its centre-crop fallback


class BatchAugment(ABC):
    """A random transform of a batch of images (see the module docstring for the contract)."""

    @abstractmethod
    def __call__(self, x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
        """`x` (N×C×H×W float) augmented to N×C×size×size, every random draw taken from `generator`."""


@dataclass(frozen=True)
class NoAugment(BatchAugment):
    """The identity: training batches are the evaluation view, already `size` pixels square."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"augment 'none' expects {size}x{size} images (the eval view), got {tuple(x.shape[-2:])}")
        return x


class CropBoxes(NamedTuple):
    """Per-example crop boxes in input pixels (top, left, height, width) and horizontal flips."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor


@dataclass(frozen=True)
class RandomResizedCropFlip(BatchAugment):
    """The references' training augmentation: random-resized crop, then a horizontal flip with p = 0.5.

    As kohpangwei/group_DRO data/cub_dataset.py `get_transform_cub(train=True, augment_data=True)`:
    ``RandomResizedCrop(target, scale=(0.7, 1.0), ratio=(0.75, 4/3), interpolation=BILINEAR)`` then
    ``RandomHorizontalFlip()``; data/celebA_dataset.py narrows the ratio to (1.0, 4/3) for CelebA's
    portrait photos (set through CelebA's `augment_options`). Boxes are drawn as torchvision's
    `RandomResizedCrop.get_params` draws them (area fraction uniform in `scale`, log aspect ratio
    uniform in `ratio`, 10 attempts, then the centre crop), for every example at once.

    Deliberate deviations: the crop is resampled bilinearly with `grid_sample`, without PIL's
    antialiasing (the crops here are 0.84-1x the output side on Waterbirds and CelebA, where
    antialiasing changes little); and it crops the data set's training view (Waterbirds: the photo
    resized to 256x256, so aspect ratios are measured on the squashed photo; CelebA: the whole photo
    at its own aspect ratio, as the reference), not the decoded photo.
    """

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        (s0, s1), (r0, r1) = self.scale, self.ratio
        if not (0 < s0 <= s1 <= 1 and 0 < r0 <= r1 and 0 <= self.flip_p <= 1):
            raise OptionError(
                f"augment 'standard': needs 0 < scale[0] <= scale[1] <= 1, 0 < ratio[0] <= ratio[1] and flip_p in "
                f"[0, 1]; got scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}"
            )

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> CropBoxes:
        """`n` boxes inside a `height`×`width` image and `n` flips, drawn as torchvision draws one."""
        import torch

        kw: dict[str, Any] = {"generator": generator, "device": generator.device}
        area = height * width * torch.empty(n, ATTEMPTS, device=generator.device, dtype=torch.float64).uniform_(
            *self.scale, generator=generator
        )
        log_ratio = torch.empty(n, ATTEMPTS, device=generator.device, dtype=torch.float64).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        aspect = torch.exp(log_ratio)
        w = torch.sqrt(area * aspect).round().long()
        h = torch.sqrt(area / aspect).round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits, as torchvision's loop
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # torchvision's fallback when no attempt fits: the largest centred box within the ratio range.
        fallback_w, fallback_h = self._fallback(height, width)
        any_fit = fits.any(dim=1)
        w = torch.where(any_fit, w, fallback_w)
        h = torch.where(any_fit, h, fallback_h)
        # randint(0, H - h + 1) as floor(U * (H - h + 1)): uniform over the valid offsets.
        top = (torch.rand(n, dtype=torch.float64, **kw) * (height - h + 1)).floor().long().clamp(max=height - h)
        left = (torch.rand(n, dtype=torch.float64, **kw) * (width - w + 1)).floor().long().clamp(max=width - w)
        top = torch.where(any_fit, top, (height - h) // 2)
        left = torch.where(any_fit, left, (width - w) // 2)
        flip = torch.rand(n, **kw) < self.flip_p
        return CropBoxes(top, left, h, w, flip)

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return width, int(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return int(round(height * self.ratio[1])), height
        return width, height

    def __call__(self, x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
        return apply_boxes(x, self.sample(len(x), x.shape[-2], x.shape[-1], generator), size)


def apply_boxes(x: torch.Tensor, boxes: CropBoxes, size: int) -> torch.Tensor:
    """Crop every example of `x` to its box, resize it to `size` (bilinear), and flip where asked.

    Output pixel u of a box [left, left + width) samples input x = left + (u + 0.5) * width / size - 0.5
    (pixel centres, as `interpolate(align_corners=False)`); the flip mirrors the result exactly.
    """
    import torch
    import torch.nn.functional as F

    n, _, height, width = x.shape
    device, dtype = x.device, torch.float32
    box = [t.to(device=device, dtype=dtype).view(n, 1) for t in boxes[:4]]
    top, left, h, w = box
    steps = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size  # output pixel centres in [0, 1]
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the image's outer edges.
    gx = 2 * (left + steps * w) / width - 1  # N×size
    gy = 2 * (top + steps * h) / height - 1
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), dim=-1)  # N×size×size×2
    source = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    flip = boxes.flip.to(device).view(n, 1, 1, 1)
    out = torch.where(flip, out.flip(-1), out).to(x.dtype)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size`×`size` window of a batch (the eval view of a stored training view), a slice.

    Offsets round down as torchvision's `CenterCrop` does (``int(round((H - size) / 2))``).
    """
    height, width = x.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from {height}x{width} images")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return x[..., top : top + size, left : left + size]


AUGMENTATIONS: Registry[type[BatchAugment]] = Registry("augmentation")
AUGMENTATIONS.add("none", NoAugment)
AUGMENTATIONS.add("standard", RandomResizedCropFlip)


def create_augment(name: str, options: Mapping[str, Any] | None = None) -> BatchAugment:
    """The registered augmentation `name` with `options` (its dataclass fields) over its defaults."""
    cls = AUGMENTATIONS.get(name)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [key for key in options or {} if key not in fields]
    if unknown:
        raise OptionError(f"augment {name!r}: unknown option(s) {', '.join(unknown)}. Valid: {', '.join(fields) or 'none'}")
    return cls(**dict(options or {}))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's augmentation draws, from the trial seed and the epoch only."""
    import numpy as np
    import torch

    state = np.random.SeedSequence((AUGMENT_STREAM, seed, epoch)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
