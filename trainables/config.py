"""The configuration of one trial: a frozen dataclass built strictly from plain data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainables.augment import AUGMENTATIONS
from trainables.registry import did_you_mean

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
EVAL_TEST = ("best", "every")


class ConfigError(ValueError):
    """A trial configuration that cannot run; the message names the key and what is valid."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything that identifies one training run. Hyperparameters and setup, no state."""

    dataset: str = "spurious_digits"
    model: str = "resnet-10"
    objective: str = "erm"
    pretrained: bool = False
    weights: str | None = None
    data_root: str | None = None
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    objective_options: Mapping[str, Any] = field(default_factory=dict)
    # None: the objective's default, filled in by `trainables.setting.resolve_config`.
    environments: str | None = None
    sampler: str | None = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    schedule: str = "cosine"
    epochs: int = 5
    seed: int = 0
    image_size: int | None = None
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    cache: bool = True
    """Decode lazily loaded images once into a shared on-disk cache (trainables/datasets/cache.py)."""
    eval_test: str = "best"
    """best: evaluate test only at epochs where validation worst-group accuracy improves; every: each epoch."""
    compile: bool = False
    """torch.compile the model (in place)."""
    augment: str = "none"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TrialConfig:
        """Build from plain data; unknown keys and invalid values raise ConfigError."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in names:
                raise ConfigError(f"unknown trial setting {key!r}.{did_you_mean(key, names)} Valid: {', '.join(names)}")
        config = cls(**{k: _coerce(k, v) for k, v in raw.items()})
        config.validate()
        return config

    def validate(self) -> None:
        """Check value ranges and enumerations (names of datasets etc. are checked on lookup)."""
        for key, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("device", DEVICES),
            ("eval_test", EVAL_TEST),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if self.augment not in AUGMENTATIONS:
            valid = AUGMENTATIONS.names()
            raise ConfigError(f"augment must be one of {', '.join(valid)}; got {self.augment!r}.{did_you_mean(self.augment, valid)}")
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key} must be > 0; got {value!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8 pixels; got {self.image_size}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0; got {self.num_workers}")

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (for logging and checkpoints)."""
        data = dataclasses.asdict(self)
        data["dataset_options"] = dict(self.dataset_options)
        data["objective_options"] = dict(self.objective_options)
        return data


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrialConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Accept what search spaces and YAML produce (ints for floats, numpy scalars) without silent casts."""
    kind = _FIELD_TYPES[key]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars from hyperopt
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    expected = {"float": float, "int": int, "bool": bool, "str": str}.get(kind)
    if expected is not None and not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {kind}; got {value!r}")
    if kind.startswith("Mapping") and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping; got {value!r}")
    return value
