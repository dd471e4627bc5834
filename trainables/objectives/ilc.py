"""Invariant learning consistency via the AND-mask (Parascandolo et al. 2020, arXiv:2009.00329)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from trainables.objectives.base import Objective, Scale
from trainables.options import OptionError


class ILC(Objective):
    """AND-mask: keep only the gradient components whose sign agrees across environments.

    With g_e the gradient of environment e's mean cross-entropy, component j is kept when
    ``|mean_e sign(g_e,j)| >= threshold``; the kept components of ``mean_e g_e`` are rescaled,
    per parameter tensor, by ``1 / (1e-10 + fraction kept)`` as DomainBed's `ANDMask` does.
    The mean is over the environments present in the batch; absent ones are skipped.

    Memory: each present environment gets its own forward and backward on its sub-batch, so
    activation memory is at most ERM's for the whole batch and does not grow with the number
    of environments. The gradients are not stored per environment: parameter hooks stream them
    into `.grad` (which ends up holding the mean) and into one int16 sign-count buffer per
    parameter, so the extra memory is about half the parameters' size, independent of batch
    size and environment count (the per-sample-gradient code this replaces ran out of memory
    above ResNet-18).

    BatchNorm sees each environment's sub-batch separately (as in DomainBed, which forwards
    each environment's minibatch on its own): batch statistics are per environment, and
    running statistics are updated once per present environment per step. An environment
    with a single example in the batch has no batch statistics (BatchNorm raises on it when
    the spatial size is 1x1), so its forward uses BatchNorm's running statistics and leaves
    them unchanged.
    """

    name = "ilc"
    # DomainBed's ANDMask default is tau = 1.0, searched in U(0.5, 1) (hparams_registry.py);
    # the paper's code has no default (its README runs 1.0 on synthetic data, 0.2 on CIFAR-10).
    # With fewer than 10 environments any threshold in (1 - 2/n, 1] keeps exactly the
    # components on which all environments agree, so 0.9 and 1.0 coincide for 4 groups.
    defaults = {"threshold": 1.0}

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        super().__init__(env_counts, params)
        self.threshold = float(self.params["threshold"])
        if not 0.0 <= self.threshold <= 1.0:
            raise OptionError(
                f"objective 'ilc': option 'threshold' must be in [0, 1], got {self.threshold!r}"
            )

    def backward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float]:
        """One forward and backward per present environment; leaves the masked mean in `.grad`."""
        params = [p for p in model.parameters() if p.requires_grad]
        present = torch.unique(env).tolist()
        n_present = len(present)
        signs = [torch.zeros_like(p, dtype=torch.int16) for p in params]

        def count_signs(buffer: torch.Tensor) -> Callable[[torch.Tensor], None]:
            def hook(grad: torch.Tensor) -> None:
                buffer.add_(torch.sign(grad).to(torch.int16))

            return hook

        for p in params:
            p.grad = None  # .grad accumulates exactly the environments' gradients below
        handles = [p.register_hook(count_signs(s)) for p, s in zip(params, signs)]
        try:
            env_losses = []
            for e in present:
                index = (env == e).nonzero().squeeze(1)
                with _running_batchnorm_stats(model, enabled=len(index) == 1):
                    loss = F.cross_entropy(model(x[index]), y[index])
                # Dividing by the number of environments before backward leaves their mean in
                # .grad; signs are unaffected, and so is the mask.
                scale(loss / n_present).backward()
                env_losses.append(loss.detach())
        finally:
            for handle in handles:
                handle.remove()

        kept = torch.zeros((), device=x.device)
        for p, s in zip(params, signs):
            if p.grad is None:  # unused by the model's forward: nothing to mask
                continue
            mask = s.abs().to(torch.float32) / n_present >= self.threshold
            fraction = mask.sum() / mask.numel()
            # Rescale before masking so that an all-masked tensor stays exactly zero.
            p.grad.mul_(1.0 / (1e-10 + fraction)).masked_fill_(~mask, 0.0)
            kept = kept + mask.sum()
        numel = sum(p.numel() for p in params)
        summary = torch.stack([torch.stack(env_losses).mean().float(), kept.float()])
        loss_value, kept_value = summary.tolist()  # one device sync
        return {"loss": loss_value, "mask_fraction": kept_value / numel, "envs_present": float(n_present)}


@contextmanager
def _running_batchnorm_stats(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with running statistics."""
    batchnorm = nn.modules.batchnorm._BatchNorm  # the base of BatchNorm1d/2d/3d, SyncBatchNorm
    switched = [m for m in model.modules() if isinstance(m, batchnorm) and m.training] if enabled else []
    for module in switched:
        module.eval()
    try:
        yield
    finally:
        for module in switched:
            module.train()
