"""Online Group DRO (Sagawa et al. 2020, arXiv:1911.08731, Algorithm 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from trainables.objectives.base import Objective, Scale
from trainables.options import OptionError

if TYPE_CHECKING:
    import torch
    from torch import nn


class GroupDRO(Objective):
    """Loss ``sum_e q_e loss_e`` with adversarial environment weights q updated every batch.

    q starts uniform; per batch, each present environment's weight is multiplied by
    ``exp(eta * (loss_e + adjustment / sqrt(n_e)))`` (``n_e = env_counts[e]``; the adjustment
    is the paper's group-size term C, which favours small groups) and q is renormalised.
    Absent environments keep their weight before renormalisation and add nothing to the loss.
    q survives `state_dict`.

    Trained by default on group-balanced batches with the groups as environments, as both
    references do (kohpangwei/group_DRO run_expt.py with `--reweight_groups`, data/dro_dataset.py
    `get_loader`; p-lambda/wilds examples/configs/algorithm.py, groupDRO:
    `uniform_over_groups: True`, with `groupby_fields` the groups). Each environment needs a
    stable identity across batches for its weight, so `examples` is refused.
    """

    name = "groupdro"
    defaults = {"eta": 0.01, "adjustment": 0.0}
    default_environments = "groups"
    default_sampler = "group_balanced"

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        import torch

        super().__init__(env_counts, params)
        self.eta = float(self.params["eta"])
        self.adjustment = float(self.params["adjustment"])
        if not self.eta > 0.0:
            raise OptionError(f"objective 'groupdro': option 'eta' must be > 0, got {self.eta!r}")
        if not self.adjustment >= 0.0:
            raise OptionError(
                f"objective 'groupdro': option 'adjustment' must be >= 0, got {self.adjustment!r}"
            )
        self.q = torch.full((self.n_envs,), 1.0 / self.n_envs)

    def backward_from(
        self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float]:
        """Per-environment mean losses from the batch's per-example losses."""
        import torch
        import torch.nn.functional as F

        del model
        per_example = F.cross_entropy(logits, y, reduction="none")
        counts = torch.bincount(env, minlength=self.n_envs).to(per_example.dtype)
        env_loss = torch.zeros_like(counts).index_add(0, env, per_example) / counts.clamp_min(1)
        present = counts > 0

        # q is kept in float32 whatever the model's precision: it compounds over the whole run.
        sizes = self.env_counts.to(env_loss.device, torch.float32).clamp_min(1)
        step = self.eta * (env_loss.detach().float() + self.adjustment / sizes.sqrt()) * present
        # Multiply-and-renormalise in log space: the same q, without overflow of exp().
        q = torch.softmax(self.q.to(env_loss.device).log() + step, dim=0)
        self.q = q

        loss = (q.to(env_loss.dtype) * env_loss).sum()
        scale(loss).backward()
        worst = torch.where(present, env_loss.detach().float(), float("-inf")).max(0)
        # 0-dim device tensors: the loop reads them back in bulk (trainables/meter.py), no sync per step.
        summary = [loss.detach(), per_example.detach().mean(), worst.values, worst.indices, q.max()]
        return dict(zip(["loss", "mean_loss", "worst_env_loss", "worst_env", "q_max"], (v.float() for v in summary)))

    def state_dict(self) -> dict[str, Any]:
        """The environment weights q."""
        return {"q": self.q.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import torch

        q = torch.as_tensor(state["q"], dtype=torch.float32)
        if q.shape != (self.n_envs,):
            raise ValueError(f"groupdro state has q of shape {tuple(q.shape)}, expected ({self.n_envs},)")
        self.q = q.clone()
