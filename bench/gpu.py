"""The GPU check: does `train` keep one GPU busy on cached data, and do fractional trials pay?

    python -m bench gpu                        # on a machine with a GPU: ~5-8 minutes
    python -m bench gpu --device cpu --smoke   # tiny sizes on the CPU: checks it runs end to end

1. Per model (resnet-18, resnet-50, vit-small at 224 px, random init, ERM, SGD, batch 128), on a
   Waterbirds-format folder of photo-like JPEGs (bench/synthetic_wilds.py) through the decoded
   cache (built once, before timing): `trainables.training.train` against a minimal hand-written
   AMP loop (bf16 autocast, or fp16 with a GradScaler where bf16 is missing; channels-last; the
   whole uint8 training split resident on the GPU, so it never waits for data; the same model
   from `create_model`, optimizer and batches per epoch). Throughput = training images/s of the
   epochs after the first (cudnn autotuning, allocator warm-up), from `train`'s own report
   (`train/images_per_s`) and timed the same way (synchronised at epoch ends) in the hand loop;
   ratio goal >= 0.95. Data wait: `train/data_wait_fraction`, the share of the training epoch
   the loop spent waiting for its next batch (goal < 5%). Peak memory: torch.cuda's peak
   allocated bytes of each side (the hand loop's includes its resident uint8 split). Then
   resnet-18 once more with `compile: true` (`--no-compile` skips it).
2. Through the real driver (`wgtune launch`, the CLI entry `wgtune.cli.main`, Ray + MLflow):
   one cell (resnet-18), 4 trials of 0.25 GPU at once vs 1 trial of 1 GPU. Aggregate images/s =
   the sum over the trials of each one's median `train/images_per_s` after its first epoch (read
   from MLflow), with how much the trials overlapped; also end to end: all training images /
   the wall time from the first trial's start to the last one's end. Goal >= 1.5× for resnet-18.

Smoke (`--smoke`): 32 px, resnet-10x0.25 / resnet-10x0.5 / vit-d2w64, 64 small training JPEGs,
2 epochs; the driver part runs 2 trials of 1 CPU vs 1 of 2 CPUs. Its figures mean nothing; it
exists so the script works the first time a GPU is there. Writes bench/results/gpu.md (full
run) or `--out`; a smoke run writes only to `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.machine import machine  # noqa: E402
from bench.synthetic_wilds import HEIGHTS, WIDTH, write_waterbirds  # noqa: E402
from trainables.datasets import Preprocessing, load_dataset  # noqa: E402
from trainables.datasets.cache import CACHE_DIR_ENV, cache_splits, open_cache  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.training import train  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu.md"
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 1e-4
GOAL_RATIO, GOAL_WAIT, GOAL_SHARED = 0.95, 0.05, 1.5


@dataclass(frozen=True)
class Sizes:
    """Everything the smoke run shrinks."""

    image_size: int
    models: tuple[str, ...]
    counts: dict[str, int]
    batch: int
    epochs: int
    driver_epochs: int
    driver_model: str
    jpeg: tuple[int, tuple[int, int]] = (WIDTH, HEIGHTS)  # width, range of heights: Waterbirds'


FULL = Sizes(224, ("resnet-18", "resnet-50", "vit-small"), {"train": 4096, "val": 512, "test": 512}, 128, 3, 3,
             "resnet-18")
SMOKE = Sizes(32, ("resnet-10x0.25", "resnet-10x0.5", "vit-d2w64"), {"train": 64, "val": 16, "test": 16}, 16, 2, 2,
              "resnet-10x0.25", jpeg=(48, (40, 60)))


def _config(sizes: Sizes, data_root: Path, model: str, device: str, **extra: Any) -> dict[str, Any]:
    return {"dataset": "waterbirds", "data_root": str(data_root), "model": model, "objective": "erm",
            "optimizer": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            "batch_size": sizes.batch, "epochs": sizes.epochs, "schedule": "constant",
            "image_size": sizes.image_size, "device": device, "seed": 0, **extra}


def _steady(values: list[float]) -> float:
    """The median after the first epoch (or of the only one)."""
    return statistics.median(values[1:] or values)


def _peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_train(sizes: Sizes, data_root: Path, model: str, device: torch.device, **extra: Any) -> dict[str, Any]:
    """`train` itself; its per-epoch report gives the figures."""
    reports: list[dict[str, float]] = []
    _reset_memory(device)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as workdir:
        train(_config(sizes, data_root, model, device.type, **extra), lambda m, _: reports.append(dict(m)),
              workdir=workdir)
    return {"rate": _steady([r["train/images_per_s"] for r in reports]),
            "wait": _steady([r["train/data_wait_fraction"] for r in reports]),
            "memory": _peak_memory(device)}


def hand_loop(sizes: Sizes, data_root: Path, model_id: str, device: torch.device) -> dict[str, Any]:
    """The minimal AMP loop: data resident on the device, no checks, no evaluation, no checkpoints."""
    prep = Preprocessing(sizes.image_size)
    split = load_dataset("waterbirds", data_root, prep).train
    images = open_cache(split.inputs.cache_source("train")).images.to(device)  # N×H×W×C uint8
    labels = split.y.to(device)
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    model = create_model(model_id, 2, sizes.image_size).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and not bf16)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    _reset_memory(device)
    rates = []
    model.train()
    for _ in range(sizes.epochs):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        order = torch.randperm(len(labels), device=device)
        for at in range(0, len(order), sizes.batch):
            idx = order[at:at + sizes.batch]
            x = images[idx].permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
            with torch.autocast(device.type, dtype=dtype, enabled=cuda):
                loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        rates.append(len(labels) / (time.perf_counter() - start))
    return {"rate": _steady(rates), "memory": _peak_memory(device)}


# --- through the driver --------------------------------------------------------------------------


def _grid(path: Path, name: str, sizes: Sizes, data_root: Path, trials: int, resources: dict[str, float]) -> Path:
    import yaml

    grid = {
        "study": name, "study_dir": str(path.parent / name), "data_root": str(data_root),
        "datasets": ["waterbirds"], "models": {"resnet": [sizes.driver_model.split("-", 1)[1]]},
        "objectives": ["erm"], "epochs": sizes.driver_epochs, "final_seeds": 0,
        "search": {"num_samples": trials, "max_concurrent": trials, "n_startup": trials, "max_failures": 0},
        "resources": resources,
        "train": {"image_size": sizes.image_size, "num_workers": 0},
        # Fixed where it changes the speed; weight decay is searched only because a space needs a dimension.
        "search_space": {"all": {"optimizer": "sgd", "lr": LR, "batch_size": sizes.batch,
                                 "weight_decay": {"loguniform": [1.0e-5, 1.0e-4]}}},
    }
    path.write_text(yaml.safe_dump(grid))
    return path


def through_driver(work: Path, name: str, sizes: Sizes, data_root: Path, trials: int,
                   resources: dict[str, float]) -> dict[str, Any]:
    """Launch one study with the CLI's entry point; per-trial speeds and times from MLflow."""
    from mlflow import MlflowClient

    from wgtune.cli import main as wgtune

    grid = _grid(work / f"{name}.yaml", name, sizes, data_root, trials, resources)
    uri = f"sqlite:///{work / name}.db"
    started = time.time()
    code = wgtune(["launch", "--grid", str(grid), "--tracking-uri", uri, "--progress-every", "3600"])
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"wgtune launch of {name} exited with {code}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "train/images_per_s" in r.data.metrics]
    if len(runs) != trials:
        raise RuntimeError(f"{name}: {len(runs)} trial runs with a throughput in MLflow, expected {trials}")
    rates, images = [], 0
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, "train/images_per_s"), key=lambda m: m.step)
        rates.append(_steady([m.value for m in history]))
        images += sizes.counts["train"] * len(history)
    starts = [r.info.start_time / 1000 for r in runs]
    ends = [r.info.end_time / 1000 for r in runs]
    span = max(ends) - min(starts)
    return {"aggregate": sum(rates), "per_trial": statistics.median(rates), "end_to_end": images / span,
            "overlap": max(0.0, min(ends) - max(starts)) / span, "launch_s": wall}


