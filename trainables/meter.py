"""Per-step statistics kept on the device and read back in bulk, with the finiteness check.

Reading a loss on the host (`loss.item()`) waits for the device to finish the step, so the host
cannot queue the next one meanwhile. The meter instead keeps each step's statistics as they come
(0-dim device tensors, or plain numbers from the host), and every `check_every` steps, and at the
end of the epoch, copies the window's values to the host in one transfer, adds them to the sums
and checks the losses: the first non-finite one raises the error made by `diverged(step, value)`.
A diverged run is therefore stopped at most `check_every` steps late and always before the
epoch's checkpoint (the loop reads `finish()` first).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator, Mapping, TypeVar

import torch

CHECK_EVERY = 50
"""Steps between read-backs: one host-device synchronisation per this many steps."""
LOSS = "loss"

T = TypeVar("T")


class StepMeter:
    """Sums of per-step statistics over an epoch, the time spent waiting for batches, and the check."""

    def __init__(self, diverged: Callable[[int, float], Exception], check_every: int = CHECK_EVERY) -> None:
        self.diverged = diverged
        self.check_every = check_every
        self.steps = 0
        self.wait_s = 0.0
        self.sums: dict[str, float] = {}
        self._window: list[Mapping[str, float | torch.Tensor]] = []

    def add(self, stats: Mapping[str, float | torch.Tensor]) -> None:
        """Record one step's statistics (at least `loss`); may raise the divergence error."""
        self._window.append(stats)
        self.steps += 1
        if len(self._window) >= self.check_every:
            self._read_back()

    def finish(self) -> dict[str, float]:
        """Read back what is pending (raising on a non-finite loss); the mean of every statistic."""
        self._read_back()
        return {key: value / max(self.steps, 1) for key, value in self.sums.items()}

    def timed(self, batches: Iterator[T]) -> Iterator[T]:
        """`batches`, adding the time spent waiting for each to `wait_s`."""
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.wait_s += time.perf_counter() - start
            yield batch

    def _read_back(self) -> None:
        if not self._window:
            return
        first = self.steps - len(self._window) + 1
        on_device = [(k, key, v) for k, stats in enumerate(self._window) for key, v in stats.items()
                     if isinstance(v, torch.Tensor)]
        values = torch.stack([v.detach().reshape(()).float() for _, _, v in on_device]).tolist() if on_device else []
        rows: list[dict[str, float]] = [
            {key: float(v) for key, v in stats.items() if not isinstance(v, torch.Tensor)} for stats in self._window
        ]
        for (k, key, _), value in zip(on_device, values):
            rows[k][key] = value
        self._window = []
        for k, row in enumerate(rows):
            if not math.isfinite(row[LOSS]):
                raise self.diverged(first + k, row[LOSS])
            for key, value in row.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
