"""The grid file: a validated description of a whole study, and the cells it expands to.

Validation is strict and happens before anything starts: unknown keys get a suggestion, names
of data sets, model sizes and objectives are checked against the trainables registries, and
every message names the file and the key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainables.registry import did_you_mean
from wgtune.spec.errors import UserError
from wgtune.spec.schema import Filter, GridFile, ObjectiveSettings, ResourceSpec, describe_errors


class GridError(UserError):
    """The grid file is wrong; the message names the file and the key."""


def cell_label(dataset: str, model: str, objective: str, pretrained: bool) -> str:
    """A cell's human name, `waterbirds · resnet-18 · groupdro` (+ ` · pretrained`): progress lines."""
    return " · ".join([dataset, model, objective] + (["pretrained"] if pretrained else []))


SHORT_NAMES = {"waterbirds": "wb", "celebA": "ca", "spurious_digits": "sd", "groupdro": "dro", "resnet-": "r"}
"""Abbreviations of data sets, objectives and model-family prefixes in short cell labels (`cell_short_label`);
a name not listed stands for itself, so a new one is still unique (tests/wgtune/spec/test_grid.py checks)."""


def cell_short_label(dataset: str, model: str, objective: str, pretrained: bool) -> str:
    """A cell's short name, `wb/r50/dro` (+ `/pt`): its MLflow runs' names, where the runs table is narrow.
    The full id stays in the runs' tags (`records.CELL_TAG`)."""
    prefix = next((p for p in SHORT_NAMES if p.endswith("-") and model.startswith(p)), "")
    short_model = SHORT_NAMES[prefix] + model[len(prefix):] if prefix else model
    parts = [SHORT_NAMES.get(dataset, dataset), short_model, SHORT_NAMES.get(objective, objective)]
    return "/".join(parts + (["pt"] if pretrained else []))


