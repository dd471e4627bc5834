"""Invariant risk minimisation, IRMv1 (Arjovsky et al. 2019, arXiv:1907.02893), as in DomainBed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from trainables.objectives.base import Objective, Scale
from trainables.options import OptionError

if TYPE_CHECKING:
    import torch
    from torch import nn


class IRM(Objective):
    """Mean environment risk plus λ times the IRMv1 penalty.

    The penalty of an environment is the squared gradient of its risk with respect to a dummy
    scale ``w = 1.0`` multiplying the logits, in the unbiased form: the product of the
    gradients on the two halves of the environment's examples (even and odd positions within
    the environment, as DomainBed splits them). λ is 1.0 for the first `anneal_steps` calls and
    `penalty_weight` after. On the first call with the large λ the statistics carry
    ``reset_optimizer: 1.0``: both references re-create the optimizer there, because of the
    sudden jump in gradient magnitudes.

    Scaling: the backpropagated loss is ``nll + λ·penalty``, not divided by λ, as in
    facebookresearch/DomainBed domainbed/algorithms.py `IRM.update` (Adam) and p-lambda/wilds
    examples/algorithms/IRM.py `objective` (SGD, the optimizer WILDS trains Waterbirds with).
    The original IRM code (facebookresearch/InvariantRiskMinimization
    code/colored_mnist/main.py) divides by λ a loss that contains its own L2 term, so the
    data term keeps its weight against the regulariser; the original study
    (kylrth/worst_group_scale run.py `penalty`) divided by λ while SGD's weight decay was not
    divided, which shrinks the data term up to 1e4-fold against weight decay once λ is large.
    Not dividing keeps ``nll : λ·penalty : weight decay`` as written whatever λ is, at the cost
    of larger gradients after the anneal step (what the optimizer reset and a searched learning
    rate absorb, as in the references).

    Trained by default on group-balanced batches with the groups as environments, as WILDS
    trains IRM (examples/configs/algorithm.py, IRM: `uniform_over_groups: True`; see
    `trainables.sampling` for how its 'group' loader differs). Every environment needs two
    halves for the penalty, so `examples` is refused.

    The `loss` statistic is ``nll + λ·penalty``. The step count is the number of `backward`
    calls and survives `state_dict`. Environments absent from a batch are left out of the mean
    risk; those with a single example have no two halves and are left out of the mean penalty.
    """

    name = "irm"
    defaults = {"penalty_weight": 100.0, "anneal_steps": 500}
    default_environments = "groups"
    default_sampler = "group_balanced"

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        super().__init__(env_counts, params)
        self.penalty_weight = float(self.params["penalty_weight"])
        self.anneal_steps = int(self.params["anneal_steps"])
        if not self.penalty_weight >= 0.0:
            raise OptionError(
                f"objective 'irm': option 'penalty_weight' must be >= 0, got {self.penalty_weight!r}"
            )
        if self.anneal_steps < 0:
            raise OptionError(
                f"objective 'irm': option 'anneal_steps' must be >= 0, got {self.anneal_steps!r}"
            )
        self.step = 0

    def backward_from(
        self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float]:
        """Per-environment risks and penalties from the whole batch's logits."""
        weight = self.penalty_weight if self.step >= self.anneal_steps else 1.0
        stats: dict[str, float | torch.Tensor] = {}
        if self.anneal_steps > 0 and self.step == self.anneal_steps:
            stats["reset_optimizer"] = 1.0
        self.step += 1

        del model
        nll, penalty = irm_risks(logits, y, env, self.n_envs)
        loss = nll + weight * penalty
        scale(loss).backward()
        # 0-dim device tensors: the loop reads them back in bulk (trainables/meter.py), no sync per step.
        stats.update(loss=loss.detach().float(), nll=nll.detach().float(), penalty=penalty.detach().float(),
                     penalty_weight=weight)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The step count, which decides λ."""
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


def irm_risks(
    logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, n_envs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean risk over present environments and mean IRMv1 penalty over those with >= 2 examples.

    Vectorised over environments (no host synchronisation): one dummy scale per
    (environment, half) pair, so one `autograd.grad` call yields every half's gradient.
    """
    import torch
    import torch.nn.functional as F

    # Position of each example within its environment decides its half, as logits[::2] /
    # logits[1::2] of the environment's own minibatch do in DomainBed.
    rank = (F.one_hot(env, n_envs).cumsum(0) - 1).gather(1, env[:, None]).squeeze(1)
    cell = 2 * env + rank % 2
    dummy = torch.ones(2 * n_envs, device=logits.device, dtype=logits.dtype, requires_grad=True)
    per_example = F.cross_entropy(logits * dummy[cell, None], y, reduction="none")

    cell_counts = torch.bincount(cell, minlength=2 * n_envs).to(per_example.dtype)
    cell_sums = torch.zeros_like(cell_counts).index_add(0, cell, per_example)
    # Each half's mean risk depends on its own dummy entry only, so the gradient of their sum
    # holds every half's gradient at once; create_graph lets the penalty train the model.
    (grads,) = torch.autograd.grad((cell_sums / cell_counts.clamp_min(1)).sum(), dummy, create_graph=True)
    grads = grads.view(n_envs, 2)

    env_counts = cell_counts.view(n_envs, 2).sum(1)
    present = env_counts > 0
    paired = env_counts > 1
    env_nll = cell_sums.view(n_envs, 2).sum(1) / env_counts.clamp_min(1)
    # Masks multiply rather than index: boolean indexing would wait for the device.
    nll = (env_nll * present).sum() / present.sum()
    penalty = (grads[:, 0] * grads[:, 1] * paired).sum() / paired.sum().clamp_min(1)
    return nll, penalty
