"""`wgtune launch --dry-run --calibrate`: time a few real training epochs of each cell on this machine.

Each cell trains with the real `trainables.training.train` on its real data set, at its own image size, batch size,
objective and model, for `CALIBRATION_EPOCHS` epochs. The trial's own clock (`train/elapsed_s`, the figure
`cost/device_s` is made of) after the first epoch holds set-up plus one epoch; the second epoch's increment is one
epoch in steady state (training, validation, and test where validation improved). A trial of E epochs is then
expected to take set-up + E × epoch seconds, times the devices it holds (`run/estimate.py`).

Searched values are taken at the middle of each range (a choice's middle option): a searched batch size
changes the cost per image, and that is not averaged over. A CPU cell is timed with as many torch threads as the
cores a trial holds; a GPU cell is timed only where this machine has a GPU, and a cell whose data set is not on
this machine is not timed (both say why, and the dry run falls back to another source).
"""

from __future__ import annotations

import math
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Sequence

from trainables.metrics import ELAPSED_SECONDS
from wgtune.run.estimate import CalibratedTrial
from wgtune.run.plan import trial_config
from wgtune.spec.spaces import LOG_KINDS
from wgtune.tracking.records import DEVICE_GPU, device_use

if TYPE_CHECKING:
    from wgtune.run.plan import PlannedCell

__all__ = ["CALIBRATION_EPOCHS", "calibrate", "calibration_params"]

CALIBRATION_EPOCHS = 2
"""Epochs a calibration trains: the first holds the set-up, the second is one epoch in steady state."""


def calibration_params(plan: PlannedCell) -> dict[str, Any]:
    """The searched values a calibration trains with: each range's middle (geometric on a log scale), a choice's
    middle option (a batch size choice's median), a normal's mean."""
    params: dict[str, Any] = {}
    for dim in plan.space.searched():
        if dim.kind == "choice":
            params[dim.name] = dim.args[len(dim.args) // 2]
        elif dim.kind in ("normal", "lognormal", "qnormal", "qlognormal"):
            params[dim.name] = math.exp(dim.args[0]) if "log" in dim.kind else dim.args[0]
        else:
            low, high = dim.args[0], dim.args[1]
            params[dim.name] = math.sqrt(low * high) if dim.kind in LOG_KINDS else (low + high) / 2
    return params


def calibrate(plans: Sequence[PlannedCell], print_line: Callable[[str], None] = print
              ) -> dict[str, CalibratedTrial | str]:
    """Each cell's timing on this machine, by cell id, or why it could not be timed here."""
    import torch

    from trainables.datasets import DataNotFoundError, check_dataset
    from trainables.training import train

    has_gpu = torch.cuda.is_available()
    threads = torch.get_num_threads()
    out: dict[str, CalibratedTrial | str] = {}
    try:
        for plan in plans:
            device, devices = device_use(plan.resources)
            if device == DEVICE_GPU and not has_gpu:
                out[plan.cell.id] = "its trials hold GPUs and this machine has none"
                continue
            try:
                check_dataset(plan.cell.dataset, plan.base_config.get("data_root"))
            except DataNotFoundError:
                out[plan.cell.id] = f"data set {plan.cell.dataset} is not on this machine"
                continue
            if device != DEVICE_GPU:
                torch.set_num_threads(max(int(devices), 1))
            config = dict(trial_config(plan, calibration_params(plan)), epochs=CALIBRATION_EPOCHS)
            clock: list[float] = []
            with tempfile.TemporaryDirectory(prefix="wgtune-calibrate-") as workdir:
                train(config, lambda metrics, _: clock.append(metrics[ELAPSED_SECONDS]), workdir=workdir)
            epoch_s = max(clock[1] - clock[0], 0.0)
            timing = CalibratedTrial(max(clock[0] - epoch_s, 0.0), epoch_s, int(plan.base_config["epochs"]))
            out[plan.cell.id] = timing
            print_line(f"calibrated {plan.cell.label}: {epoch_s:.3g} s per epoch, {timing.setup_s:.3g} s set-up")
    finally:
        torch.set_num_threads(threads)
    return out
