"""spurious_digits: scikit-learn's bundled 8x8 digits with a planted spurious background colour.

Label: digit >= 5. Attribute: background colour (blue or orange), digit strokes drawn on top in
white. As in Waterbirds, the attribute agrees with the label for a `spurious_fraction` of each
class in train, and is independent of the label in val and test (half of each class per colour).
The colour is a far easier feature than the digit shape, so ERM leans on it and its worst group
(a colour seen rarely with that label in train) lags; the shape still determines the label.

Everything is derived from `seed` only: the split from one stream, the colouring from another,
so changing `spurious_fraction` re-colours the same split and only moves the agree/disagree
boundary within each class (a higher fraction turns more minority examples into majority ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from trainables.datasets.base import DatasetSpec, GroupData, GroupSplit, Preprocessing
from trainables.options import OptionError

if TYPE_CHECKING:  # imported when the data set is built: its registration costs no torch
    import torch

NAME = "spurious_digits"
DEFAULTS: Mapping[str, Any] = {"spurious_fraction": 0.95, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
ATTRIBUTE_NAMES = ("blue", "orange")
LABEL_NAMES = ("0-4", "5-9")
# Background RGB per attribute, of similar luminance so that the cue is hue, not brightness.
BACKGROUNDS = ((0.20, 0.50, 0.95), (0.95, 0.45, 0.10))
STROKE = (1.0, 1.0, 1.0)
# Each class needs both colours in val and test, so every split holds at least this many per class.
MIN_PER_CLASS = 2


def load_spurious_digits(root: Path | None, preprocessing: Preprocessing, options: Mapping[str, Any]) -> GroupData:
    """Build the three splits in memory as N×3×S×S float tensors, resized and normalised."""
    import torch
    from sklearn.datasets import load_digits

    p, seed, val_fraction, test_fraction = _validated(options)
    digits = load_digits()
    intensity = torch.from_numpy(digits.images / 16.0).to(torch.float32)
    labels = (digits.target >= 5).astype(np.int64)
    split_seq, colour_seq = np.random.SeedSequence(seed).spawn(2)
    splits = _split(labels, np.random.default_rng(split_seq), val_fraction, test_fraction)
    colour_rng = np.random.default_rng(colour_seq)

    parts = {}
    for name, indices in splits.items():
        y = labels[indices]
        # Train: the attribute agrees with the label for a fraction p; val/test: for half.
        attribute = _attribute(y, colour_rng, p if name == "train" else 0.5)
        inputs = _render(intensity[indices], torch.from_numpy(attribute), preprocessing)
        y_t = torch.from_numpy(y)
        parts[name] = GroupSplit(inputs=inputs, y=y_t, g=torch.from_numpy(attribute) * 2 + y_t)
    return GroupData(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        group_names=tuple(f"{a}·{c}" for a in ATTRIBUTE_NAMES for c in LABEL_NAMES),
        n_classes=2,
    )


def _validated(options: Mapping[str, Any]) -> tuple[float, int, float, float]:
    owner = f"dataset {NAME!r}"
    p = float(options["spurious_fraction"])
    val_fraction, test_fraction = float(options["val_fraction"]), float(options["test_fraction"])
    if not 0.0 <= p <= 1.0:
        raise OptionError(f"{owner}: option 'spurious_fraction' must be in [0, 1], got {p}")
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise OptionError(f"{owner}: option {key!r} must be in (0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise OptionError(
            f"{owner}: val_fraction + test_fraction must leave examples for train, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )
    seed = options["seed"]
    if not float(seed).is_integer() or seed < 0:
        raise OptionError(f"{owner}: option 'seed' must be a non-negative integer, got {seed!r}")
    return p, int(seed), val_fraction, test_fraction


def _split(
    labels: np.ndarray, rng: np.random.Generator, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Stratified by class: each split holds the same share of each class."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * len(members))
        chosen = {"test": members[:n_test], "val": members[n_test : n_test + n_val], "train": members[n_test + n_val :]}
        for name, indices in chosen.items():
            if len(indices) < MIN_PER_CLASS:
                raise OptionError(
                    f"dataset {NAME!r}: split {name!r} would hold {len(indices)} examples of class "
                    f"{LABEL_NAMES[c]!r}, fewer than {MIN_PER_CLASS}; adjust val_fraction / test_fraction"
                )
            parts[name].append(indices)
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _attribute(y: np.ndarray, rng: np.random.Generator, agree: float) -> np.ndarray:
    """Colour per example: within each class, exactly round(agree * n) get the colour matching the label.

    Exact counts (not Bernoulli draws) keep the train correlation at `spurious_fraction` up to
    rounding, as in Waterbirds where the group sizes are fixed.
    """
    attribute = np.empty_like(y)
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(y == c))
        n_agree = round(agree * len(members))
        attribute[members[:n_agree]] = c
        attribute[members[n_agree:]] = 1 - c
    return attribute


def _render(intensity: torch.Tensor, attribute: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Resize the stroke intensity, then paint strokes over the background colour and normalise.

    Painting is affine in the intensity and bilinear weights sum to one, so resizing the one-channel
    intensity before painting gives the same image as resizing the painted one, at a third the work.
    """
    import torch
    import torch.nn.functional as F

    size = preprocessing.image_size
    x = intensity.unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
    x = x.clamp(0.0, 1.0)
    background = torch.tensor(BACKGROUNDS, dtype=torch.float32)[attribute].view(-1, 3, 1, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    # In place after the one N×3×S×S allocation: at S=224 that tensor alone is ~1 GB.
    image = x * (torch.tensor(STROKE, dtype=torch.float32).view(1, 3, 1, 1) - background)
    return image.add_(background).sub_(mean).div_(std)


SPURIOUS_DIGITS = DatasetSpec(
    name=NAME,
    load=load_spurious_digits,
    default_image_size=32,
    defaults=DEFAULTS,
    needs_root=False,
    description="scikit-learn 8x8 digits, label digit>=5, background colour spurious in train (offline)",
)