@dataclass(frozen=True)
class Cell:
    """One point of the study: its own search, budget and MLflow parent run."""

    dataset: str
    model: str
    family: str
    size: str
    objective: str
    pretrained: bool

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/{self.objective}/{'pretrained' if self.pretrained else 'scratch'}"

    @property
    def label(self) -> str:
        """Human name, as progress lines and `wgtune status` show it."""
        return cell_label(self.dataset, self.model, self.objective, self.pretrained)

    @property
    def short_label(self) -> str:
        """Short name, as MLflow run names show it (`cell_short_label`)."""
        return cell_short_label(self.dataset, self.model, self.objective, self.pretrained)

    def seed(self, study_seed: int) -> int:
        """A seed derived from what identifies the cell, stable across launches and machines."""
        return derive_seed(study_seed, self.id)


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from what identifies a draw (DomainBed's `hparams_registry` seeds each draw
    from a hash of what names it): the same parts give the same seed on every machine, and any
    change of part (a cell's history, a trial's number) gives an unrelated one."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Grid:
    """A validated grid: the parsed file plus where it came from."""

    spec: GridFile
    path: Path

    @property
    def study_dir(self) -> Path:
        """Where Ray results and the default MLflow store live: `study_dir`, relative to the grid
        file, or `./wgtune_studies/<study>` like MLflow's `./mlruns`."""
        if self.spec.study_dir is None:
            return (Path("wgtune_studies") / self.spec.study).resolve()
        return self._from_grid(self.spec.study_dir)

    @property
    def storage(self) -> str:
        """Where Tune keeps experiment state and checkpoints. On a cluster every node must see it
        (a shared folder, or s3:// / gs://); by default `<study_dir>/ray`, enough on one machine."""
        given = self.spec.storage
        if given is None:
            return str(self.study_dir / "ray")
        return given if "://" in given else str(self._from_grid(given))

    @property
    def data_root(self) -> str | None:
        return None if self.spec.data_root is None else str(self._from_grid(self.spec.data_root))

    def _from_grid(self, given: str) -> Path:
        path = Path(given).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def cells(self) -> list[Cell]:
        """The product datasets x model sizes x pretrained x objectives, filtered."""
        from trainables.models import resolve

        pretrained = self.spec.pretrained if isinstance(self.spec.pretrained, list) else [self.spec.pretrained]
        cells = []
        for dataset, model, flag, objective in itertools.product(
            self.dataset_names(), self.model_ids(), pretrained, self.objective_names()
        ):
            size = resolve(model)  # canonical: resnet-18x1 and resnet-18 are one cell
            cells.append(Cell(dataset, size.id, size.family, size.size, objective, flag))
        if self.spec.include:
            cells = [c for c in cells if any(_matches(f, c) for f in self.spec.include)]
        cells = [c for c in cells if not any(_matches(f, c) for f in self.spec.exclude)]
        return list(dict.fromkeys(cells))

    def dataset_names(self) -> list[str]:
        return list(self.spec.datasets)

    def dataset_options(self, dataset: str) -> dict[str, Any]:
        return dict(self.spec.datasets[dataset]) if isinstance(self.spec.datasets, dict) else {}

    def model_ids(self) -> list[str]:
        models = self.spec.models
        if isinstance(models, list):
            return list(models)
        return [f"{family}-{size}" for family, sizes in models.items() for size in sizes]

    def objective_names(self) -> list[str]:
        return list(self.spec.objectives)

    def objective_settings(self, objective: str) -> ObjectiveSettings:
        objectives = self.spec.objectives
        return objectives[objective] if isinstance(objectives, dict) else ObjectiveSettings()

    def registered_objective(self, objective: str) -> str:
        """The registered objective (`trainables.objectives.OBJECTIVES`) the cells named `objective` train."""
        return self.objective_settings(objective).objective or objective

    def resources(self, cell: Cell) -> ResourceSpec:
        """Per-trial resources: a model-id override beats a family override beats the default."""
        overrides = self.spec.resources.overrides
        chosen = overrides.get(cell.model) or overrides.get(cell.family)
        return chosen or ResourceSpec(cpu=self.spec.resources.cpu, gpu=self.spec.resources.gpu)

    def epochs(self, dataset: str) -> int:
        """The training length of a data set's cells: the grid's (one number, or per data set), else the
        data set's own default (the original study's, `DatasetSpec.default_epochs`)."""
        given = self.spec.epochs
        if isinstance(given, int):
            return given
        if given and dataset in given:
            return given[dataset]
        from trainables.datasets import DATASETS

        default = DATASETS.get(dataset).default_epochs
        if default is None:
            raise GridError(f"{self.path}: epochs: required: data set {dataset!r} has no reference training length; "
                            f"set epochs: N, or epochs: {{{dataset}: N}}")
        return default

    def augment(self, dataset: str) -> str:
        """The training augmentation of a data set's cells (`none` unless the grid says)."""
        given = self.spec.augment
        return given if isinstance(given, str) else given.get(dataset, "none")

    def weights(self, cell: Cell) -> str | None:
        """The pretrained source a pretrained cell asks for (its family's `weights`), else None."""
        return self.spec.weights.get(cell.family) if cell.pretrained else None

    def space_overrides(self, cell: Cell) -> dict[str, Any]:
        """Grid overrides of the search space, applied in order: all, data set, family, registered objective,
        the cells' objective name (where it differs: `erm_balanced`), model."""
        merged: dict[str, Any] = {}
        for key in dict.fromkeys(("all", cell.dataset, cell.family, self.registered_objective(cell.objective),
                                  cell.objective, cell.model)):
            merged.update(self.spec.search_space.get(key, {}))
        return merged

    def space_targets(self) -> list[str]:
        """What a `search_space` key may name: all, a data set, model family, objective (either name) or model."""
        cells = self.cells()
        names = ["all", *self.dataset_names(), *(c.family for c in cells),
                 *(self.registered_objective(o) for o in self.objective_names()), *self.objective_names(),
                 *(c.model for c in cells)]
        return list(dict.fromkeys(names))


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; every problem is a GridError naming the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except OSError as err:
        raise GridError(f"cannot read grid file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise GridError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping with keys study, datasets, models, objectives, epochs, ...")
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as err:
        raise GridError(describe_errors(path, err)) from None
    grid = Grid(spec, path)
    _check_names(grid)
    if not grid.cells():
        raise GridError(f"{path}: the grid has no cells (check datasets, models, objectives, include and exclude)")
    return grid


