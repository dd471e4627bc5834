"""Mixed precision of a run: bf16 autocast where the GPU supports it, else fp16 with loss scaling.

bf16 has float32's exponent range, so gradients do not underflow and no GradScaler is needed
(a scaler would also read its overflow flag on the host every step). fp16 keeps the scaler.
On the CPU, and with `amp: false`, everything runs in float32 as before.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: float32 throughout) and whether losses are scaled (fp16 only)."""

    dtype: torch.dtype | None = None
    scaled: bool = False

    def autocast(self, device: torch.device) -> ContextManager[object]:
        """The autocast context for the forward passes of this run."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def choose_precision(amp: bool, device: torch.device) -> Precision:
    """bf16 on a GPU that supports it, fp16 + scaler on one that does not, float32 otherwise."""
    if not amp or device.type != "cuda":
        return Precision()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision(torch.bfloat16)
    return Precision(torch.float16, scaled=True)
