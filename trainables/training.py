"""The training loop of one trial: train, evaluate every group each epoch, checkpoint, report.

Validation is evaluated every epoch; test, by default (`eval_test: best`), only at the epochs
whose validation worst-group accuracy improves: the epochs model selection can report.

`report(metrics, checkpoint_dir)` is the loop's only contact with the outside world, so the
same loop runs under Ray Tune, from `wgtune train`, and in a notebook.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainables.augment import create_augment, epoch_generator
from trainables.config import TrialConfig
from trainables.datasets import DATASETS, GroupData, GroupSplit, Preprocessing, load_dataset
from trainables.datasets.cache import DecodedCache, cache_splits
from trainables.environments import ENVIRONMENTS, EnvironmentKind
from trainables.feed import cached_batches
from trainables.meter import StepMeter
from trainables.metrics import (
    BEST_EPOCH,
    CHECKPOINT_SECONDS,
    DATA_WAIT_FRACTION,
    ELAPSED_SECONDS,
    EPOCH,
    IMAGES_PER_S,
    IMAGES_SEEN,
    LR,
    SELECTED,
    SELECTION_METRIC,
    STEP_METRIC,
    TEST,
    TRAIN,
    VAL,
    GroupAccuracy,
    GroupLoss,
    GroupLossSum,
    best_key,
    group_accuracy,
    metric_key,
)
from trainables.models import ModelSize, create_model, pretrained_normalisation, resolve
from trainables.objectives import Objective, create_objective
from trainables.precision import Precision, choose_precision
from trainables.sampling import epoch_order
from trainables.setting import check_setting, resolve_config

Report = Callable[[dict[str, float], Path], None]
CHECKPOINT_FILE = "state.pt"
"""Reported metrics that measure the machine, not the run: they differ between identical runs."""
EVAL_BATCH = 512


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot continue.

    `metrics` holds what the trial had spent when it diverged (`ELAPSED_SECONDS`, `IMAGES_SEEN`, the diverged
    epoch's steps included), for whoever accounts for its compute: no epoch report carries that epoch's time."""

    def __init__(self, message: str, metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics: dict[str, float] = dict(metrics or {})


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
    `test/*` metrics are in an epoch's report when test was evaluated then (see `eval_test`).
    Every report carries the trial's cumulative cost so far (`IMAGES_SEEN`, `ELAPSED_SECONDS`), carried across
    resumes in the checkpoint.
    """
    started = time.perf_counter()  # this attempt's set-up (data, model) is part of what the trial costs
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_mapping(config)
    cfg = TrialConfig.from_mapping(resolve_config(cfg.as_dict()))  # environments, sampler: never None below
    run = _Run.build(cfg)
    checkpoint_dir = Path(workdir) / "checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        run.load(Path(resume_from) / CHECKPOINT_FILE)
    carried = run.elapsed_s  # what the attempts before this one spent, as far as its checkpoint knows
    metrics: dict[str, float] = dict(run.best)
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        try:
            metrics = run.train_epoch(epoch)
        except DivergedError as diverged:
            run.elapsed_s = carried + time.perf_counter() - started
            diverged.metrics.update(run.spent())
            raise
        for name, split in ((VAL, run.data.val), (TEST, run.data.test)):
            if name == TEST and not (cfg.eval_test == "every" or run.improves(metrics)):
                continue  # eval_test: best: test only where model selection may report it
            accuracy, loss = run.evaluate(split)
            metrics.update(accuracy.as_metrics(name))
            metrics.update(loss.as_metrics(name))
        run.update_best(epoch, metrics)
        metrics.update(run.best)
        run.epoch = epoch
        # Measured before the save so that the checkpoint holds what this report says; the save's own time
        # is in the next epoch's (or, after a crash, lost with the rest of the attempt's time since then).
        run.elapsed_s = carried + time.perf_counter() - started
        metrics.update(run.spent())
        saving = time.perf_counter()
        run.save(checkpoint_dir / CHECKPOINT_FILE)
        metrics[CHECKPOINT_SECONDS] = time.perf_counter() - saving
        if report is not None:
            report(metrics, checkpoint_dir)
    return metrics


def resolve_preprocessing(size: ModelSize, dataset: str, cfg: TrialConfig) -> Preprocessing:
    """Input size and normalisation: the pretrained weights' when pretrained, else the data set's."""
    if cfg.pretrained:
        mean, std = pretrained_normalisation(size.id, cfg.weights)
        return Preprocessing(cfg.image_size or size.pretrained_image_size, mean, std, augment=cfg.augment)  # type: ignore[arg-type]
    return Preprocessing(cfg.image_size or DATASETS.get(dataset).default_image_size, augment=cfg.augment)


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
    images_seen: int = 0
    """Training images processed since the trial began (every epoch, every attempt its checkpoints carry)."""
    elapsed_s: float = 0.0
    """Wall seconds the trial had run at its last report (see `metrics.ELAPSED_SECONDS`)."""
    precision: Precision = Precision()
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @classmethod
    def build(cls, cfg: TrialConfig) -> _Run:
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        size = resolve(cfg.model)
        prep = resolve_preprocessing(size, cfg.dataset, cfg)
        data = load_dataset(cfg.dataset, cfg.data_root, prep, cfg.dataset_options)
        check_setting(cfg.objective, environments=cfg.environments, sampler=cfg.sampler, options=cfg.objective_options,
                      n_classes=data.n_classes, n_groups=data.n_groups, batch_size=cfg.batch_size)
        if cfg.cache:
            data = cache_splits(data, workers=cfg.num_workers)
        model = create_model(cfg.model, data.n_classes, prep.image_size, cfg.pretrained, cfg.weights).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        if cfg.compile:
            model.compile()  # in place: state_dict keys (checkpoints) stay those of the plain model
        environments = ENVIRONMENTS.get(cfg.environments)
        counts = data.train_group_counts()
        env_counts = environments.counts(counts, data.n_classes, cfg.batch_size)
        objective = create_objective(cfg.objective, env_counts, cfg.objective_options)
        optimizer = _optimizer(cfg, model)
        steps = cfg.epochs * _batches_per_epoch(len(data.train), cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.schedule, steps))
        precision = choose_precision(cfg.amp, device)
        scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
        augment = create_augment(cfg.augment, DATASETS.get(cfg.dataset).augment_options.get(cfg.augment))
        return cls(cfg, device, data, model, objective, optimizer, scheduler, scaler, environments,
                   counts.double() / counts.sum(), best={}, precision=precision,
                   augment=functools.partial(augment, size=prep.image_size))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of the trial's sampler; returns mean statistics, per-group loss and the throughput.

        Statistics stay on the device and are read back every `meter.CHECK_EVERY` steps and at
        the end, where a non-finite loss raises `DivergedError` naming the first such step.
        """
        self.model.train()
        meter = StepMeter(lambda step, loss: DivergedError(
            f"training loss became {loss} at epoch {epoch}, step {step} "
            f"(lr={self.cfg.lr:g}, objective={self.cfg.objective})"
        ))
        group_loss = GroupLossSum(self.data.n_groups, self.device)
        images = 0
        start = time.perf_counter()
        generator = epoch_generator(self.cfg.seed, epoch)  # from seed and epoch: a resumed run re-draws the same
        order = epoch_order(self.cfg.sampler, self.data.train.g, self.data.n_groups, self.cfg.seed, epoch)
        for x, y, g in meter.timed(self._batches(self.data.train, self.cfg.batch_size, order=order)):
            x = self.augment(x, generator)  # type: ignore[misc]
            env = self.environments.of_batch(g, self.data.n_classes)
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast(self.device):
                stats, losses = self.objective.backward(self.model, x, y, env, self.scaler.scale)
            group_loss.add(losses, g)
            reset = stats.pop("reset_optimizer", 0.0)
            meter.add(stats)
            if reset:
                self.optimizer.state.clear()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            images += len(y)
            self.images_seen += len(y)  # per step, so that a diverged epoch's images are counted too
        means = meter.finish()
        seconds = time.perf_counter() - start
        metrics = {metric_key(TRAIN, key): value for key, value in means.items()}
        # Per-group cross-entropy of the training forward passes; `train/loss` stays the objective's.
        metrics.update(group_loss.result().as_metrics(TRAIN, with_average=False))
        metrics.update({EPOCH: float(epoch), IMAGES_PER_S: images / seconds, DATA_WAIT_FRACTION: meter.wait_s / seconds,
                        LR: self.scheduler.get_last_lr()[0]})
        return metrics

    @torch.no_grad()
    def evaluate(self, split: GroupSplit) -> tuple[GroupAccuracy, GroupLoss]:
        """Accuracy and mean cross-entropy of every group of `split`."""
        self.model.eval()
        correct = []
        loss = GroupLossSum(self.data.n_groups, self.device)
        for x, y, g in self._batches(split, EVAL_BATCH, order=None):
            with self.precision.autocast(self.device):
                logits = self.model(x)
            correct.append(logits.argmax(dim=1) == y)  # on the device: one read-back below
            loss.add(F.cross_entropy(logits.float(), y, reduction="none"), g)
        return group_accuracy(torch.cat(correct), split.g, self.data.n_groups, self.train_proportions), loss.result()

    def improves(self, metrics: Mapping[str, float]) -> bool:
        """Whether this epoch's validation worst-group accuracy beats the best so far (first on ties)."""
        return not self.best or metrics[STEP_METRIC] > self.best[SELECTION_METRIC]

    def update_best(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Model selection: the epoch with the best validation worst-group accuracy (first on ties)."""
        if not self.improves(metrics):
            return
        self.best = {BEST_EPOCH: float(epoch),
                     **{best_key(split, name): metrics[metric_key(split, name)] for split, name in SELECTED}}

    def spent(self) -> dict[str, float]:
        """What the trial has cost so far, as reported metrics."""
        return {IMAGES_SEEN: float(self.images_seen), ELAPSED_SECONDS: self.elapsed_s}

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
            "images_seen": self.images_seen,
            "elapsed_s": self.elapsed_s,
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
        # A checkpoint from before costs were counted: what it spent is unknown, counted from here on.
        self.images_seen, self.elapsed_s = int(state.get("images_seen", 0)), float(state.get("elapsed_s", 0.0))

    def _batches(
        self, split: GroupSplit, batch_size: int, order: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches on the device, in `order` (a training epoch's sampler order; None: in sequence,
        for evaluation). In-memory splits are sliced directly: a DataLoader would collate item by
        item and cost more than a small model's step on the CPU."""
        if isinstance(split.inputs, DecodedCache):
            drop_last = order is not None and _drops_last(len(order), batch_size)
            yield from cached_batches(split.inputs, split.y, split.g, order, batch_size, drop_last, self.device,
                                      channels_last=self.device.type == "cuda")
            return
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
            # Not the global RNG (the model's): then the cached path, which has no loader, draws the same.
            generator=torch.Generator().manual_seed(0),
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

