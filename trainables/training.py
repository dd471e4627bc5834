"""The training loop of one trial: train, evaluate every group each epoch, checkpoint, report.

`report(metrics, checkpoint_dir)` is the loop's only contact with the outside world, so the
same loop runs under Ray Tune, from `wgtune train`, and in a notebook.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainables.config import TrialConfig
from trainables.datasets import DATASETS, GroupData, GroupSplit, Preprocessing, load_dataset
from trainables.environments import ENVIRONMENTS, EnvironmentKind
from trainables.metrics import TRAIN, GroupAccuracy, GroupLoss, GroupLossSum, group_accuracy
from trainables.models import ModelSize, create_model, resolve
from trainables.objectives import Objective, create_objective
from trainables.sampling import epoch_order
from trainables.setting import check_setting, resolve_config

Report = Callable[[dict[str, float], Path], None]
CHECKPOINT_FILE = "state.pt"
EVAL_BATCH = 512


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot continue."""


def train(
    config: Mapping[str, Any] | TrialConfig,
    report: Report | None = None,
    *,
    workdir: str | Path,
    resume_from: str | Path | None = None,
) -> dict[str, float]:
    """Train one trial; after every epoch save a checkpoint in `workdir` and call `report`.

    Returns the last epoch's metrics, which include the best epoch's (`best/*`): the model is
    selected by validation worst-group accuracy, and test metrics are those of that epoch.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_mapping(config)
    cfg = TrialConfig.from_mapping(resolve_config(cfg.as_dict()))  # environments, sampler: never None below
    run = _Run.build(cfg)
    checkpoint_dir = Path(workdir) / "checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        run.load(Path(resume_from) / CHECKPOINT_FILE)
    metrics: dict[str, float] = dict(run.best)
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        metrics = run.train_epoch(epoch)
        for name, split in (("val", run.data.val), ("test", run.data.test)):
            accuracy, loss = run.evaluate(split)
            metrics.update(accuracy.as_metrics(name))
            metrics.update(loss.as_metrics(name))
        run.update_best(epoch, metrics)
        metrics.update(run.best)
        run.epoch = epoch
        run.save(checkpoint_dir / CHECKPOINT_FILE)
        if report is not None:
            report(metrics, checkpoint_dir)
    return metrics


def resolve_preprocessing(size: ModelSize, dataset: str, cfg: TrialConfig) -> Preprocessing:
    """Input size and normalisation: the pretrained weights' when pretrained, else the data set's."""
    if cfg.pretrained:
        return Preprocessing(cfg.image_size or size.pretrained_image_size, size.pretrained_mean, size.pretrained_std)
    return Preprocessing(cfg.image_size or DATASETS.get(dataset).default_image_size)


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU Ray (or CUDA_VISIBLE_DEVICES) gives this process, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is visible to this process")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass
class _Run:
    """The mutable state of one training run; everything in it is saved in a checkpoint."""

    cfg: TrialConfig
    device: torch.device
    data: GroupData
    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    environments: EnvironmentKind
    train_proportions: torch.Tensor
    epoch: int = 0
    best: dict[str, float] | None = None

    @classmethod
    def build(cls, cfg: TrialConfig) -> _Run:
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        size = resolve(cfg.model)
        prep = resolve_preprocessing(size, cfg.dataset, cfg)
        data = load_dataset(cfg.dataset, cfg.data_root, prep, cfg.dataset_options)
        check_setting(cfg.objective, environments=cfg.environments, sampler=cfg.sampler, options=cfg.objective_options,
                      n_classes=data.n_classes, n_groups=data.n_groups, batch_size=cfg.batch_size)
        model = create_model(cfg.model, data.n_classes, prep.image_size, cfg.pretrained, cfg.weights).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        environments = ENVIRONMENTS.get(cfg.environments)
        counts = data.train_group_counts()
        env_counts = environments.counts(counts, data.n_classes, cfg.batch_size)
        objective = create_objective(cfg.objective, env_counts, cfg.objective_options)
        optimizer = _optimizer(cfg, model)
        steps = cfg.epochs * _batches_per_epoch(len(data.train), cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.schedule, steps))
        scaler = torch.amp.GradScaler(device.type, enabled=_amp(cfg, device))
        return cls(cfg, device, data, model, objective, optimizer, scheduler, scaler, environments,
                   counts.double() / counts.sum(), best={})

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of the trial's sampler; returns mean statistics, per-group loss and the throughput."""
        self.model.train()
        sums: dict[str, float] = {}
        group_loss = GroupLossSum(self.data.n_groups, self.device)
        batches = images = 0
        start = time.perf_counter()
        order = epoch_order(self.cfg.sampler, self.data.train.g, self.data.n_groups, self.cfg.seed, epoch)
        for x, y, g in self._batches(self.data.train, self.cfg.batch_size, order=order):
            env = self.environments.of_batch(g, self.data.n_classes)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                stats, losses = self.objective.backward(self.model, x, y, env, self.scaler.scale)
            group_loss.add(losses, g)
            if not math.isfinite(stats["loss"]):
                raise DivergedError(
                    f"training loss became {stats['loss']} at epoch {epoch}, step {batches + 1} "
                    f"(lr={self.cfg.lr:g}, objective={self.cfg.objective})"
                )
            if stats.pop("reset_optimizer", 0.0):
                self.optimizer.state.clear()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            batches += 1
            images += len(y)
        seconds = time.perf_counter() - start
        metrics = {f"train/{key}": value / max(batches, 1) for key, value in sums.items()}
        # Per-group cross-entropy of the training forward passes; `train/loss` stays the objective's.
        metrics.update(group_loss.result().as_metrics(TRAIN, with_average=False))
        metrics.update({"epoch": float(epoch), "train/images_per_s": images / seconds, "lr": self.scheduler.get_last_lr()[0]})
        return metrics

    @torch.no_grad()
    def evaluate(self, split: GroupSplit) -> tuple[GroupAccuracy, GroupLoss]:
        """Accuracy and mean cross-entropy of every group of `split`."""
        self.model.eval()
        correct = []
        loss = GroupLossSum(self.data.n_groups, self.device)
        for x, y, g in self._batches(split, EVAL_BATCH, order=None):
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                logits = self.model(x)
            correct.append((logits.argmax(dim=1) == y).cpu())
            loss.add(F.cross_entropy(logits.float(), y, reduction="none"), g)
        return group_accuracy(torch.cat(correct), split.g, self.data.n_groups, self.train_proportions), loss.result()

    def update_best(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Model selection: the epoch with the best validation worst-group accuracy (first on ties)."""
        if self.best and not metrics["val/worst_acc"] > self.best["best/val_worst_acc"]:
            return
        self.best = {
            "best/epoch": float(epoch),
            "best/val_worst_acc": metrics["val/worst_acc"],
            "best/val_avg_acc": metrics["val/avg_acc"],
            "best/test_worst_acc": metrics["test/worst_acc"],
            "best/test_avg_acc": metrics["test/avg_acc"],
            "best/test_weighted_acc": metrics["test/weighted_acc"],
        }

    def save(self, path: Path) -> None:
        state = {
            "config": self.cfg.as_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic, so a kill mid-save never leaves a torn checkpoint

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        mine, theirs = self.cfg.as_dict(), state["config"]
        # Checkpoints from before samplers existed were all shuffled.
        changed = [k for k in ("dataset", "model", "objective", "environments", "sampler")
                   if mine[k] != theirs.get(k, "shuffle" if k == "sampler" else None)]
        if changed:
            raise ValueError(f"checkpoint {path} is of a different trial (differs in {', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        torch.set_rng_state(state["rng"].cpu())
        self.epoch, self.best = int(state["epoch"]), dict(state["best"])

    def _batches(
        self, split: GroupSplit, batch_size: int, order: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches on the device, in `order` (a training epoch's sampler order; None: in sequence,
        for evaluation). In-memory splits are sliced directly: a DataLoader would collate item by
        item and cost more than a small model's step on the CPU."""
        if split.in_memory:
            inputs = split.inputs
            index = order if order is not None else torch.arange(len(split))
            end = len(index) - (order is not None and _drops_last(len(index), batch_size))
            for start in range(0, end, batch_size):
                idx = index[start:start + batch_size]
                yield self._to_device(inputs[idx], split.y[idx], split.g[idx])
            return
        loader = DataLoader(
            _Indexed(split.inputs),
            batch_size=batch_size,
            sampler=order.tolist() if order is not None else None,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=order is not None and _drops_last(len(order), batch_size),
            persistent_workers=False,
        )
        for x, idx in loader:
            yield self._to_device(x, split.y[idx], split.g[idx])

    def _to_device(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        x = x.to(self.device, non_blocking=True, memory_format=memory_format)
        return x, y.to(self.device, non_blocking=True), g.to(self.device, non_blocking=True)


class _Indexed(Dataset):
    """Pairs each lazily decoded input with its index, so labels and groups come from memory."""

    def __init__(self, inputs: Dataset) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.inputs[idx], idx


def _optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(kind: str, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per optimizer step: cosine to zero, x0.1 at 50% and 75%, or flat."""
    total = max(total_steps, 1)
    if kind == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if kind == "step":
        return lambda step: 0.1 ** sum(step >= total * f for f in (0.5, 0.75))
    return lambda step: 1.0


def _drops_last(n: int, batch_size: int) -> bool:
    """Whether a training epoch skips its last batch: one example, on which BatchNorm cannot train."""
    return n % batch_size == 1


def _batches_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch (the LR schedule's unit): the batches the loader yields."""
    return math.ceil(n / batch_size) - _drops_last(n, batch_size)


def _amp(cfg: TrialConfig, device: torch.device) -> bool:
    return cfg.amp and device.type == "cuda"
