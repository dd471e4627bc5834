"""The decoded-image cache and the device feed: the same pixels as the uncached path, built once
by concurrent processes, a damaged file rebuilt, and training unchanged by it."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from tests.trainables.wilds_layouts import make_celeba, make_waterbirds, textured
from trainables.datasets import GroupData, Preprocessing, load_dataset
from trainables.datasets.cache import (
    CACHE_DIR_ENV,
    HEADER_BYTES,
    CacheUnsupported,
    DecodedCache,
    cache_splits,
    decompose,
    open_cache,
    verify_cache,
)
from trainables.feed import cached_batches

# Unequal mean/std so that a missing or per-channel-swapped normalisation shows.
PREP = Preprocessing(image_size=12, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))


def uncached(split, order: torch.Tensor) -> torch.Tensor:
    return torch.stack([split.inputs[int(i)] for i in order])


@pytest.mark.parametrize("make", [make_waterbirds, make_celeba])
def test_cached_batches_hold_exactly_the_pixels_of_the_uncached_transform(make, tmp_path: Path) -> None:
    layout = textured(make(tmp_path / "data"))
    name = "waterbirds" if make is make_waterbirds else "celebA"
    data = load_dataset(name, layout.root, PREP)
    cached = cache_splits(data)

    for split in ("train", "val", "test"):
        plain, fast = getattr(data, split), getattr(cached, split)
        assert isinstance(fast.inputs, DecodedCache) and len(fast.inputs) == len(plain)
        order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(3))
        batches = list(cached_batches(fast.inputs, fast.y, fast.g, order, 4, False, torch.device("cpu"), False))
        x = torch.cat([b[0] for b in batches])
        assert x.shape == (len(plain), 3, PREP.image_size, PREP.image_size) and x.is_contiguous()
        assert torch.equal(x, uncached(plain, order))  # bit for bit, not approximately
        assert torch.equal(torch.cat([b[1] for b in batches]), plain.y[order])
        assert torch.equal(torch.cat([b[2] for b in batches]), plain.g[order])
        assert torch.equal(fast.inputs[5], plain.inputs[5])  # the map-style view too


def test_channels_last_batches_hold_the_same_values(tmp_path: Path) -> None:
    layout = textured(make_waterbirds(tmp_path / "data"))
    data = cache_splits(load_dataset("waterbirds", layout.root, PREP))
    split = data.train

    def batches(channels_last: bool) -> torch.Tensor:
        return torch.cat([x for x, _, _ in cached_batches(split.inputs, split.y, split.g, None, 5, False,
                                                          torch.device("cpu"), channels_last)])

    x = batches(channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, batches(channels_last=False))


def test_a_last_batch_smaller_than_the_batch_size_is_dropped_only_when_asked(tmp_path: Path) -> None:
    layout = make_waterbirds(tmp_path / "data")
    split = cache_splits(load_dataset("waterbirds", layout.root, PREP)).train  # 13 examples
    cpu = torch.device("cpu")
    sizes = [len(y) for _, y, _ in cached_batches(split.inputs, split.y, split.g, None, 4, False, cpu, False)]
    dropped = [len(y) for _, y, _ in cached_batches(split.inputs, split.y, split.g, None, 4, True, cpu, False)]
    assert sizes == [4, 4, 4, 1] and dropped == [4, 4, 4]


def test_the_cache_lives_in_the_configured_folder_and_is_reused(tmp_path: Path, monkeypatch) -> None:
    layout = make_waterbirds(tmp_path / "data")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    first = cache_splits(load_dataset("waterbirds", layout.root, PREP))
    again = cache_splits(load_dataset("waterbirds", layout.root, PREP))
    other_size = cache_splits(load_dataset("waterbirds", layout.root, Preprocessing(10, PREP.mean, PREP.std)))

    assert first.train.inputs.built_here and not again.train.inputs.built_here
    assert first.train.inputs.path == again.train.inputs.path
    assert other_size.train.inputs.built_here and other_size.train.inputs.path != first.train.inputs.path
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.u8")) == sorted(
        getattr(d, s).inputs.path.name for d in (first, other_size) for s in ("train", "val", "test"))


def test_one_file_serves_two_normalisations_of_the_same_geometry(tmp_path: Path) -> None:
    layout = textured(make_waterbirds(tmp_path / "data"))
    imagenet = Preprocessing(PREP.image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    first, second = (load_dataset("waterbirds", layout.root, p) for p in (PREP, imagenet))
    a, b = cache_splits(first).val.inputs, cache_splits(second).val.inputs

    assert a.path == b.path and a.built_here and not b.built_here
    assert torch.equal(a[2], first.val.inputs[2]) and torch.equal(b[2], second.val.inputs[2])


def _source(root: Path):
    return load_dataset("waterbirds", root, PREP).train.inputs.cache_source("train")


def _build_in_child(root: str, folder: str, barrier) -> tuple[bool, str]:
    """In a fresh process: wait for the other, then open (or build) the cache."""
    source = _source(Path(root))
    barrier.wait()
    cache = open_cache(source, folder=Path(folder))
    return cache.built_here, hashlib.sha256(cache.images.numpy().tobytes()).hexdigest()


def test_two_processes_opening_one_cache_at_once_build_it_once_and_read_the_same_pixels(tmp_path: Path) -> None:
    layout = textured(make_waterbirds(tmp_path / "data"), size=(300, 200))  # decoding takes a while
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(2)
    with context.Pool(2) as pool:
        results = pool.starmap(_build_in_child, [(str(layout.root), str(tmp_path / "cache"), barrier)] * 2)

    built = [r[0] for r in results]
    assert sorted(built) == [False, True], results
    assert results[0][1] == results[1][1]
    files = list((tmp_path / "cache").iterdir())
    assert len([f for f in files if f.suffix == ".u8"]) == 1
    assert not [f for f in files if f.name.endswith(".tmp")]


def test_a_truncated_or_corrupted_cache_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    layout = textured(make_waterbirds(tmp_path / "data"))
    source = _source(layout.root)
    original = open_cache(source, folder=tmp_path / "cache")
    pixels = original.images.clone()
    path = original.path
    verify_cache(path)

    os.truncate(path, HEADER_BYTES + pixels.numel() // 2)  # a copy cut short, a full disk
    rebuilt = open_cache(source, folder=tmp_path / "cache")
    assert rebuilt.built_here and torch.equal(rebuilt.images, pixels)

    with open(path, "r+b") as f:  # same size, one pixel changed
        f.seek(HEADER_BYTES + 7)
        byte = f.read(1)
        f.seek(HEADER_BYTES + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="chunk 0"):
        verify_cache(path)
    rebuilt = open_cache(source, folder=tmp_path / "cache")
    assert rebuilt.built_here and torch.equal(rebuilt.images, pixels)

    with open(path, "r+b") as f:  # a torn header
        f.write(b"\0" * 64)
    assert open_cache(source, folder=tmp_path / "cache").built_here
    reopened = open_cache(source, folder=tmp_path / "cache")
    assert not reopened.built_here and torch.equal(reopened.images, pixels)


def test_a_stale_temporary_file_of_a_killed_builder_is_removed(tmp_path: Path) -> None:
    layout = make_waterbirds(tmp_path / "data")
    source = _source(layout.root)
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = folder / f".{source.name}.99999.tmp"
    stale.write_bytes(b"half a build")

    open_cache(source, folder=folder)
    assert not stale.exists()


def test_the_wilds_transform_splits_into_geometry_and_normalisation() -> None:
    from torchvision import transforms

    from trainables.datasets.wilds_data import image_transform

    geometric, mean, std = decompose(image_transform(PREP))
    assert (mean, std) == (PREP.mean, PREP.std)
    assert not any(isinstance(t, (transforms.ToTensor, transforms.Normalize)) for t in geometric.transforms)
    with pytest.raises(CacheUnsupported, match="deterministic"):
        decompose(transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()]))
    with pytest.raises(CacheUnsupported, match="ToTensor"):
        decompose(transforms.Compose([transforms.Resize(8)]))


def test_in_memory_data_is_left_as_it_is() -> None:
    data: GroupData = load_dataset("spurious_digits", None, Preprocessing(8))
    cached = cache_splits(data)
    assert all(getattr(cached, s) is getattr(data, s) for s in ("train", "val", "test"))
