"""Peak memory of one ILC (AND-mask) training step against one ERM step, timm ResNets.

    .venv/bin/python bench/ilc_memory.py [--models resnet18 resnet50] [--batches 8 32] [--image-size 224]
                                         [--examples-models resnet18]

ILC is measured with 4 environments (the groups) and, for `--examples-models`, with every example
its own environment (ILC's default): one forward pass of the whole batch, then one backward pass
per environment on that graph, so the per-example variant costs a backward pass per example
(time) but should need no more memory than 4 environments. The default batches (8 and 32, a 4x
step like 16 -> 64) keep the run near 10 minutes on two shared CPU cores.

Every (model, batch, objective) is measured in a fresh subprocess, so allocator state and
lifetime peaks of one configuration cannot leak into another. In each: build the model, data
and optimizer, run one warm-up step, then replace the optimizer with a fresh one (so every
measured step allocates its momentum buffers alike), drop the gradients, and measure one step
(zero_grad, objective.backward, optimizer.step):

- CUDA: ``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before.
- CPU: peak RSS during the step minus RSS before. The kernel's peak-RSS mark is reset just
  before the step (``/proc/self/clear_refs``), so the warm-up's peak cannot count; glibc is told
  to serve large blocks by mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to the
  kernel instead of hiding in the heap and making a step look cheaper than it is.

The table is printed and written to ``bench/results/ilc_memory.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "ilc_memory.md"
N_ENVS = 4


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def measure(model_name: str, batch: int, objective_name: str, image_size: int) -> dict[str, object]:
    """One configuration, in this process: extra bytes and seconds of one training step.

    `objective_name` "ilc-examples" is ILC with every example its own environment."""
    import timm
    import torch

    from trainables.objectives import create_objective

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = timm.create_model(model_name, pretrained=False, num_classes=2).to(device).train()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    examples = objective_name == "ilc-examples"
    env = (torch.arange(batch) if examples else torch.arange(batch) % N_ENVS).to(device)
    objective = create_objective("ilc" if examples else objective_name,
                                 torch.ones(batch) if examples else torch.full((N_ENVS,), 1000))

    def new_optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.backward(model, x, y, env, lambda loss: loss)
        optimizer.step()

    step(new_optimizer())  # warm-up: lazy initialisation, kernel selection, allocator pools
    optimizer = new_optimizer()
    model.zero_grad(set_to_none=True)
    gc.collect()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        step(optimizer)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra, method = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    else:
        exact = _reset_peak_rss()
        before_kb = _rss_kb("VmRSS")
        start = time.perf_counter()
        step(optimizer)
        seconds = time.perf_counter() - start
        # Without a resettable mark, ru_maxrss is the lifetime peak: warm-up's, which is the same step.
        peak_kb = _rss_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra = (peak_kb - before_kb) * 1024
        method = "peak RSS - RSS before" + ("" if exact else " (lifetime ru_maxrss)")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"extra_bytes": extra, "seconds": seconds, "param_bytes": params, "method": method,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def _measure_in_subprocess(model: str, batch: int, objective: str, image_size: int) -> dict[str, object]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--measure", model, str(batch), objective, str(image_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, object]], header: str) -> str:
    mb = 2**20
    lines = [
        header,
        "",
        f"| model | batch | ERM MB | ILC ({N_ENVS} envs) MB | ratio | ILC (examples) MB | ratio "
        f"| ERM s | ILC ({N_ENVS} envs) s | ILC (examples) s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ex = row.get("ilc_ex")
        ex_mb = f"{ex / mb:.0f} | {ex / row['erm']:.2f}" if ex is not None else "— | —"
        ex_s = f"{row['ilc_ex_s']:.1f}" if ex is not None else "—"
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['erm'] / mb:.0f} | {row['ilc'] / mb:.0f} "
            f"| {row['ilc'] / row['erm']:.2f} | {ex_mb} | {row['erm_s']:.1f} | {row['ilc_s']:.1f} | {ex_s} |"
        )
    lines += ["", "Seconds: wall time of the one measured step, indicative only on a shared machine.", ""]
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            lines.append(
                f"- {model}: batch {small['batch']} -> {large['batch']} adds "
                f"{(large['erm'] - small['erm']) / mb:.0f} MB under ERM, "
                f"{(large['ilc'] - small['ilc']) / mb:.0f} MB under ILC "
                f"(parameters: {small['params'] / mb:.0f} MB)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure every configuration in its own subprocess; print and save the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--examples-models", nargs="*", default=["resnet18"],
                        help="models also measured with per-example environments (a backward pass per example)")
    parser.add_argument("--measure", nargs=4, metavar=("MODEL", "BATCH", "OBJECTIVE", "SIZE"),
                        help=argparse.SUPPRESS)  # the per-configuration subprocess
    args = parser.parse_args(argv)
    if args.measure:
        model, batch, objective, size = args.measure
        print(json.dumps(measure(model, int(batch), objective, int(size))))
        return

    rows, started, detail = [], time.perf_counter(), {}
    for model in args.models:
        for batch in args.batches:
            erm = _measure_in_subprocess(model, batch, "erm", args.image_size)
            ilc = _measure_in_subprocess(model, batch, "ilc", args.image_size)
            detail = erm
            row = {"model": model, "batch": batch, "erm": erm["extra_bytes"], "ilc": ilc["extra_bytes"],
                   "erm_s": erm["seconds"], "ilc_s": ilc["seconds"], "params": erm["param_bytes"]}
            if model in args.examples_models:
                ilc_ex = _measure_in_subprocess(model, batch, "ilc-examples", args.image_size)
                row.update(ilc_ex=ilc_ex["extra_bytes"], ilc_ex_s=ilc_ex["seconds"])
            rows.append(row)
            print(f"{model} batch {batch}: ERM {erm['extra_bytes'] / 2**20:.0f} MB, "
                  f"ILC {ilc['extra_bytes'] / 2**20:.0f} MB", file=sys.stderr, flush=True)
    header = (
        f"ILC (AND-mask) vs ERM: extra memory of one training step (forward, backward, SGD-momentum "
        f"step with fresh state), {args.image_size} px, timm models, random init. ILC makes one forward "
        f"pass of the whole batch and one backward pass per environment on its graph: {N_ENVS} "
        f"environments (the groups), or every example its own (ILC's default).\n"
        f"Measured {datetime.date.today().isoformat()} on {detail['device']} "
        f"({platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads: default); method: {detail['method']}; "
        f"total run {time.perf_counter() - started:.0f} s."
    )
    table = _table(rows, header)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
