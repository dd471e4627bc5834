"""Batches of a cached split on the device: gathered from the memory map ahead of time, moved as
uint8, converted and normalised on the device.

A background thread gathers the next batches' rows of the mapped uint8 N×H×W×C array into
(pinned, where the device is a GPU) host memory while the device computes, so the step waits
for data only when the host cannot keep up. Moving uint8 moves a quarter of the bytes of float32;
the conversion `x / 255`, then `(x - mean) / std`, is the same arithmetic, in the same order, as
torchvision's `ToTensor` + `Normalize`, so the values equal those of the uncached path exactly.
N×H×W×C rows viewed as N×C×H×W are already channels-last, the layout the GPU path trains in.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import torch

from trainables.datasets.cache import DecodedCache

PREFETCH = 3
"""Batches gathered ahead of the one being consumed."""


def cached_batches(
    cache: DecodedCache,
    y: torch.Tensor,
    g: torch.Tensor,
    order: torch.Tensor | None,
    batch_size: int,
    drop_last: bool,
    device: torch.device,
    channels_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, g) on `device` for consecutive `batch_size` slices of `order` (default: file order).

    `x` is float32 N×C×H×W, normalised; channels-last in memory if `channels_last`, else contiguous.
    `drop_last` skips a last batch smaller than `batch_size`.
    """
    index = order if order is not None else torch.arange(len(cache))
    end = len(index) - (len(index) % batch_size if drop_last else 0)
    starts = range(0, end, batch_size)
    pin = device.type == "cuda"
    mean = torch.tensor(cache.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cache.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def gather(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = index[start:start + batch_size]
        x = torch.empty((len(idx), *cache.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(cache.images, 0, idx, out=x)
        return x, y[idx], g[idx]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wgtune-feed") as pool:
        pending: list[Future] = [pool.submit(gather, s) for s in starts[:PREFETCH]]
        for k in range(len(starts)):
            x, yb, gb = pending.pop(0).result()
            if k + PREFETCH < len(starts):
                pending.append(pool.submit(gather, starts[k + PREFETCH]))
            yield to_device(x, mean, std, device, channels_last), yb.to(device, non_blocking=pin), gb.to(
                device, non_blocking=pin)


def to_device(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """uint8 N×H×W×C on the host -> normalised float32 N×C×H×W on `device`.

    Pinned host memory makes the copy asynchronous; PyTorch's pinned-memory allocator keeps the
    buffer alive until the copy is done. The conversion keeps the channels-last strides.
    """
    x = x.to(device, non_blocking=x.is_pinned()).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)
