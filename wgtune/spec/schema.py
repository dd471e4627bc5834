"""The grid file's schema: every key a grid may hold, its type, default and bounds (pydantic), and
how a validation error reads (one line per problem, naming the file and the key).

Checks that need the trainables registries or the whole grid (names, per-data-set settings, what
a search-space override targets) live in `grid.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from trainables.registry import did_you_mean

SpaceSpec = dict[str, Any]
"""A search-space fragment in the syntax of `search_spaces/*.yaml`."""


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
    allow_repeats: bool = Field(False, description=(
        "a search trial may repeat a configuration the cell has tried (its history included); by default it is "
        "drawn again: a repeat is a wasted trial unless you want seed-to-seed spread of one configuration"))
    allocation: Literal["fixed", "adaptive"] = Field("fixed", description=(
        "fixed: every cell gets num_samples trials; adaptive: the study's study_trials go to the cells whose best "
        "still rises, each cell keeps a floor and stops when it plateaus, num_samples is each cell's cap "
        "(wgtune/search/allocation.py)"))
    study_trials: int | None = Field(None, ge=1, validate_default=True, description=(
        "adaptive: search trials of the whole study, floors included (required under adaptive)"))
    min_trials: int | None = Field(None, ge=1, validate_default=True, description=(
        "adaptive: each cell's floor of search trials (default: n_startup + 3 TPE trials)"))
    plateau_gain: float | None = Field(None, ge=0, validate_default=True, description=(
        "adaptive: a cell whose last doubling of trials raised its expected best by less than this stops "
        "(default: PLATEAU_GAIN of wgtune/search/allocation.py, half a point)"))

    @field_validator("study_trials", "min_trials", "plateau_gain")
    @classmethod
    def _adaptive_only(cls, value: Any, info: ValidationInfo) -> Any:
        adaptive = info.data.get("allocation") == "adaptive"
        if info.field_name == "study_trials" and adaptive and value is None:
            raise ValueError("required under allocation: adaptive (the study's search trials in all, floors included)")
        if value is not None and not adaptive:
            raise ValueError("only under allocation: adaptive (set search.allocation: adaptive, or remove this key)")
        if info.field_name == "min_trials" and value is not None and value > info.data.get("num_samples", value):
            raise ValueError(f"a cell's floor cannot pass its cap, search.num_samples ({info.data['num_samples']})")
        return value


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
    defaults, which follow its reference (trainables/setting.py).

    The key under `objectives:` names the cells; `objective` is the registered objective they train
    (default: the key), so one objective can be run as several cells, e.g. ERM on group-balanced
    batches beside plain ERM: `erm_balanced: {objective: erm, sampler: group_balanced}`."""

    objective: str | None = Field(None, description="the registered objective these cells train (default: the key)")
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


class BudgetSettings(_Strict):
    """Ceilings on compute in device-hours (GPU-hours for cells whose trials hold GPUs, else CPU-core-hours): the
    router proposes no trial that would pass one; running trials finish (wgtune/search/ceiling.py)."""

    cell_device_hours: float | None = Field(None, gt=0, description="per cell, search and final seeds together")
    study_device_hours: float | None = Field(None, gt=0, description=(
        "the whole study, per unit: GPU-hours over GPU cells and CPU-core-hours over CPU cells, each held to it"))


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
    budget: BudgetSettings = BudgetSettings()
    include: list[Filter] = Field(default_factory=list)
    exclude: list[Filter] = Field(default_factory=list)


_UNION_BRANCHES = frozenset({"int", "str", "float", "bool", "none"})


def describe_errors(path: Path, err: ValidationError) -> str:
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
