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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainables.registry import did_you_mean
from wgtune.spec.errors import UserError

SpaceSpec = dict[str, Any]
"""A search-space fragment in the syntax of `search_spaces/*.yaml`."""


class GridError(UserError):
    """The grid file is wrong; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSettings(_Strict):
    """Per-cell budget and how trials are scheduled."""

    num_samples: int = Field(10, ge=1, description="trials per cell")
    max_concurrent: int = Field(4, ge=1, description="trials running at once, whole study")
    scheduler: Literal["asha", "fifo"] = "fifo"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    n_startup: int = Field(5, ge=0, description="random trials per cell before TPE")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial from its checkpoint")
    seed: int = 0


class ResourceSpec(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, gpu: float) -> float:
        if gpu > 1 and not float(gpu).is_integer():
            raise ValueError("a trial takes a fraction of one GPU or a whole number of GPUs")
        return gpu


class Resources(ResourceSpec):
    """Per trial; `overrides` by model family ("vit") or model id ("resnet-152")."""

    overrides: dict[str, ResourceSpec] = Field(default_factory=dict)


class ObjectiveSettings(_Strict):
    """An objective's setting in this study; unset environments and sampler are the objective's own
    defaults, which follow its reference (trainables/setting.py)."""

    environments: str | None = None
    sampler: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PriorSettings(_Strict):
    """Where a cell's TPE starts from (see wgtune/search/priors.py)."""

    transfer: Literal["neighbours", "none"] = "neighbours"
    narrow: Literal["box", "soft", "none"] = Field("none", description=(
        "box: TPE searches a box around the neighbours' top trials; soft: the random start-up draws from "
        "a size-aware prior that keeps mass on the whole space (search/soft_prior.py); none: the whole space"))
    neighbours: int = Field(2, ge=1, description="nearest cells in log size whose history informs a cell")
    top_k: int = Field(3, ge=1, description="best trials of each neighbour that span the box")
    margin: float = Field(0.1, ge=0, description="box: widened by this fraction of each original range")
    across_families: bool = Field(False, description="neighbours may be of another model family")


class TrainSettings(_Strict):
    """Trial settings that are not searched and hold for every cell (see trainables/config.py)."""

    image_size: int | None = Field(None, ge=8)
    num_workers: int = Field(0, ge=0, description="decoding processes; also the decoders of a cache build")
    amp: bool = True
    cache: bool = Field(True, description="decode WILDS images once per node into a shared uint8 cache")
    eval_test: str = Field("best", description="best: test only where validation worst-group improves; every")
    compile: bool = Field(False, description="torch.compile the model")

    @field_validator("eval_test")
    @classmethod
    def _known_eval_test(cls, value: str) -> str:
        from trainables.config import EVAL_TEST

        if value not in EVAL_TEST:
            raise ValueError(f"must be one of {', '.join(EVAL_TEST)}")
        return value


class Filter(_Strict):
    """Cells matching every given field (strings are shell patterns)."""

    dataset: Union[str, list[str], None] = None
    model: Union[str, list[str], None] = None
    family: Union[str, list[str], None] = None
    objective: Union[str, list[str], None] = None
    pretrained: Union[bool, None] = None


class GridFile(_Strict):
    """The schema of a grid file."""

    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    study_dir: str | None = None
    storage: str | None = None
    data_root: str | None = None
    datasets: Union[list[str], dict[str, dict[str, Any]]]
    models: Union[list[str], dict[str, list[Union[str, int, float]]]]
    pretrained: Union[bool, list[bool]] = False
    objectives: Union[list[str], dict[str, ObjectiveSettings]]
    epochs: Union[int, dict[str, int], None] = Field(None, description="every data set's, or per data set")
    augment: Union[str, dict[str, str]] = Field("none", description="training augmentation, or per data set")
    weights: dict[str, str] = Field(default_factory=dict, description="pretrained source per model family")
    search: SearchSettings = SearchSettings()
    resources: Resources = Resources()
    search_space: dict[str, SpaceSpec] = Field(default_factory=dict)
    priors: PriorSettings = PriorSettings()
    train: TrainSettings = TrainSettings()
    final_seeds: int = Field(3, ge=0)
    include: list[Filter] = Field(default_factory=list)
    exclude: list[Filter] = Field(default_factory=list)


def cell_label(dataset: str, model: str, objective: str, pretrained: bool) -> str:
    """A cell's human name, `waterbirds · resnet-18 · groupdro` (+ ` · pretrained`): progress lines and run names."""
    return " · ".join([dataset, model, objective] + (["pretrained"] if pretrained else []))


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
        """Human name, as used for MLflow run names."""
        return cell_label(self.dataset, self.model, self.objective, self.pretrained)

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
        """Grid overrides of the search space, applied in order: all, data set, family, objective, model."""
        merged: dict[str, Any] = {}
        for key in ("all", cell.dataset, cell.family, cell.objective, cell.model):
            merged.update(self.spec.search_space.get(key, {}))
        return merged


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
        raise GridError(_describe(path, err)) from None
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
        _lookup(path, "objectives", lambda: OBJECTIVES.get(objective))
        cls = OBJECTIVES.get(objective)
        options = grid.objective_settings(objective).options
        _lookup(path, f"objectives.{objective}.options", lambda: merge_options(f"objective {objective!r}", cls.defaults, options))
        chosen = grid.objective_settings(objective)
        _lookup(path, f"objectives.{objective}",
                lambda: resolve_setting(objective, chosen.environments, chosen.sampler))


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


def _lookup(path: Path, key: str, check: Any) -> None:
    try:
        check()
    except ValueError as err:
        raise GridError(f"{path}: {key}: {err}") from None


def _matches(rule: Filter, cell: Cell) -> bool:
    for field in ("dataset", "model", "family", "objective"):
        wanted = getattr(rule, field)
        if wanted is None:
            continue
        patterns = wanted if isinstance(wanted, list) else [wanted]
        if not any(fnmatch.fnmatchcase(getattr(cell, field), p) for p in patterns):
            return False
    return rule.pretrained is None or rule.pretrained == cell.pretrained


_UNION_BRANCHES = frozenset({"int", "str", "float", "bool", "none"})


def _describe(path: Path, err: ValidationError) -> str:
    """One line per problem: file, dotted key, what is wrong and, for unknown keys, what is valid."""
    lines, keys = [], set()
    for problem in err.errors():
        # A union's branches add their type to the location (`epochs.int`, `epochs.dict[str,int]`):
        # the user wrote `epochs`, and hears about it once, from the first branch.
        loc = [str(p) for p in problem["loc"] if str(p) not in _UNION_BRANCHES
               and not str(p).startswith(("list[", "dict[", "union["))]
        key = ".".join(loc) or "(top level)"
        if key in keys and problem["type"] not in ("extra_forbidden", "missing"):
            continue
        keys.add(key)
        if problem["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            lines.append(f"{path}: {key}: unknown key.{did_you_mean(loc[-1], valid)} Valid: {', '.join(valid)}")
        elif problem["type"] == "missing":
            lines.append(f"{path}: {key}: required key is missing")
        else:
            lines.append(f"{path}: {key}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(dict.fromkeys(lines))


def _fields_at(loc: list[str]) -> list[str]:
    """The valid keys of the schema object at `loc` (list indices and dict keys are skipped)."""
    model: Any = GridFile
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            continue
        model = _model_in(field.annotation) or model
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as `list[Filter]` or `dict[str, ResourceSpec]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


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

