"""`wgtune train`: one trial, locally, from flags or a small YAML file."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from trainables.metrics import (
    AVG_ACC,
    BEST_EPOCH,
    BEST_TEST_AVG,
    BEST_TEST_WORST,
    EPOCH,
    IMAGES_PER_S,
    SELECTION_METRIC,
    TEST,
    TRAIN,
    VAL,
    WORST_ACC,
    metric_key,
)
from wgtune.commands.base import Command
from wgtune.spec.errors import UserError

# Flags that map one-to-one onto TrialConfig fields: (flag, field, type, help).
_FIELDS: tuple[tuple[str, str, type, str], ...] = (
    ("--dataset", "dataset", str, "registered data set (see the list below)"),
    ("--model", "model", str, "model size id, e.g. resnet-18, resnet-18x0.5, vit-d6w256"),
    ("--objective", "objective", str, "training objective"),
    ("--weights", "weights", str, "local file of ImageNet weights (with --pretrained)"),
    ("--data-root", "data_root", str, "folder holding WILDS data sets"),
    ("--environments", "environments", str, "environments for IRM/ILC/DRO: groups | attribute"),
    ("--optimizer", "optimizer", str, "sgd | adamw"),
    ("--lr", "lr", float, "learning rate"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--batch-size", "batch_size", int, "batch size"),
    ("--schedule", "schedule", str, "cosine | step | constant"),
    ("--epochs", "epochs", int, "epochs"),
    ("--seed", "seed", int, "seed of initialisation and data order"),
    ("--image-size", "image_size", int, "input side in pixels (default: the data set's, or the weights')"),
    ("--num-workers", "num_workers", int, "DataLoader workers for data decoded lazily"),
    ("--device", "device", str, "auto | cpu | cuda"),
)


class TrainCommand(Command):
    name = "train"
    help = "Train one trial locally and print its metrics every epoch."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", type=Path, help="YAML file of trial settings; flags override it")
        for flag, field, kind, text in _FIELDS:
            parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
        parser.add_argument("--pretrained", action="store_true", default=None, help="start from ImageNet weights")
        parser.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable AMP on CUDA")
        parser.add_argument("--dataset-option", dest="dataset_options", action="append", default=[], metavar="KEY=VALUE",
                            help="data set option, e.g. spurious_fraction=0.9 (repeatable)")
        parser.add_argument("--objective-option", dest="objective_options", action="append", default=[],
                            metavar="KEY=VALUE",
                            help="objective hyperparameter, e.g. eta=0.05 (repeatable)")
        parser.add_argument("--out", type=Path, default=None,
                            help="folder for the checkpoint (default: runs/train/<time>)")
        parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint folder")

    def epilog(self) -> str:
        from trainables.datasets import DATASETS
        from trainables.models import list_models
        from trainables.objectives import OBJECTIVES

        return (
            f"data sets:   {', '.join(DATASETS.names())}\n"
            f"model sizes: {', '.join(list_models())}\n"
            "             (plus resnet-<depth>x<width> and vit-d<depth>w<width> for custom sizes)\n"
            f"objectives:  {', '.join(OBJECTIVES.names())}"
        )

    def run(self, args: argparse.Namespace) -> int:
        from trainables.config import TrialConfig
        from trainables.training import train

        config = TrialConfig.from_mapping(_settings(args))
        out = args.out or Path("runs") / "train" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        print(f"training {config.model} on {config.dataset} with {config.objective} "
              f"for {config.epochs} epochs; checkpoint in {out}")
        final = train(config, _print_epoch, workdir=out, resume_from=args.resume)
        print(
            f"best epoch {final[BEST_EPOCH]:.0f}: val worst-group {final[SELECTION_METRIC]:.3f}, "
            f"test worst-group {final[BEST_TEST_WORST]:.3f}, test average {final[BEST_TEST_AVG]:.3f}"
        )
        return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The YAML file's settings, overridden by the flags given."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        settings = _load_yaml(args.config)
    for _, field, _, _ in _FIELDS:
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for field in ("pretrained", "amp"):
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    for flag, field in (("--dataset-option", "dataset_options"), ("--objective-option", "objective_options")):
        given = _key_values(flag, getattr(args, field))
        if given:
            settings[field] = {**settings.get(field, {}), **given}
    return settings


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of trial settings")
    return data


def _key_values(flag: str, items: list[str]) -> dict[str, Any]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE; got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def _print_epoch(metrics: dict[str, float], checkpoint: Path) -> None:
    del checkpoint
    # With eval_test: best, test is evaluated only at epochs where validation worst-group improves.
    test = (f"test avg {metrics[metric_key(TEST, AVG_ACC)]:.3f} worst {metrics[metric_key(TEST, WORST_ACC)]:.3f}  "
            if metric_key(TEST, AVG_ACC) in metrics else "")
    print(
        f"epoch {metrics[EPOCH]:>3.0f}  loss {metrics[metric_key(TRAIN, 'loss')]:.4f}  "
        f"val avg {metrics[metric_key(VAL, AVG_ACC)]:.3f} worst {metrics[metric_key(VAL, WORST_ACC)]:.3f}  "
        f"{test}({metrics[IMAGES_PER_S]:.0f} img/s)",
        flush=True,
    )
