"""Tiny WILDS data folders in the exact on-disk layouts of the real releases, for tests.

Each builder writes `<root>/<name>_v1.0/` with a handful of small JPEGs and returns a `Layout`
saying which rows it wrote, so a test can compare what a loader reads against what is on disk.
The per-split group counts are literal tables below (the hand count): every group has a
different count in every split, so a loader that swaps groups, labels or splits is caught.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")

# Group order is the product's encoding g = attribute * 2 + y.
WATERBIRDS_GROUPS = ("land·landbird", "land·waterbird", "water·landbird", "water·waterbird")
WATERBIRDS_COUNTS = {"train": (6, 1, 2, 4), "val": (3, 2, 1, 4), "test": (1, 3, 4, 2)}

CELEBA_GROUPS = ("female·not blond", "female·blond", "male·not blond", "male·blond")
CELEBA_COUNTS = {"train": (5, 3, 1, 2), "val": (2, 4, 3, 1), "test": (3, 1, 2, 4)}

# A subset of the 40 real CelebA attribute columns, in their real order; Blond_Hair is the
# label and Male the spurious attribute, the others are there so a loader must find them by name.
CELEBA_ATTRIBUTES = ("5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Eyeglasses", "Male", "Smiling", "Young")

_LANDBIRDS = ("026.Bronzed_Cowbird", "094.White_breasted_Nuthatch")
_WATERBIRDS = ("001.Black_footed_Albatross", "045.Northern_Fulmar")
_PLACES = ("/b/bamboo_forest/{:08d}.jpg", "/o/ocean/{:08d}.jpg")


@dataclass(frozen=True)
class Row:
    """One example as written to disk: split, label, spurious attribute, image path and its colour."""

    split: str
    y: int
    attribute: int
    image: Path
    colour: tuple[int, int, int]

    @property
    def g(self) -> int:
        return self.attribute * 2 + self.y


@dataclass(frozen=True)
class Layout:
    """A written data folder and its rows in file order."""

    root: Path
    data_dir: Path
    rows: tuple[Row, ...]

    def split_rows(self, split: str) -> list[Row]:
        return [row for row in self.rows if row.split == split]


def _interleaved(counts: dict[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    """(split, group) pairs in an order that mixes splits and groups, as real metadata files do."""
    pending = [(split, g, n) for split in SPLITS for g, n in enumerate(counts[split])]
    order: list[tuple[str, int]] = []
    while any(n for _, _, n in pending):
        for k, (split, g, n) in enumerate(pending):
            if n:
                order.append((split, g))
                pending[k] = (split, g, n - 1)
    return order


def _colour(k: int) -> tuple[int, int, int]:
    """A solid colour unique to row k, so a test can tell which file an input came from."""
    shade = (k * 37) % 256
    return (shade, 255 - shade, (3 * shade) % 256)


def _write_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full-quality JPEG of one solid colour decodes back to within a couple of levels.
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=100)


def _release(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "RELEASE_v1.0.txt").write_text("v1.0\n")


def make_waterbirds(root: Path) -> Layout:
    """Write `root/waterbirds_v1.0/` like the real release (metadata.csv + species folders of JPEGs)."""
    data_dir = root / "waterbirds_v1.0"
    _release(data_dir)
    rows: list[Row] = []
    with open(data_dir / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for img_id, (split, g) in enumerate(_interleaved(WATERBIRDS_COUNTS), start=1):
            place, y = divmod(g, 2)
            species = (_WATERBIRDS if y else _LANDBIRDS)[img_id % 2]
            filename = f"{species}/{species.split('.', 1)[1]}_{img_id:04d}_{100 + img_id}.jpg"
            _write_jpeg(data_dir / filename, (16, 16), _colour(img_id))
            writer.writerow([img_id, filename, y, SPLITS.index(split), place, _PLACES[place].format(img_id)])
            rows.append(Row(split, y, place, data_dir / filename, _colour(img_id)))
    return Layout(root, data_dir, tuple(rows))


def make_celeba(root: Path) -> Layout:
    """Write `root/celebA_v1.0/` like the real release (two CSVs + img_align_celeba/ JPEGs)."""
    data_dir = root / "celebA_v1.0"
    _release(data_dir)
    rows: list[Row] = []
    attrs_file = open(data_dir / "list_attr_celeba.csv", "w", newline="")
    split_file = open(data_dir / "list_eval_partition.csv", "w", newline="")
    with attrs_file, split_file:
        attrs, partition = csv.writer(attrs_file), csv.writer(split_file)
        attrs.writerow(["image_id", *CELEBA_ATTRIBUTES])
        partition.writerow(["image_id", "partition"])
        for k, (split, g) in enumerate(_interleaved(CELEBA_COUNTS), start=1):
            male, blond = divmod(g, 2)
            image_id = f"{k:06d}.jpg"
            # Real CelebA images are 178x218 (portrait): keep that shape so resize + crop matters.
            _write_jpeg(data_dir / "img_align_celeba" / image_id, (16, 20), _colour(k))
            # Other attributes vary independently of the groups (k's bits), as ±1 like the real file.
            values = {name: 1 if (k >> bit) & 1 else -1 for bit, name in enumerate(CELEBA_ATTRIBUTES)}
            values["Blond_Hair"], values["Male"] = 2 * blond - 1, 2 * male - 1
            attrs.writerow([image_id, *(values[name] for name in CELEBA_ATTRIBUTES)])
            partition.writerow([image_id, SPLITS.index(split)])
            rows.append(Row(split, blond, male, data_dir / "img_align_celeba" / image_id, _colour(k)))
    return Layout(root, data_dir, tuple(rows))



def textured(layout: Layout, size: tuple[int, int] = (20, 14), seed: int = 0) -> Layout:
    """Overwrite the layout's solid-colour JPEGs with noise of a non-square `size` (width, height),
    so that a transposed, flipped or mis-cropped image differs from the right one."""
    rng = np.random.default_rng(seed)
    for row in layout.rows:
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(row.image, format="JPEG", quality=95)
    return layout
