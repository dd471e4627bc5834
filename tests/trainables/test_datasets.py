"""Data sets: every registered one conforms to the GroupData contract; the WILDS loaders read
the real on-disk layouts (tiny copies written by `wilds_layouts`); spurious_digits plants its
shortcut as specified; missing data fails with a helpful message and leaves the disk untouched.
"""

from __future__ import annotations

import csv
import functools
import pickle
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch.utils.data import DataLoader

from tests.trainables.wilds_layouts import (
    CELEBA_COUNTS,
    CELEBA_GROUPS,
    WATERBIRDS_COUNTS,
    WATERBIRDS_GROUPS,
    Layout,
    make_celeba,
    make_waterbirds,
)
from trainables.datasets import (
    DATASETS,
    DataNotFoundError,
    GroupData,
    Preprocessing,
    WildsSource,
    load_dataset,
    wilds_dataset,
)
from trainables.options import OptionError
from trainables.registry import UnknownNameError

# Every WILDS-backed registered name needs a builder here; the conformance test fails without one.
BUILDERS: dict[str, Callable[[Path], Layout]] = {"waterbirds": make_waterbirds, "celebA": make_celeba}

# Unequal mean/std so that a missing or per-channel-swapped normalisation shows.
TINY = Preprocessing(image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))


def _splits(data: GroupData) -> dict[str, Any]:
    return {"train": data.train, "val": data.val, "test": data.test}


def _denormalise(x: torch.Tensor, preprocessing: Preprocessing = TINY) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    return x * std + mean


def _tree(path: Path) -> list[tuple[str, bool, int]]:
    """Everything under `path`: relative name, is-folder, size; to show a load wrote nothing."""
    entries = path.rglob("*")
    return sorted((str(p.relative_to(path)), p.is_dir(), p.stat().st_size if p.is_file() else 0) for p in entries)


@functools.lru_cache(maxsize=None)
def _digits(image_size: int = 8, **options: Any) -> GroupData:
    return load_dataset("spurious_digits", None, Preprocessing(image_size, TINY.mean, TINY.std), options)


# --- every registered data set ------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_conforms_to_the_group_data_contract(name: str, tmp_path: Path) -> None:
    spec = DATASETS.get(name)
    assert spec.name == name and spec.default_image_size > 0
    root = None
    if spec.needs_root:
        assert name in BUILDERS, f"dataset {name!r} is registered but has no layout builder in BUILDERS"
        BUILDERS[name](tmp_path)
        root = tmp_path
    data = load_dataset(name, root, TINY)

    assert data.n_classes >= 2 and data.n_groups % data.n_classes == 0 and data.n_groups >= 2 * data.n_classes
    assert len(set(data.group_names)) == data.n_groups and all("·" in n for n in data.group_names)
    for split_name, split in _splits(data).items():
        assert len(split) > 0, split_name
        assert split.y.dtype == split.g.dtype == torch.long and split.y.shape == split.g.shape == (len(split),)
        assert int(split.g.min()) >= 0 and int(split.g.max()) < data.n_groups
        assert torch.equal(split.g % data.n_classes, split.y)
        first = split.inputs[0]
        assert len(split.inputs) == len(split)
        assert first.shape == (3, TINY.image_size, TINY.image_size) and first.dtype == torch.float32

    with pytest.raises(OptionError, match="no_such_option"):
        load_dataset(name, root, TINY, {"no_such_option": 1})


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if DATASETS.get(n).needs_root])
def test_every_dataset_needing_a_root_reports_a_missing_one_and_creates_nothing(name: str, tmp_path: Path) -> None:
    before = _tree(tmp_path)
    with pytest.raises(DataNotFoundError, match="needs a data root"):
        load_dataset(name, None, TINY)
    with pytest.raises(DataNotFoundError) as error:
        load_dataset(name, tmp_path / "absent", TINY)
    assert str(tmp_path / "absent") in str(error.value)
    assert _tree(tmp_path) == before


def test_an_unknown_name_suggests_the_closest_registered_one() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'waterbirds'"):
        load_dataset("waterbird", None, TINY)