# --- report -------------------------------------------------------------------------------------------


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table(rows: list[dict[str, Any]], compiled: dict[str, Any] | None, shared: dict[str, Any],
           whole: dict[str, Any], header: str, shared_label: str, whole_label: str, driver_model: str) -> str:
    lines = [header, "",
             "| model | `train` img/s | hand AMP loop img/s | ratio | data wait (share of the epoch) "
             "| peak memory GiB: `train` / hand |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['train']['rate']:.0f} | {r['hand']['rate']:.0f} "
                     f"| **{r['train']['rate'] / r['hand']['rate']:.3f}** | {r['train']['wait']:.1%} "
                     f"| {_gib(r['train']['memory'])} / {_gib(r['hand']['memory'])} |")
    ratios = [r["train"]["rate"] / r["hand"]["rate"] for r in rows]
    waits = [r["train"]["wait"] for r in rows]
    lines += ["",
              f"`train` / hand loop: {', '.join(f'{x:.3f}' for x in ratios)} (goal >= {GOAL_RATIO}: "
              f"{'met' if min(ratios) >= GOAL_RATIO else 'MISSED'}); data wait at most {max(waits):.1%} "
              f"(goal < {GOAL_WAIT:.0%}: {'met' if max(waits) < GOAL_WAIT else 'MISSED'})."]
    if compiled is not None:
        plain = rows[0]["train"]["rate"]
        lines.append(f"`compile: true` ({rows[0]['model']}): {compiled['rate']:.0f} img/s after the first epoch, "
                     f"{compiled['rate'] / plain:.2f}× the uncompiled `train` "
                     f"(peak memory {_gib(compiled['memory'])} GiB).")
    ratio = shared["aggregate"] / whole["aggregate"]
    lines += ["",
              f"Through the driver (`wgtune launch`), {driver_model}:", "",
              "| trials | aggregate img/s (sum of per-trial medians) | per trial | trials overlapping "
              "| end to end img/s (all epochs / first start to last end) | launch wall s |",
              "|---|---:|---:|---:|---:|---:|"]
    for label, r in ((shared_label, shared), (whole_label, whole)):
        lines.append(f"| {label} | {r['aggregate']:.0f} | {r['per_trial']:.0f} | {r['overlap']:.0%} "
                     f"| {r['end_to_end']:.0f} | {r['launch_s']:.0f} |")
    lines += ["", f"{shared_label} vs {whole_label}: **{ratio:.2f}×** aggregate (goal >= {GOAL_SHARED}: "
                  f"{'met' if ratio >= GOAL_SHARED else 'MISSED'}), "
                  f"{shared['end_to_end'] / whole['end_to_end']:.2f}× end to end."]
    return "\n".join(lines) + "\n"


