"""How WILDS photos become model inputs: the references' evaluation crops, the training view, epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from tests.trainables.wilds_layouts import make_celeba, make_waterbirds
from trainables.augment import AUGMENTATIONS, center_crop, create_augment
from trainables.datasets import DATASETS, Preprocessing, load_dataset
from trainables.datasets.wilds_data import CELEBA, WATERBIRDS, ImageGeometry

SQUASH = ImageGeometry(square="squash", resize_scale=256 / 224)  # Waterbirds
CROP = ImageGeometry(square="crop")  # CelebA
MARK = 0.2  # side of the marked centre square, as a fraction of the photo's shorter side


def _photo(width: int, height: int) -> Image.Image:
    """Red = column, green = row (0..255 across the photo); blue marks a centred square."""
    cols = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    rows = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    blue = np.zeros((height, width))
    side = MARK * min(width, height)
    blue[int(round((height - side) / 2)) : int(round((height + side) / 2)),
         int(round((width - side) / 2)) : int(round((width + side) / 2))] = 255  # fmt: skip
    return Image.fromarray(np.stack([cols, rows, blue], -1).round().astype(np.uint8))


def _view(photo: Image.Image, geometry: ImageGeometry, size: int, train_view: bool = False) -> torch.Tensor:
    return transforms.Compose([*geometry.steps(size, train_view), transforms.PILToTensor()])(photo).double()


def _mark(view: torch.Tensor) -> tuple[float, float, float, float]:
    """Centre (row, column) and extent (height, width) of the blue square in a view."""
    rows, cols = torch.nonzero(view[2] > 127, as_tuple=True)
    return ((rows.min() + rows.max()) / 2).item(), ((cols.min() + cols.max()) / 2).item(), \
        (rows.max() - rows.min() + 1).item(), (cols.max() - cols.min() + 1).item()  # fmt: skip


@pytest.mark.parametrize("size", [224, 64])
def test_waterbirds_is_squashed_to_256_224ths_then_centre_cropped(size: int) -> None:
    """group_DRO get_transform_cub / wilds image_resize_and_center_crop: Resize((256, 256)), CenterCrop(224)."""
    width, height = 300, 200
    view = _view(_photo(width, height), SQUASH, size)
    scaled = int(size * 256 / 224)
    assert view.shape == (3, size, size)
    # The marked centre stays centred and is squashed: x by scaled/width, y by scaled/height.
    r, c, h, w = _mark(view)
    assert abs(r - (size - 1) / 2) <= 1 and abs(c - (size - 1) / 2) <= 1
    side = MARK * min(width, height)
    assert abs(w - side * scaled / width) <= 2 and abs(h - side * scaled / height) <= 2
    # The first output column is column (scaled - size) / 2 of the squashed photo: the border is cut.
    offset = (scaled - size) // 2
    expected_red = 255 * ((offset + 0.5) * width / scaled - 0.5) / (width - 1)
    assert abs(view[0, size // 2, 0].item() - expected_red) <= 3


@pytest.mark.parametrize("size", [224, 64])
def test_celeba_is_centre_cropped_to_its_square_then_resized(size: int) -> None:
    """group_DRO get_transform_celebA / wilds image_base: CenterCrop(178), Resize((224, 224))."""
    width, height = 178, 218
    photo = _photo(width, height)
    view = _view(photo, CROP, size)
    reference = transforms.Compose([transforms.CenterCrop(178), transforms.Resize((size, size)), transforms.PILToTensor()])
    assert torch.equal(view, reference(photo).double())
    r, c, h, w = _mark(view)
    assert abs(r - (size - 1) / 2) <= 1 and abs(c - (size - 1) / 2) <= 1
    assert abs(w - MARK * width * size / width) <= 2 and abs(h - w) <= 1  # a square stays square
    # Top row: row (218 - 178) / 2 = 20 of the photo (+ half an output pixel), all columns kept.
    expected_green = 255 * (20 + (0.5 * width / size - 0.5)) / (height - 1)
    assert abs(view[1, 0, size // 2].item() - expected_green) <= 3
    assert view[0, size // 2, 0].item() <= 3 and view[0, size // 2, -1].item() >= 252


def test_the_training_view_is_the_uncropped_photo_and_its_centre_the_eval_view() -> None:
    waterbird, face = _photo(300, 200), _photo(178, 218)
    squashed = _view(waterbird, SQUASH, 224, train_view=True)
    assert squashed.shape == (3, 256, 256)
    assert torch.equal(center_crop(squashed, 224), _view(waterbird, SQUASH, 224))  # exactly the reference's eval
    whole = _view(face, CROP, 224, train_view=True)
    assert whole.shape == (3, 274, 224)  # the whole portrait at its own aspect ratio, as the reference crops it
    # Resizing then cropping differs from cropping then resizing only by resampling.
    assert (center_crop(whole, 224) - _view(face, CROP, 224)).abs().mean() < 1.0


def test_the_registered_data_sets_use_the_references_geometry() -> None:
    from trainables.datasets.wilds_data import WildsSource

    sources = {spec.name: spec.load.args[1] for spec in (WATERBIRDS, CELEBA)}  # type: ignore[attr-defined]
    assert all(isinstance(s, WildsSource) for s in sources.values())
    assert sources["waterbirds"].geometry == SQUASH and sources["celebA"].geometry == CROP


@pytest.mark.parametrize("make, name, eval_shape, train_shape",
                         [(make_waterbirds, "waterbirds", (16, 16), (18, 18)), (make_celeba, "celebA", (16, 16), (20, 16))])  # fmt: skip
def test_only_the_training_split_comes_in_the_training_view(make, name, eval_shape, train_shape, tmp_path: Path) -> None:
    make(tmp_path)
    plain = load_dataset(name, tmp_path, Preprocessing(16))
    augmented = load_dataset(name, tmp_path, Preprocessing(16, augment="standard"))
    for split in ("train", "val", "test"):
        assert tuple(getattr(plain, split).inputs[0].shape[-2:]) == eval_shape
    assert tuple(augmented.train.inputs[0].shape[-2:]) == train_shape
    assert tuple(augmented.val.inputs[0].shape[-2:]) == tuple(augmented.test.inputs[0].shape[-2:]) == eval_shape
    batch = torch.stack([augmented.train.inputs[k] for k in range(3)])
    out = create_augment("standard", DATASETS.get(name).augment_options.get("standard"))(batch, torch.Generator(), 16)
    assert out.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_declares_its_training_length_and_augmentation_options(name: str) -> None:
    spec = DATASETS.get(name)
    assert spec.default_epochs is None or spec.default_epochs > 0
    if spec.reference_epochs:
        assert spec.default_epochs in spec.reference_epochs.values(), "the default is one reference's length"
    for augmentation, options in spec.augment_options.items():
        assert augmentation in AUGMENTATIONS
        create_augment(augmentation, options)  # valid options


def test_the_epochs_are_the_references() -> None:
    # kylrth/worst_group_scale run.py: epochs=30 if ds == "celebA" else 100; group_DRO README: 300 / 50.
    assert (WATERBIRDS.default_epochs, CELEBA.default_epochs) == (100, 30)
    assert WATERBIRDS.reference_epochs["kohpangwei/group_DRO"] == 300 and CELEBA.reference_epochs["kohpangwei/group_DRO"] == 50
