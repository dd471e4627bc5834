"""Training throughput of `trainables.training.train` against a minimal hand-written PyTorch loop.

    .venv/bin/python bench/throughput.py [--reps 7] [--batch 128] [--threads 1]

Both sides do a full run on the CPU: load `spurious_digits` (in-memory tensors, 32 px), build
the model with `trainables.models.create_model`, then per epoch a shuffled pass of SGD-momentum
ERM steps and an evaluation pass over val and test with per-group accuracy by `torch.bincount`
(the information `train` reports). `train` additionally steps a (constant) LambdaLR schedule,
checks the loss for NaN, saves a checkpoint every epoch and calls its `report` hook (a no-op here).

Throughput = training images x epochs / wall time of the whole run (data, model, every epoch).
Per model: one untimed warm-up run of each (PyTorch's CPU kernels are slow the first time a
process meets a shape), then repetitions interleaved hand, train, train, hand, ... in this process;
the ratio is taken within each adjacent pair, and the median and range of the ratios are
reported. Checkpoint cost is what `train` itself reports for each epoch (`train/checkpoint_s`,
the time its checkpoint took to write). CPU-seconds of the process are reported beside wall time: less hurt by other
load on a shared machine.

One torch thread by default: with two OpenMP threads on two cores that other jobs also use, a
descheduled thread stalls its partner at every barrier, and the same run took 3 s or 20 s (and
5x the CPU-seconds, spent spinning). One thread keeps the comparison about the code, not the
scheduler. Prints the table and writes `bench/results/throughput.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainables import training  # noqa: E402
from trainables.datasets import load_dataset  # noqa: E402
from trainables.datasets.base import Preprocessing  # noqa: E402
from trainables.metrics import CHECKPOINT_SECONDS  # noqa: E402
from trainables.models import create_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "throughput.md"
DATASET = "spurious_digits"
IMAGE_SIZE = 32
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
# (model, epochs): epochs chosen so the whole benchmark stays under ~6 min on 2 shared cores.
MODELS = (("resnet-10x0.5", 3), ("resnet-18", 3))


def hand_loop(model_id: str, batch: int, epochs: int, seed: int = 0) -> None:
    """The minimal equivalent of `train`: same data, model, optimizer and per-group evaluation."""
    torch.manual_seed(seed)
    data = load_dataset(DATASET, None, Preprocessing(IMAGE_SIZE), {})
    model = create_model(model_id, data.n_classes, IMAGE_SIZE)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x_train, y_train = data.train.inputs, data.train.y
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            if len(idx) < 2:
                break  # BatchNorm cannot train on one example (train does the same)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for split in (data.val, data.test):
                correct = torch.cat([
                    model(split.inputs[s:s + training.EVAL_BATCH]).argmax(1) == split.y[s:s + training.EVAL_BATCH]
                    for s in range(0, len(split), training.EVAL_BATCH)
                ])
                counts = torch.bincount(split.g, minlength=data.n_groups)
                hits = torch.bincount(split.g, weights=correct.double(), minlength=data.n_groups)
                (hits / counts.clamp(min=1)).min().item()


def wgtune_train(model_id: str, batch: int, epochs: int, workdir: str, seed: int = 0) -> None:
    """`trainables.training.train` with the same settings, reporting to a no-op hook."""
    config = {
        "dataset": DATASET, "model": model_id, "objective": "erm", "optimizer": "sgd", "lr": LR,
        "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "batch_size": batch, "epochs": epochs,
        "schedule": "constant", "image_size": IMAGE_SIZE, "device": "cpu", "seed": seed,
        "eval_test": "every",  # like the hand loop, which evaluates test every epoch
    }
    training.train(config, lambda metrics, checkpoint_dir: SAVE_SECONDS.append(metrics[CHECKPOINT_SECONDS]),
                   workdir=workdir)


SAVE_SECONDS: list[float] = []
"""Each epoch's checkpoint time of the last `wgtune_train` runs, as `train` reports it (`CHECKPOINT_SECONDS`)."""