# --- WILDS: Waterbirds and CelebA in their real layouts ---------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_waterbirds_groups_are_background_by_label_with_the_hand_counted_sizes(tmp_path: Path) -> None:
    make_waterbirds(tmp_path)
    data = load_dataset("waterbirds", tmp_path, TINY)
    assert data.group_names == WATERBIRDS_GROUPS
    assert WATERBIRDS_GROUPS == ("land·landbird", "land·waterbird", "water·landbird", "water·waterbird")
    assert data.n_classes == 2
    for split_name, split in _splits(data).items():
        assert torch.bincount(split.g, minlength=4).tolist() == list(WATERBIRDS_COUNTS[split_name])
    assert data.train_group_counts().tolist() == [6, 1, 2, 4]

    # Each split keeps the file's row order; y and g follow the file's y and place columns.
    rows = _read_csv(tmp_path / "waterbirds_v1.0" / "metadata.csv")
    for code, split in enumerate(_splits(data).values()):
        mine = [r for r in rows if int(r["split"]) == code]
        assert split.y.tolist() == [int(r["y"]) for r in mine]
        assert split.g.tolist() == [2 * int(r["place"]) + int(r["y"]) for r in mine]
    # The builder writes the groups of each split round-robin: train starts with g = 0, 1, 2, 3.
    assert data.train.g[:4].tolist() == [0, 1, 2, 3] and data.train.y[:4].tolist() == [0, 1, 0, 1]


def test_celeba_groups_are_male_by_blond_hair_read_by_column_name(tmp_path: Path) -> None:
    layout = make_celeba(tmp_path)
    data = load_dataset("celebA", tmp_path, TINY)
    assert data.group_names == CELEBA_GROUPS
    assert CELEBA_GROUPS == ("female·not blond", "female·blond", "male·not blond", "male·blond")
    for split_name, split in _splits(data).items():
        assert torch.bincount(split.g, minlength=4).tolist() == list(CELEBA_COUNTS[split_name])

    attrs = _read_csv(tmp_path / "celebA_v1.0" / "list_attr_celeba.csv")
    partition_rows = _read_csv(tmp_path / "celebA_v1.0" / "list_eval_partition.csv")
    partition = {r["image_id"]: int(r["partition"]) for r in partition_rows}
    for code, split in enumerate(_splits(data).values()):
        mine = [r for r in attrs if partition[r["image_id"]] == code]
        assert split.y.tolist() == [int(r["Blond_Hair"] == "1") for r in mine]
        assert split.g.tolist() == [2 * int(r["Male"] == "1") + int(r["Blond_Hair"] == "1") for r in mine]
    # 000003.jpg: Male = 1, Blond_Hair = -1 -> the third train example is "male·not blond".
    assert attrs[2]["image_id"] == "000003.jpg" and (attrs[2]["Male"], attrs[2]["Blond_Hair"]) == ("1", "-1")
    assert data.group_names[int(data.train.g[2])] == "male·not blond"
    assert len(layout.split_rows("test")) == len(data.test) == sum(CELEBA_COUNTS["test"])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_wilds_inputs_are_the_row_images_resized_cropped_and_normalised(name: str, tmp_path: Path) -> None:
    layout = BUILDERS[name](tmp_path)
    data = load_dataset(name, tmp_path, TINY)
    for split_name, split in _splits(data).items():
        assert not split.in_memory
        batch = next(iter(DataLoader(split.inputs, batch_size=4, shuffle=False)))
        assert batch.shape == (4, 3, 8, 8) and batch.dtype == torch.float32
        # Each image is one solid colour; denormalised it is that colour (JPEG within 2%).
        for image, row in zip(batch, layout.split_rows(split_name)):
            expected = torch.tensor(row.colour, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8) / 255
            torch.testing.assert_close(_denormalise(image), expected, atol=0.02, rtol=0)


def test_wilds_images_survive_pickling_for_dataloader_workers(tmp_path: Path) -> None:
    make_waterbirds(tmp_path)
    images = load_dataset("waterbirds", tmp_path, TINY).val.inputs
    copy = pickle.loads(pickle.dumps(images))
    assert len(copy) == len(images) == 10
    torch.testing.assert_close(copy[3], images[3])


