"""Images per second delivered to the training step at 224 px: today's PIL-per-epoch DataLoader
vs the decoded cache (cold: built by this run; warm: already on disk), one trial and two at once.

    .venv/bin/python bench/data_path.py [--images 384] [--reps 3] [--batch 64]

Data: a Waterbirds-format folder of photo-like JPEGs (~500×330-500 px, quality 75, ~20 KB;
bench/synthetic_wilds.py), read through the real WILDS loader (`load_dataset("waterbirds")`).
Delivered: shuffled batches of normalised float32 N×3×224×224 tensors on the training device,
here the CPU. Both sides use public parts only:

- PIL loader (today's uncached path): per epoch a new `DataLoader` over the split's lazily
  decoded images (`GroupSplit.inputs`: PIL decode, resize 224, centre crop, ToTensor,
  Normalize), shuffled, `persistent_workers=False`, as `trainables.training` builds it; with 0
  workers (the trial default) and with 2.
- Cache: `trainables.datasets.cache.open_cache` of the split, then `trainables.feed.cached_batches`.
  Cold = building the cache (decoding every image once) plus one epoch; warm = epochs from an
  existing cache (the page cache holds it, as it does for every trial after the first on a node).
  On the CPU the float conversion and normalisation run on the host; on a GPU they run on the
  device, and the host only gathers uint8 rows: that is the last row ("uint8 gather").
- Two trials: two processes started together (a barrier), aggregate images/s = the images both
  delivered / the wall time of the slower. Cold: both open the same new cache; one builds it,
  the other waits for it (the lock), then both read it.

Every trial process runs one torch thread (a Ray trial with cpu: 1 gets OMP_NUM_THREADS=1).
Repetitions are interleaved; ratios are taken within a repetition against the PIL loader with
the same number of trials, and their median and range reported. Writes bench/results/data_path.md.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench.machine import machine  # noqa: E402
from bench.synthetic_wilds import write_waterbirds  # noqa: E402
from trainables.datasets import Preprocessing, load_dataset  # noqa: E402
from trainables.datasets.cache import open_cache  # noqa: E402
from trainables.feed import cached_batches  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "data_path.md"
IMAGE_SIZE = 224
GOAL = 20.0
CPU = torch.device("cpu")


def _split(root: Path):  # type: ignore[no-untyped-def]
    return load_dataset("waterbirds", root, Preprocessing(IMAGE_SIZE)).train


def _order(n: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch))


def pil_epochs(split: Any, batch: int, workers: int, epochs: int) -> int:
    """Today's path: a new DataLoader each epoch, decoding every JPEG with PIL."""
    images = 0
    for epoch in range(epochs):
        loader = DataLoader(split.inputs, batch_size=batch, sampler=_order(len(split), epoch).tolist(),
                            num_workers=workers, persistent_workers=False)
        for x in loader:
            images += len(x)
    return images


def cached_epochs(cache: Any, split: Any, batch: int, epochs: int) -> int:
    images = 0
    for epoch in range(epochs):
        for x, _, _ in cached_batches(cache, split.y, split.g, _order(len(split), epoch), batch, False, CPU, False):
            images += len(x)
    return images


def gather_epochs(cache: Any, batch: int, epochs: int) -> int:
    """What the host does per batch when the device is a GPU: gather uint8 rows from the map."""
    images = 0
    for epoch in range(epochs):
        order = _order(len(cache), epoch)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            out = torch.empty((len(idx), *cache.images.shape[1:]), dtype=torch.uint8)
            torch.index_select(cache.images, 0, idx, out=out)
            images += len(idx)
    return images


def trial(mode: str, root: str, folder: str, batch: int, workers: int, epochs: int, barrier: Any = None) -> dict:
    """One trial's delivery: images, and the wall-clock start and end of what is timed.

    Timed: the epochs, and for "cold" the opening (building) of the cache before them; a warm
    trial's opening (header and checksum check, once per run) is not part of its epochs.
    """
    torch.set_num_threads(1)
    split = _split(Path(root))
    if barrier is not None:
        barrier.wait()
    start = time.time()
    build_s = 0.0
    if mode == "pil":
        images = pil_epochs(split, batch, workers, epochs)
    else:
        cache = open_cache(split.inputs.cache_source("train"), workers, Path(folder))
        build_s = time.time() - start
        if mode != "cold":
            start = time.time()
        images = gather_epochs(cache, batch, epochs) if mode == "gather" else cached_epochs(cache, split, batch, epochs)
    return {"images": images, "start": start, "end": time.time(), "build_s": build_s}


def together(pool: Any, barrier: Any, n: int, *args: Any) -> dict:
    """`n` trials at once: all their images over the wall time from the first start to the last end."""
    results = pool.starmap(trial, [(*args, barrier)] * n)
    return {"images": sum(r["images"] for r in results), "start": min(r["start"] for r in results),
            "end": max(r["end"] for r in results), "build_s": max(r["build_s"] for r in results)}