def timed(fn, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(model_id: str, epochs: int, batch: int, reps: int, n_train: int) -> dict[str, object]:
    hand_loop(model_id, batch, 1)  # warm-ups, untimed
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as workdir:
        wgtune_train(model_id, batch, 1, workdir)
    hand, ours, ratios, cpu_ratios, saves, no_save = [], [], [], [], [], []
    for rep in range(reps):
        order = ("hand", "train") if rep % 2 == 0 else ("train", "hand")
        result = {}
        for side in order:
            if side == "hand":
                result[side] = timed(hand_loop, model_id, batch, epochs)
            else:
                SAVE_SECONDS.clear()
                with tempfile.TemporaryDirectory(prefix="bench-throughput-") as workdir:  # cleanup not timed
                    result[side] = timed(wgtune_train, model_id, batch, epochs, workdir)
                saves.append(sum(SAVE_SECONDS) / result[side][0])
        (hw, hc), (tw, tc) = result["hand"], result["train"]
        hand.append(n_train * epochs / hw)
        ours.append(n_train * epochs / tw)
        ratios.append(hw / tw)
        no_save.append(hw / (tw * (1 - saves[-1])))
        cpu_ratios.append(hc / tc)
        print(f"{model_id} rep {rep + 1}: hand {hw:.1f} s ({hc:.1f} cpu-s), train {tw:.1f} s ({tc:.1f} cpu-s), "
              f"ratio {hw / tw:.3f}, checkpoint {saves[-1]:.1%} of train's wall", file=sys.stderr, flush=True)
    return {"model": model_id, "epochs": epochs, "batch": batch, "hand": hand, "train": ours,
            "ratios": ratios, "cpu_ratios": cpu_ratios, "saves": saves, "no_save": no_save}


def _table(rows: list[dict[str, object]], header: str) -> str:
    med = statistics.median
    lines = [header, "",
             "| model | epochs | batch | hand-loop img/s | `train` img/s | ratio (wall) | ratio range | "
             "ratio (CPU-s), range | checkpoint share of `train` | ratio without checkpoint time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['epochs']} | {r['batch']} | {med(r['hand']):.0f} | {med(r['train']):.0f} "
            f"| **{med(r['ratios']):.3f}** | {min(r['ratios']):.3f}–{max(r['ratios']):.3f} "
            f"| {med(r['cpu_ratios']):.3f} ({min(r['cpu_ratios']):.3f}–{max(r['cpu_ratios']):.3f}) "
            f"| {med(r['saves']):.1%} | {med(r['no_save']):.3f} |")
    every = [x for r in rows for x in r["ratios"]]
    cpu = [x for r in rows for x in r["cpu_ratios"]]
    goal = "met" if med(every) >= 0.95 else "MISSED"
    lines += ["",
              f"Median ratio over all {len(every)} pairs: **{med(every):.3f}** "
              f"(range {min(every):.3f}–{max(every):.3f}); goal >= 0.95: {goal}. By CPU-seconds, which other "
              f"jobs on the machine disturb less: {med(cpu):.3f} (range {min(cpu):.3f}–{max(cpu):.3f}).",
              "",
              "ratio = hand-loop wall time / `train` wall time of adjacent runs (1.0 = no overhead); "
              "img/s columns are medians. What `train` does beyond the hand loop: a LambdaLR step and a "
              "finiteness check of the loss (statistics read back every 50 steps), an autocast context and "
              "GradScaler (both disabled on the CPU), float64 group metrics, `best/*` bookkeeping, and a "
              "`torch.save` checkpoint (model, optimizer, RNG state) every epoch: its share of `train`'s wall "
              "time is what `train` reports as `train/checkpoint_s`, and the last column is the ratio with that "
              "time taken out."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the docstring)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    n_train = len(load_dataset(DATASET, None, Preprocessing(IMAGE_SIZE), {}).train)
    rows = [measure(model, epochs, args.batch, args.reps, n_train) for model, epochs in MODELS]
    header = (
        f"`trainables.training.train` vs a minimal hand-written PyTorch loop: ERM, SGD momentum, "
        f"{DATASET} ({n_train} training images, {IMAGE_SIZE} px, in memory), CPU, full runs, "
        f"{args.reps} interleaved repetitions per side after an untimed warm-up of each.\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.platform()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work, "
        f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}; total run "
        f"{time.perf_counter() - started:.0f} s."
    )
    table = _table(rows, header)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
