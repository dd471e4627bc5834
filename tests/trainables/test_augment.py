"""Batch augmentations: the references' random-resized crop + flip, on tensors, from a seeded generator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from trainables.augment import (
    AUGMENTATIONS,
    NoAugment,
    RandomResizedCropFlip,
    apply_boxes,
    center_crop,
    create_augment,
    epoch_generator,
)
from trainables.config import ConfigError, TrialConfig
from trainables.datasets import DATASETS
from trainables.options import OptionError
from trainables.registry import UnknownNameError
from trainables.training import CHECKPOINT_FILE, train

STANDARD = RandomResizedCropFlip()


def _batch(n: int = 6, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _ramps(n: int, height: int, width: int) -> torch.Tensor:
    """Channel 0 holds each pixel's column, channel 1 its row: bilinear resampling of a ramp is exact."""
    cols = torch.arange(width, dtype=torch.float64).expand(height, width)
    rows = torch.arange(height, dtype=torch.float64).unsqueeze(1).expand(height, width)
    return torch.stack([cols, rows, torch.zeros(height, width, dtype=torch.float64)]).expand(n, 3, height, width).clone()


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_augmentation_keeps_shape_dtype_and_range(name: str, dtype: torch.dtype) -> None:
    size = 32
    x = _batch(5, size + (0 if name == "none" else 8), size + (0 if name == "none" else 16)).to(dtype)
    out = create_augment(name)(x, torch.Generator().manual_seed(1), size)
    assert out.shape == (5, 3, size, size) and out.dtype == dtype and out.device == x.device
    # Crops and bilinear weights are convex combinations of input pixels: nothing outside their range.
    assert x.min() <= out.min() and out.max() <= x.max()


def test_none_is_the_identity_and_insists_on_the_eval_view() -> None:
    x = _batch(3, 32, 32)
    assert NoAugment()(x, torch.Generator(), 32) is x
    with pytest.raises(ValueError, match="expects 24x24 images"):
        NoAugment()(x, torch.Generator(), 24)


def test_the_same_generator_state_gives_the_same_batch_and_another_seed_another() -> None:
    x = _batch()
    first = STANDARD(x, torch.Generator().manual_seed(7), 32)
    again = STANDARD(x, torch.Generator().manual_seed(7), 32)
    other = STANDARD(x, torch.Generator().manual_seed(8), 32)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Examples of one batch get their own boxes, not one box for all.
    boxes = STANDARD.sample(64, 400, 480, torch.Generator().manual_seed(7))
    assert len(set(zip(boxes.top.tolist(), boxes.left.tolist(), boxes.height.tolist(), boxes.width.tolist()))) == 64


def test_epoch_generators_depend_on_seed_and_epoch_only() -> None:
    draw = lambda seed, epoch: torch.rand(4, generator=epoch_generator(seed, epoch))  # noqa: E731
    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(0, 2)) and not torch.equal(draw(0, 1), draw(1, 1))


def test_the_flip_is_exactly_a_mirror_image() -> None:
    x = _batch()
    boxes = STANDARD.sample(len(x), 40, 48, torch.Generator().manual_seed(3))
    flipped = apply_boxes(x, boxes._replace(flip=torch.ones(len(x), dtype=torch.bool)), 32)
    kept = apply_boxes(x, boxes._replace(flip=torch.zeros(len(x), dtype=torch.bool)), 32)
    assert torch.equal(flipped, kept.flip(-1)) and not torch.equal(flipped, kept)
    assert 0.45 < STANDARD.sample(4000, 40, 48, torch.Generator().manual_seed(4)).flip.float().mean() < 0.55


def test_each_output_is_its_box_resized() -> None:
    """On ramp images the output reads back the box: output column u samples left + (u + .5) w / size - .5."""
    n, height, width, size = 8, 40, 48, 24
    boxes = STANDARD.sample(n, height, width, torch.Generator().manual_seed(5))
    out = apply_boxes(_ramps(n, height, width), boxes._replace(flip=torch.zeros(n, dtype=torch.bool)), size)
    u = torch.arange(size, dtype=torch.float64) + 0.5
    for k in range(n):
        cols = boxes.left[k] + u * boxes.width[k] / size - 0.5
        rows = boxes.top[k] + u * boxes.height[k] / size - 0.5
        # Clamped at the image border, as grid_sample's border padding (and torchvision's resize) do.
        torch.testing.assert_close(out[k, 0, 0], cols.clamp(0, width - 1), atol=1e-4, rtol=0)
        torch.testing.assert_close(out[k, 1, :, 0], rows.clamp(0, height - 1), atol=1e-4, rtol=0)


def test_a_whole_image_box_at_the_same_size_is_the_identity() -> None:
    x = _batch(2, 32, 32)
    whole = STANDARD.sample(2, 32, 32, torch.Generator())._replace(
        top=torch.zeros(2, dtype=torch.long), left=torch.zeros(2, dtype=torch.long),
        height=torch.full((2,), 32), width=torch.full((2,), 32), flip=torch.zeros(2, dtype=torch.bool),
    )  # fmt: skip
    torch.testing.assert_close(apply_boxes(x, whole, 32), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [(3 / 4, 4 / 3), (1.0, 4 / 3)])