def check(args: argparse.Namespace, sizes: Sizes, device: torch.device, work: Path) -> str:
    """Data, cache, every measurement; the results table."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    os.environ[CACHE_DIR_ENV] = str(work / "cache")  # trials started by Ray inherit it
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cores = os.cpu_count() or 1
    data_root = work / "data"
    write_waterbirds(data_root, sizes.counts, workers=cores, width=sizes.jpeg[0], heights=sizes.jpeg[1])
    cache_splits(load_dataset("waterbirds", data_root, Preprocessing(sizes.image_size)), workers=cores)  # untimed
    prep_s = time.perf_counter() - started
    print(f"data and cache ready in {prep_s:.0f} s", file=sys.stderr, flush=True)

    rows = []
    for model in sizes.models:
        trained = measure_train(sizes, data_root, model, device)
        hand = hand_loop(sizes, data_root, model, device)
        rows.append({"model": model, "train": trained, "hand": hand})
        print(f"{model}: train {trained['rate']:.0f} img/s, hand {hand['rate']:.0f} img/s, "
              f"wait {trained['wait']:.1%}", file=sys.stderr, flush=True)
    compile_too = args.compile if args.compile is not None else not args.smoke
    compiled = measure_train(sizes, data_root, sizes.models[0], device, compile=True) if compile_too else None
    _reset_memory(device)

    if device.type == "cuda":
        shared_res, whole_res = {"cpu": 2, "gpu": 0.25}, {"cpu": 2, "gpu": 1}
        shared_label, whole_label, n_shared = "4 × 0.25 GPU", "1 × 1 GPU", 4
    else:
        shared_res, whole_res = {"cpu": 1}, {"cpu": 2}
        shared_label, whole_label, n_shared = "2 × 1 CPU", "1 × 2 CPUs", 2
    shared = through_driver(work, "gpu-check-shared", sizes, data_root, n_shared, shared_res)
    whole = through_driver(work, "gpu-check-whole", sizes, data_root, 1, whole_res)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke: figures mean nothing)"
    header = (f"{'SMOKE RUN, tiny sizes: ' if args.smoke else ''}{name}; {sizes.image_size} px, batch {sizes.batch}, "
              f"{sizes.counts['train']} training images (Waterbirds-format JPEGs, decoded cache), ERM, SGD, "
              f"{sizes.epochs} epochs per run, figures after the first.\n"
              f"Measured {datetime.date.today().isoformat()} on {machine(f'torch {torch.__version__}')}; "
              f"total run {time.perf_counter() - started:.0f} s (data and cache {prep_s:.0f} s); load average "
              f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    return _table(rows, compiled, shared, whole, header, shared_label, whole_label, sizes.driver_model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a check that it runs, not a measurement)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also the first model with compile: true (default: on, off with --smoke: compiling "
                             "on the CPU takes a minute)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on the CPU, where two threads on shared cores stall "
                             "each other at every barrier, see bench/throughput.py; torch's default on a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: bench/results/gpu.md; "
                                                               "a smoke run writes none unless given)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench gpu: no CUDA device visible, nothing measured (the CPU check: --device cpu --smoke)",
              file=sys.stderr)
        return 0
    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", ignore_cleanup_errors=True) as work:
        table = check(args, sizes, device, Path(work))
    print(table)
    out = args.out or (None if args.smoke else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