def test_the_adapter_combines_several_attribute_fields_in_mixed_radix(tmp_path: Path) -> None:
    # Any metadata field can be an attribute: wilds adds `from_source_domain` (1 in train only).
    spec = wilds_dataset(
        "waterbirds_by_domain",
        WildsSource(
            wilds_class="wilds.datasets.waterbirds_dataset.WaterbirdsDataset",
            attributes=("background", "from_source_domain"),
            required=("metadata.csv",),
            value_names={"from_source_domain": ("target", "source")},
        ),
    )
    make_waterbirds(tmp_path)
    data = spec.load(tmp_path, TINY, {})
    assert data.n_groups == 8
    assert data.group_names[:3] == ("land·target·landbird", "land·target·waterbird", "land·source·landbird")
    assert data.group_names[7] == "water·source·waterbird"
    # g = (background * 2 + from_source_domain) * 2 + y; train is the source domain.
    assert torch.bincount(data.train.g, minlength=8).tolist() == [0, 0, 6, 1, 0, 0, 2, 4]
    assert torch.bincount(data.val.g, minlength=8).tolist() == [3, 2, 0, 0, 1, 4, 0, 0]


def test_the_adapter_rejects_an_attribute_field_wilds_does_not_have(tmp_path: Path) -> None:
    source = WildsSource(wilds_class="wilds.datasets.waterbirds_dataset.WaterbirdsDataset", attributes=("colour",))
    make_waterbirds(tmp_path)
    with pytest.raises(ValueError, match="'colour'.*background"):
        wilds_dataset("bad", source).load(tmp_path, TINY, {})


# --- WILDS: missing or incomplete data ------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("name", "remove", "missing"),
    [
        ("waterbirds", None, "waterbirds_v1.0/RELEASE_v1.0.txt"),
        ("waterbirds", "waterbirds_v1.0", "waterbirds_v1.0/RELEASE_v1.0.txt"),
        ("waterbirds", "waterbirds_v1.0/RELEASE_v1.0.txt", "waterbirds_v1.0/RELEASE_v1.0.txt"),
        ("waterbirds", "waterbirds_v1.0/metadata.csv", "waterbirds_v1.0/metadata.csv"),
        ("celebA", "celebA_v1.0/list_eval_partition.csv", "celebA_v1.0/list_eval_partition.csv"),
        ("celebA", "celebA_v1.0/img_align_celeba", "celebA_v1.0/img_align_celeba/"),
    ],
)
def test_missing_wilds_data_names_the_expected_path_and_source_and_creates_nothing(
    name: str, remove: str | None, missing: str, tmp_path: Path
) -> None:
    # remove=None: the data root itself does not exist.
    root = tmp_path / "data"
    if remove is not None:
        BUILDERS[name](root)
        _remove(root / remove)
    before = _tree(tmp_path)
    with pytest.raises(DataNotFoundError) as error:
        load_dataset(name, root, TINY)
    message = str(error.value)
    assert str(root / missing) in message
    assert "https://wilds.stanford.edu/downloads" in message and "download=True" in message
    if remove is not None:
        listed = message.splitlines()[0].split(": missing ", 1)[1].rstrip(".").split(", ")
        assert f"{root}/{missing}" in listed
        assert not any(Path(path).exists() for path in listed), "only what is absent is reported missing"
    assert _tree(tmp_path) == before


# --- spurious_digits ------------------------------------------------------------------------


def test_digits_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    first = load_dataset("spurious_digits", None, TINY, {"seed": 3})
    again = load_dataset("spurious_digits", None, TINY, {"seed": 3})
    other = load_dataset("spurious_digits", None, TINY, {"seed": 4})
    for a, b in zip(_splits(first).values(), _splits(again).values()):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.g, b.g)
    assert not torch.equal(first.train.inputs, other.train.inputs)


def test_digit_groups_are_colour_by_label() -> None:
    data = _digits()
    assert data.group_names == ("blue·0-4", "blue·5-9", "orange·0-4", "orange·5-9")
    assert data.n_classes == 2
    # Stratified 60/20/20 split of scikit-learn's 1797 digits (901 are 0-4, 896 are 5-9).
    assert (len(data.train), len(data.val), len(data.test)) == (1079, 359, 359)
    assert data.train.inputs.shape == (1079, 3, 8, 8) and data.train.in_memory


@pytest.mark.parametrize("fraction", [0.95, 0.8, 0.5])
def test_in_train_the_colour_agrees_with_the_label_for_spurious_fraction_of_each_class(fraction: float) -> None:
    train = _digits(spurious_fraction=fraction).train
    attribute = train.g // 2
    for c in (0, 1):
        in_class = train.y == c
        agreement = float((attribute[in_class] == c).float().mean())
        # Exactly round(fraction * n) agree per class, so the rate is off by rounding only.
        assert abs(agreement - fraction) <= 0.5 / int(in_class.sum())