def test_boxes_are_drawn_as_torchvisions_random_resized_crop_draws_them(ratio: tuple[float, float]) -> None:
    """group_DRO's crop: area fraction U(0.7, 1), log aspect U(log r0, log r1), inside the image."""
    height, width, n = 218, 178, 4000  # a CelebA photo: a portrait, where the ratio range binds
    augment = RandomResizedCropFlip(ratio=ratio)
    boxes = augment.sample(n, height, width, torch.Generator().manual_seed(0))
    area = (boxes.height * boxes.width).double() / (height * width)
    aspect = boxes.width.double() / boxes.height
    rounding = 2 / min(height, width)  # widths and heights are rounded to whole pixels
    assert area.min() >= 0.7 - 2 * rounding and area.max() <= 1.0
    assert aspect.min() >= ratio[0] - rounding and aspect.max() <= ratio[1] + rounding
    assert (boxes.top >= 0).all() and (boxes.top + boxes.height <= height).all()
    assert (boxes.left >= 0).all() and (boxes.left + boxes.width <= width).all()
    torch.manual_seed(0)
    reference = torch.tensor(
        [RandomResizedCrop.get_params(torch.empty(3, height, width), [0.7, 1.0], list(ratio)) for _ in range(n)],
        dtype=torch.float64,
    )  # rows (top, left, height, width)
    ref_area = reference[:, 2] * reference[:, 3] / (height * width)
    ref_aspect = reference[:, 3] / reference[:, 2]
    se = lambda t: 4 * t.std().item() / math.sqrt(n)  # noqa: E731 - two independent samples, ~3 sigma
    assert abs(area.mean().item() - ref_area.mean().item()) < se(ref_area)
    assert abs(aspect.mean().item() - ref_aspect.mean().item()) < se(ref_aspect) + 1e-3
    assert abs(boxes.top.double().mean().item() - reference[:, 0].mean().item()) < se(reference[:, 0]) + 0.5


def test_celeba_narrows_the_aspect_ratio_as_the_reference_does() -> None:
    celeba = create_augment("standard", DATASETS.get("celebA").augment_options.get("standard"))
    waterbirds = create_augment("standard", DATASETS.get("waterbirds").augment_options.get("standard"))
    assert celeba == RandomResizedCropFlip(ratio=(1.0, 4 / 3)) and waterbirds == STANDARD


def test_channels_last_batches_stay_channels_last() -> None:
    x = _batch(2, 40, 40).contiguous(memory_format=torch.channels_last)
    out = STANDARD(x, torch.Generator().manual_seed(0), 32)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_on_the_gpu_the_batch_stays_there_and_the_draws_are_the_cpus(generator_device: str) -> None:
    x = _batch(8, 40, 48)
    out = STANDARD(x.cuda(), torch.Generator(generator_device).manual_seed(3), 32)
    assert out.device.type == "cuda"
    again = STANDARD(x.cuda(), torch.Generator(generator_device).manual_seed(3), 32)
    assert torch.equal(out, again)
    if generator_device == "cpu":  # the same draws as on the CPU; the pixels up to float rounding
        torch.testing.assert_close(out.cpu(), STANDARD(x, torch.Generator().manual_seed(3), 32), atol=1e-5, rtol=0)


def test_center_crop_is_torchvisions() -> None:
    from torchvision.transforms import CenterCrop

    x = _batch(2, 41, 50)
    assert torch.equal(center_crop(x, 32), CenterCrop(32)(x))
    with pytest.raises(ValueError, match="cannot centre-crop 64x64 from 41x50"):
        center_crop(x, 64)


def test_bad_names_and_options_are_named() -> None:
    with pytest.raises(UnknownNameError, match="unknown augmentation 'standart'. Did you mean 'standard'"):
        create_augment("standart")
    with pytest.raises(OptionError, match="augment 'standard': unknown option.*scal.*Valid: scale, ratio, flip_p"):
        create_augment("standard", {"scal": (0.5, 1.0)})
    with pytest.raises(OptionError, match="0 < scale"):
        create_augment("standard", {"scale": (0.9, 0.5)})
    with pytest.raises(ConfigError, match="augment must be one of none, standard; got 'flip'"):
        TrialConfig.from_mapping({"augment": "flip"})


# A constant schedule, so that epoch 1 is the same whatever the number of epochs.
TINY = {"dataset": "spurious_digits", "model": "resnet-10x0.25", "epochs": 2, "batch_size": 128, "lr": 0.05,
        "image_size": 16, "augment": "standard", "schedule": "constant"}  # fmt: skip


def test_an_augmented_run_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """Draws come from (seed, epoch), so epoch 2 after a restart sees the crops it would have seen."""
    straight: list[dict] = []
    train(TINY, lambda m, _: straight.append(dict(m)), workdir=tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop(metrics: dict, checkpoint_dir: Path) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(TINY, stop, workdir=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint" / CHECKPOINT_FILE).exists()
    resumed = train(TINY, workdir=tmp_path / "resumed", resume_from=tmp_path / "cut" / "checkpoint")
    # What training computed (timings aside): the loss, every group's accuracy, the selection.
    computed = lambda r: {k: v for k, v in r.items() if k.split("/")[0] in ("val", "test", "best") or k == "train/loss"}  # noqa: E731
    assert computed(resumed) == computed(straight[-1]) and "val/worst_acc" in computed(resumed)
    plain = train({**TINY, "augment": "none", "epochs": 1}, workdir=tmp_path / "plain")
    assert straight[0]["train/loss"] != plain["train/loss"], "the augmentation changed nothing"