def measure(args: argparse.Namespace, work: Path) -> tuple[dict[str, list[dict]], int]:
    """Every measurement, repetitions interleaved; and the bytes of JPEG written."""
    jpeg_bytes = write_waterbirds(work / "data", {"train": args.images, "val": 32, "test": 32})
    root = str(work / "data")
    warm = str(work / "warm-cache")
    trial("warm", root, warm, args.batch, 2, 1)  # build the warm cache once, untimed
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(2)
    rows: dict[str, list[dict]] = {}
    with context.Pool(2) as pool:
        pool.starmap(time.sleep, [(0,)] * 2)  # start both workers before timing anything
        for rep in range(args.reps):
            cold, cold2 = str(work / f"cold-{rep}"), str(work / f"cold2-{rep}")
            measured = {
                "pil0": lambda: trial("pil", root, "", args.batch, 0, 1),
                "pil2": lambda: trial("pil", root, "", args.batch, 2, 1),
                "pil_x2": lambda: together(pool, barrier, 2, "pil", root, "", args.batch, 0, 1),
                "cold": lambda: trial("cold", root, cold, args.batch, 2, 1),
                "cold_x2": lambda: together(pool, barrier, 2, "cold", root, cold2, args.batch, 0, 1),
                "warm": lambda: trial("warm", root, warm, args.batch, 0, args.warm_epochs),
                "warm_x2": lambda: together(pool, barrier, 2, "warm", root, warm, args.batch, 0, args.warm_epochs),
                "gather": lambda: trial("gather", root, warm, args.batch, 0, args.warm_epochs),
            }
            for name, run in measured.items():
                result = run()
                result["rate"] = result["images"] / (result["end"] - result["start"])
                rows.setdefault(name, []).append(result)
                print(f"rep {rep + 1} {name}: {result['rate']:.0f} images/s", file=sys.stderr, flush=True)
    return rows, jpeg_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="training images (plus 32 val, 32 test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warm-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started, args.load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-data-path-", ignore_cleanup_errors=True) as work:
        rows, jpeg_bytes = measure(args, Path(work))
    table = _table(rows, args, args.images, jpeg_bytes, time.perf_counter() - started)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


ROWS = (  # name, what, trials, baseline
    ("pil0", "PIL loader, 0 workers (trial default)", 1, "pil0"),
    ("pil2", "PIL loader, 2 workers", 1, "pil0"),
    ("cold", "cache, cold: build (2 workers) + 1 epoch", 1, "pil0"),
    ("warm", "**cache, warm**", 1, "pil0"),
    ("gather", "cache, warm, uint8 gather only (the host's part on a GPU)", 1, "pil0"),
    ("pil_x2", "PIL loader, 0 workers each", 2, "pil_x2"),
    ("cold_x2", "cache, cold: one builds (0 workers), one waits, + 1 epoch", 2, "pil_x2"),
    ("warm_x2", "**cache, warm**", 2, "pil_x2"),
)


def _table(rows: dict[str, list[dict]], args: argparse.Namespace, n: int, jpeg_bytes: int, total_s: float) -> str:
    med = statistics.median
    lines = [
        f"Images/s delivered at {IMAGE_SIZE} px as normalised float32 batches of {args.batch} on the CPU: today's "
        f"PIL-per-epoch DataLoader vs the decoded cache. {n} training images of a Waterbirds-format folder "
        f"(~500×330-500 px JPEGs, {jpeg_bytes / (n + 64) / 1024:.0f} KB mean; bench/synthetic_wilds.py), "
        f"{args.reps} interleaved repetitions; one torch thread per trial process; warm: {args.warm_epochs} "
        f"epochs per measurement.\n"
        f"Measured {datetime.date.today().isoformat()} on {machine(f'torch {torch.__version__}')}; "
        f"total run {total_s:.0f} s; load average {args.load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| path | trials | images/s (median) | range | ratio to the PIL loader, same trials (median, range) |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = {}
    for name, what, trials, baseline in ROWS:
        rates = [r["rate"] for r in rows[name]]
        ratio = [r["rate"] / b["rate"] for r, b in zip(rows[name], rows[baseline])]
        ratios[name] = ratio
        lines.append(f"| {what} | {trials} | {med(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} "
                     f"| {med(ratio):.1f} ({min(ratio):.1f}–{max(ratio):.1f}) |")
    build = [r["build_s"] for r in rows["cold"]]
    pil2 = [w["rate"] / p["rate"] for w, p in zip(rows["warm"], rows["pil2"])]
    host = med(ratios["gather"])
    lines += [
        "",
        f"Host work per image of a GPU trial (the PIL loader decodes, resizes and normalises on the host; the "
        f"cache only gathers uint8 rows, and the device converts them): **{host:.1f}×** faster warm "
        f"(goal ≥ {GOAL:.0f}×: {'met' if host >= GOAL else 'MISSED'}). On the CPU as the device, where the float "
        f"conversion and normalisation also run on the host, the warm cache delivers "
        f"**{med(ratios['warm']):.1f}×** the PIL loader's images/s with 0 workers ({med(pil2):.1f}× the 2-worker "
        f"loader's), and **{med(ratios['warm_x2']):.1f}×** with two trials at once.",
        f"Building the cache of {n} images took {med(build):.1f} s (median; {n / med(build):.0f} images/s with 2 "
        f"workers): it decodes each JPEG once, as one PIL epoch does; every later epoch of every trial on the node "
        f"reads it. The JPEGs and the cache were in the page cache throughout (both just written). Not measured "
        f"here (no GPU): the pinned-memory copy to the device, which moves uint8, a quarter of the PIL path's "
        f"float32 bytes.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
