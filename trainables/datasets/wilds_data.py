"""WILDS data sets through one adapter: groups from metadata in memory, images decoded lazily.

A WILDS data set becomes a `DatasetSpec` with one `wilds_dataset(...)` call naming its wilds
class, the metadata field(s) of the spurious attribute and the label field. The group of an
example is the mixed-radix combination of its attribute values (first field most significant),
then the label: ``g = attribute * n_classes + y``.

The data folder is checked before wilds is called: wilds' `initialize_data_dir` creates folders
as a side effect, and its own error does not say what the folder must hold.

Images are prepared as the references prepare them for evaluation (`ImageGeometry`): Waterbirds
resized to a 256x256 square and centre-cropped to 224, CelebA centre-cropped to its 178x178
square and resized to 224 (at other image sizes, the same proportions). The original study
(kylrth/worst_group_scale run.py `setup_dataset`) squashed both to 224x224 without a crop.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from trainables.datasets.base import DataNotFoundError, DatasetSpec, GroupData, GroupSplit, Preprocessing

if TYPE_CHECKING:  # torch is imported when a data set loads: the specs (names, epochs, checks) cost none
    import torch
    from PIL import Image

WILDS_DOWNLOADS = "https://wilds.stanford.edu/downloads"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageGeometry:
    """How a photo becomes a square model input for evaluation, and the view training crops come from.

    `square` says how a photo that is not square becomes square: ``crop`` its largest centred square
    (kohpangwei/group_DRO data/celebA_dataset.py `get_transform_celebA`: ``CenterCrop(min(178, 218))``
    then ``Resize(target)``; p-lambda/wilds examples/transforms.py `get_image_base_transform_steps`,
    the same), or ``squash`` it by resizing to a square (group_DRO data/cub_dataset.py
    `get_transform_cub`: ``Resize((int(224 * 256/224),) * 2)`` then ``CenterCrop(224)``; wilds
    `get_image_resize_and_center_crop_transform_steps` with ``resize_scale: 256/224`` for waterbirds).
    The square is resized to ``int(size * resize_scale)`` and centre-cropped to `size`.

    The training view, which a batch augmentation crops from (`trainables.augment`), is the photo
    before any crop: squashed to the ``int(size * resize_scale)`` square, or, for ``crop``, resized
    whole to that shorter side at its own aspect ratio (the references crop the whole photo); its
    centre crop of `size` is the evaluation view (for ``crop`` up to resampling order).
    """

    square: str = "crop"
    resize_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.square not in ("crop", "squash") or self.resize_scale < 1.0:
            raise ValueError(f"ImageGeometry needs square 'crop' or 'squash' and resize_scale >= 1, got {self}")

    def steps(self, size: int, train_view: bool = False) -> list[Callable[[Any], Any]]:
        """PIL -> PIL steps giving the evaluation view (`size` square) or the training view."""
        from torchvision import transforms

        scaled = int(size * self.resize_scale)  # int(), as both references truncate
        if train_view:
            return [transforms.Resize(scaled if self.square == "crop" else (scaled, scaled))]
        first = [CenterSquare()] if self.square == "crop" else []
        return [*first, transforms.Resize((scaled, scaled)), transforms.CenterCrop(size)]


class CenterSquare:
    """PIL image -> its largest centred square (torchvision's `CenterCrop` at the shorter side)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        from torchvision.transforms import functional as TF

        return TF.center_crop(image, [min(image.size)] * 2)


@dataclass(frozen=True)
class WildsSource:
    """How one WILDS data set maps onto (attribute, label) groups, and which files it needs.

    `wilds_class` is a dotted path ("package.module.Class"), imported only when loading so that
    registering a data set costs no torch/wilds import. `required` lists entries under the data
    folder that must exist besides the RELEASE marker (a trailing "/" marks a folder).
    `value_names` names the values of a field where wilds' `metadata_map` does not (or not well).
    `splits` maps our split names to the wilds split names. `geometry` is how its photos become
    model inputs (the references' evaluation crop).
    """

    wilds_class: str
    attributes: tuple[str, ...]
    label: str = "y"
    required: tuple[str, ...] = ()
    value_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    splits: Mapping[str, str] = field(default_factory=lambda: {s: s for s in SPLITS})
    version: str | None = None
    geometry: ImageGeometry = field(default_factory=ImageGeometry)

    def resolve(self) -> type:
        """The wilds dataset class."""
        module, _, name = self.wilds_class.rpartition(".")
        return getattr(importlib.import_module(module), name)


def wilds_dataset(
    name: str,
    source: WildsSource,
    description: str = "",
    *,
    default_epochs: int | None = None,
    reference_epochs: Mapping[str, int] | None = None,
    augment_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> DatasetSpec:
    """A registrable `DatasetSpec` loading `source` from `<root>/<wilds name>_v<version>/`."""
    return DatasetSpec(
        name=name,
        load=functools.partial(load_wilds, name, source),
        check=functools.partial(check_wilds, name, source),
        default_image_size=224,
        defaults={},
        needs_root=True,
        description=description,
        default_epochs=default_epochs,
        reference_epochs=dict(reference_epochs or {}),
        augment_options=dict(augment_options or {}),
    )


def image_transform(
    preprocessing: Preprocessing, geometry: ImageGeometry | None = None, train_view: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> `geometry`'s evaluation (or training) view, float tensor, normalised."""
    from torchvision import transforms

    steps = (geometry or ImageGeometry()).steps(preprocessing.image_size, train_view)
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(preprocessing.mean, preprocessing.std)])


def load_wilds(
    name: str, source: WildsSource, root: Path | None, preprocessing: Preprocessing, options: Mapping[str, Any]
) -> GroupData:
    """Load a WILDS data set as `GroupData`; raise `DataNotFoundError` before touching the disk if incomplete."""
    import torch

    from trainables.datasets.wilds_images import WildsImages

    cls, version = check_wilds(name, source, root)
    with warnings.catch_warnings():
        # wilds turns read-only pandas (copy-on-write) arrays into tensors; we copy what we keep.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        dataset = cls(version=version, root_dir=str(root), download=False)

    fields = list(dataset.metadata_fields)
    metadata = dataset.metadata_array.to(torch.long).clone()
    sizes = {f: len(_value_names(source, dataset, f, metadata, fields)) for f in (*source.attributes, source.label)}
    attribute = torch.zeros(len(metadata), dtype=torch.long)
    for f in source.attributes:
        attribute = attribute * sizes[f] + _column(name, f, metadata, fields, sizes[f])
    n_classes = sizes[source.label]
    y = _column(name, source.label, metadata, fields, n_classes)
    g = attribute * n_classes + y

    split_array = np.asarray(dataset.split_array)
    parts = {}
    for split in SPLITS:
        wilds_split = source.splits[split]
        if wilds_split not in dataset.split_dict:
            raise ValueError(f"dataset {name!r}: wilds has no split {wilds_split!r}; it has {list(dataset.split_dict)}")
        indices = np.flatnonzero(split_array == dataset.split_dict[wilds_split])
        index = torch.from_numpy(indices)
        # Only training batches are augmented, so only they come in the training view.
        train_view = split == "train" and preprocessing.augment != "none"
        transform = image_transform(preprocessing, source.geometry, train_view)
        parts[split] = GroupSplit(inputs=WildsImages(dataset, indices, transform), y=y[index], g=g[index])

    return GroupData(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        group_names=_group_names(source, dataset, metadata, fields),
        n_classes=n_classes,
    )


def check_wilds(name: str, source: WildsSource, root: Path | None) -> tuple[type, str]:
    """The wilds class and version of `source`, once its folder is known to be complete."""
    cls = source.resolve()
    version = source.version or _latest_version(cls)
    check_layout(name, cls, version, source.required, root)
    return cls, version


def check_layout(name: str, cls: type, version: str, required: tuple[str, ...], root: Path | None) -> Path:
    """Return the data folder, or raise `DataNotFoundError` saying the layout, what is missing and the source.

    Only reads the disk: nothing is created, unlike wilds' own check.
    """
    root = Path(root) if root is not None else Path("<data root>")
    data_dir = root / f"{cls._dataset_name}_v{version}"
    entries = [f"RELEASE_v{version}.txt", *required]
    missing = [_shown(data_dir, entry) for entry in entries if not _present(data_dir, entry)]
    if not missing:
        return data_dir
    what = f"the data root {root} does not exist" if not root.is_dir() else f"missing {', '.join(missing)}"
    layout = "\n".join(f"  {_shown(data_dir, entry)}" for entry in entries)
    url = cls._versions_dict.get(version, {}).get("download_url")
    archive = f" (archive: {url})" if url else ""
    raise DataNotFoundError(
        f"dataset {name!r} not found: {what}.\n"
        f"Expected layout:\n{layout}\n"
        f"Get it from the WILDS download page {WILDS_DOWNLOADS}{archive} and extract it into {data_dir}/, "
        f"or on a machine with internet run\n"
        f"  python -c \"import wilds; wilds.get_dataset({cls._dataset_name!r}, root_dir='{root}', download=True)\"\n"
        f"and copy {data_dir} here."
    )


def _present(data_dir: Path, entry: str) -> bool:
    return (data_dir / entry).is_dir() if entry.endswith("/") else (data_dir / entry).is_file()


def _shown(data_dir: Path, entry: str) -> str:
    """The entry's full path, keeping the trailing "/" that marks a folder (Path drops it)."""
    return f"{data_dir / entry}/" if entry.endswith("/") else f"{data_dir / entry}"


def _latest_version(cls: type) -> str:
    return max(cls._versions_dict, key=lambda v: tuple(int(part) for part in v.split(".")))


def _value_names(
    source: WildsSource, dataset: Any, field_name: str, metadata: torch.Tensor, fields: list[str]
) -> tuple[str, ...]:
    """Names of a field's values: ours, else wilds' metadata_map (its padding stripped), else `field=k`."""
    if field_name in source.value_names:
        return tuple(source.value_names[field_name])
    wilds_map = getattr(dataset, "metadata_map", None) or {}
    if field_name in wilds_map:
        return tuple(str(v).strip() for v in wilds_map[field_name])
    if field_name not in fields:
        raise ValueError(f"wilds {type(dataset).__name__} has no metadata field {field_name!r}; it has {fields}")
    # The label's value count is the class count even when some class is absent from the data.
    n_classes = getattr(dataset, "n_classes", None) if field_name == source.label else None
    count = n_classes or int(metadata[:, fields.index(field_name)].max()) + 1
    return tuple(f"{field_name}={k}" for k in range(count))


def _column(name: str, field_name: str, metadata: torch.Tensor, fields: list[str], size: int) -> torch.Tensor:
    if field_name not in fields:
        raise ValueError(f"dataset {name!r}: wilds has no metadata field {field_name!r}; it has {fields}")
    column = metadata[:, fields.index(field_name)]
    if len(column) and (int(column.min()) < 0 or int(column.max()) >= size):
        raise ValueError(f"dataset {name!r}: metadata field {field_name!r} has values outside 0..{size - 1}")
    return column


def _group_names(source: WildsSource, dataset: Any, metadata: torch.Tensor, fields: list[str]) -> tuple[str, ...]:
    """'attr1·…·label' for every group, in the order of g (mixed radix, label last)."""
    names: list[tuple[str, ...]] = [()]
    for f in (*source.attributes, source.label):
        values = _value_names(source, dataset, f, metadata, fields)
        names = [(*prefix, value) for prefix in names for value in values]
    return tuple("·".join(parts) for parts in names)


WATERBIRDS = wilds_dataset(
    "waterbirds",
    WildsSource(
        wilds_class="wilds.datasets.waterbirds_dataset.WaterbirdsDataset",
        attributes=("background",),
        required=("metadata.csv",),
        geometry=ImageGeometry(square="squash", resize_scale=256 / 224),
    ),
    description="Waterbirds (WILDS): landbird/waterbird, spurious land/water background",
    # Training length: the original study (kylrth/worst_group_scale run.py `main`: 30 if celebA else
    # 100); group_DRO README's Waterbirds command (--n_epochs 300); wilds examples/configs/datasets.py.
    default_epochs=100,
    reference_epochs={"kylrth/worst_group_scale": 100, "kohpangwei/group_DRO": 300, "p-lambda/wilds": 300},
)

CELEBA = wilds_dataset(
    "celebA",
    WildsSource(
        wilds_class="wilds.datasets.celebA_dataset.CelebADataset",
        attributes=("male",),
        required=("list_attr_celeba.csv", "list_eval_partition.csv", "img_align_celeba/"),
        # wilds names only the label's values; its 'male' field is the CelebA `Male` attribute.
        value_names={"male": ("female", "male")},
        geometry=ImageGeometry(square="crop"),
    ),
    description="CelebA (WILDS): blond hair or not, spurious gender (Male attribute)",
    # As Waterbirds: the original study 30; group_DRO README's CelebA command 50; wilds 200.
    default_epochs=30,
    reference_epochs={"kylrth/worst_group_scale": 30, "kohpangwei/group_DRO": 50, "p-lambda/wilds": 200},
    # group_DRO data/celebA_dataset.py: "Orig aspect ratio is 0.81, so we don't squish it in that direction any more".
    augment_options={"standard": {"ratio": (1.0, 4 / 3)}},
)