def test_changing_spurious_fraction_recolours_the_same_split() -> None:
    low, high = _digits(spurious_fraction=0.5).train, _digits(spurious_fraction=0.95).train
    assert torch.equal(low.y, high.y)
    majority = {name: float(((s.g // 2) == s.y).float().mean()) for name, s in (("low", low), ("high", high))}
    assert majority["low"] < 0.52 and majority["high"] > 0.94
    # Raising the fraction only turns minority examples into majority ones.
    assert bool(((high.g // 2) == high.y)[(low.g // 2) == low.y].all())


@pytest.mark.parametrize("split_name", ["val", "test"])
def test_in_val_and_test_the_colour_is_independent_of_the_label(split_name: str) -> None:
    split = getattr(_digits(), split_name)
    counts = torch.bincount(split.g, minlength=4).view(2, 2)  # [colour, label]
    assert int(counts.min()) > 0
    assert bool(((counts[0] - counts[1]).abs() <= 1).all()), counts


def test_the_colour_is_visible_in_every_image() -> None:
    data = _digits()
    for split in _splits(data).values():
        image = _denormalise(split.inputs)
        assert float(image.min()) >= -1e-5 and float(image.max()) <= 1 + 1e-5
        # Blue background: blue > red; orange: red > blue; white strokes add neither.
        red_minus_blue = (image[:, 0] - image[:, 2]).mean(dim=(1, 2))
        assert torch.equal((red_minus_blue > 0).long(), split.g // 2)



def _worst_group_of_linear_reader(data: GroupData, features: Callable[[Any], torch.Tensor]) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=3000).fit(features(data.train).numpy(), data.train.y.numpy())
    correct = torch.from_numpy(model.predict(features(data.test).numpy())) == data.test.y
    return min(float(correct[data.test.g == k].float().mean()) for k in range(data.n_groups))


def test_the_digit_carries_the_label_but_erm_on_pixels_takes_the_colour_shortcut() -> None:
    from trainables.datasets.spurious_digits import BACKGROUNDS

    data = _digits()

    def stroke_intensity(split: Any) -> torch.Tensor:
        # Undo the painting: red = bg + I * (1 - bg). Colour-blind by construction.
        red = _denormalise(split.inputs)[:, 0]
        background = torch.tensor(BACKGROUNDS)[split.g // 2][:, 0].view(-1, 1, 1)
        return ((red - background) / (1 - background)).flatten(1)

    # Measured (data seed 0, deterministic): the colour-blind linear reader's worst test group is
    # 0.85 (8x8 digits >= 5 are ~87% linearly separable); ERM on raw pixels leans on the colour
    # and its worst group (a label seen rarely in that colour) falls to 0.34.
    colour_blind = _worst_group_of_linear_reader(data, stroke_intensity)
    on_pixels = _worst_group_of_linear_reader(data, lambda split: split.inputs.flatten(1))
    assert colour_blind > 0.8
    assert on_pixels < colour_blind - 0.2, (on_pixels, colour_blind)


def test_digit_inputs_are_resized_to_the_requested_size() -> None:
    data = _digits(image_size=20)
    assert data.val.inputs.shape == (359, 3, 20, 20)
    torch.testing.assert_close(data.val.g, _digits().val.g)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"spurious_fraction": 1.5}, r"'spurious_fraction' must be in \[0, 1\], got 1.5"),
        ({"spurious_fraction": -0.1}, r"'spurious_fraction' must be in \[0, 1\]"),
        ({"val_fraction": 0.0}, r"'val_fraction' must be in \(0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must leave examples for train"),
        ({"test_fraction": 0.001}, "split 'test' would hold 1 examples"),
        ({"seed": -1}, "'seed' must be a non-negative integer"),
        ({"spurious_fraction": "high"}, "'spurious_fraction' must be float"),
        ({"spurius_fraction": 0.9}, "Did you mean 'spurious_fraction'"),
    ],
)
def test_bad_digit_options_are_rejected_with_a_clear_message(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        load_dataset("spurious_digits", None, TINY, options)


def test_a_fully_spurious_train_split_has_empty_minority_groups() -> None:
    counts = _digits(spurious_fraction=1.0).train_group_counts().tolist()
    assert counts[1] == counts[2] == 0 and counts[0] > 0 and counts[3] > 0