def _check_names(grid: Grid) -> None:
    """Every name must be registered, and every option declared, before a study starts."""
    from trainables.datasets import DATASETS
    from trainables.models import resolve
    from trainables.objectives import OBJECTIVES
    from trainables.options import merge_options
    from trainables.setting import resolve_setting

    path = grid.path
    for dataset in grid.dataset_names():
        _lookup(path, "datasets", lambda: DATASETS.get(dataset))
        spec = DATASETS.get(dataset)
        _lookup(path, f"datasets.{dataset}", lambda: merge_options(f"dataset {dataset!r}", spec.defaults, grid.dataset_options(dataset)))
    for model in grid.model_ids():
        _lookup(path, "models", lambda: resolve(model))
    _check_dataset_settings(grid)
    for objective in grid.objective_names():
        chosen = grid.objective_settings(objective)
        registered = grid.registered_objective(objective)
        if chosen.objective is None:
            _lookup(path, "objectives", lambda: OBJECTIVES.get(objective),
                    hint=f" (to run a registered objective as cells of another name, give "
                         f"objectives.{objective}.objective)" if isinstance(grid.spec.objectives, dict) else "")
        else:
            if not _NAME.fullmatch(objective):
                raise GridError(f"{path}: objectives.{objective}: a cell name is letters, digits, '_', '.' and '-'")
            _lookup(path, f"objectives.{objective}.objective", lambda: OBJECTIVES.get(registered))
        cls = OBJECTIVES.get(registered)
        _lookup(path, f"objectives.{objective}.options",
                lambda: merge_options(f"objective {registered!r}", cls.defaults, chosen.options))
        _lookup(path, f"objectives.{objective}",
                lambda: resolve_setting(registered, chosen.environments, chosen.sampler))
    targets = grid.space_targets()
    for key in grid.spec.search_space:
        if key not in targets:
            raise GridError(f"{path}: search_space.{key}: names no data set, model family, objective or model of "
                            f"this grid.{did_you_mean(key, targets)} Valid: {', '.join(targets)}")


def _check_dataset_settings(grid: Grid) -> None:
    """Per-data-set settings name data sets of the grid and valid values; every data set has a length;
    `weights` names model families of the grid."""
    from trainables.augment import AUGMENTATIONS

    path, datasets = grid.path, grid.dataset_names()
    for key in ("epochs", "augment"):
        given = getattr(grid.spec, key)
        if isinstance(given, dict):
            for name in given:
                if name not in datasets:
                    raise GridError(f"{path}: {key}.{name}: not a data set of this grid.{did_you_mean(name, datasets)}"
                                    f" Valid: {', '.join(datasets)}")
    if isinstance(grid.spec.epochs, dict) and any(v < 1 for v in grid.spec.epochs.values()):
        raise GridError(f"{path}: epochs: every data set's training length must be >= 1 epoch")
    if isinstance(grid.spec.epochs, int) and grid.spec.epochs < 1:
        raise GridError(f"{path}: epochs: must be >= 1 (got {grid.spec.epochs})")
    for dataset in datasets:
        grid.epochs(dataset)
        _lookup(path, "augment", lambda: AUGMENTATIONS.get(grid.augment(dataset)))
    families = sorted({c.family for c in grid.cells()})
    for family in grid.spec.weights:
        if family not in families:
            raise GridError(f"{path}: weights.{family}: not a model family of this grid.{did_you_mean(family, families)}"
                            f" Valid: {', '.join(families)}")


def _lookup(path: Path, key: str, check: Any, hint: str = "") -> None:
    try:
        check()
    except ValueError as err:
        raise GridError(f"{path}: {key}: {err}{hint}") from None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _matches(rule: Filter, cell: Cell) -> bool:
    for field in ("dataset", "model", "family", "objective"):
        wanted = getattr(rule, field)
        if wanted is None:
            continue
        patterns = wanted if isinstance(wanted, list) else [wanted]
        if not any(fnmatch.fnmatchcase(getattr(cell, field), p) for p in patterns):
            return False
    return rule.pretrained is None or rule.pretrained == cell.pretrained


def check_study_dir(grid: Grid) -> None:
    """The study folder exists or can be made, and can be written; checked without creating anything."""
    folder = grid.study_dir
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "set study_dir to a folder you can write (a relative path is relative to the grid file)"
    if not existing.is_dir():
        raise GridError(f"{grid.path}: study_dir: cannot create {folder}: {existing} is a file, not a folder; {fix}")
    # access(2) answers for this user, and says EROFS for a read-only file system, writing nothing.
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GridError(f"{grid.path}: study_dir: cannot write to {folder}: {existing} is not writable; {fix}")


def expand_study_dir(grid: Grid) -> Path:
    """Create the study folder, or fail with one message if it cannot be written."""
    folder = grid.study_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise GridError(f"{grid.path}: study_dir: cannot write to {folder}: {err.strerror}") from None
    return folder

