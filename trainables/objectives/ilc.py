"""Invariant learning consistency via the AND-mask (Parascandolo et al. 2020, arXiv:2009.00329)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from trainables.objectives.base import Objective, Scale, Setting, SettingError
from trainables.objectives.masking import MIN_HEAD_UPDATE_SHARE, head_update_probability, worst_case_agreement
from trainables.options import OptionError

if TYPE_CHECKING:
    import torch
    from torch import nn


class ILC(Objective):
    """AND-mask: keep only the gradient components whose sign agrees across environments.

    With g_e the gradient of environment e's mean cross-entropy, component j is kept when
    ``|mean_e sign(g_e,j)| >= threshold``; the kept components of ``mean_e g_e`` are rescaled,
    per parameter tensor, by ``1 / (1e-10 + fraction kept)`` (`scale_grad_inverse_sparsity`),
    as the ILC authors' `get_grads` (gibipara92/learning-explanations-hard-to-vary
    and_mask/and_mask_utils.py) and DomainBed's `ANDMask` do. The mean is over the environments
    present in the batch; absent ones are skipped.

    One forward pass over the whole batch, then one backward pass per present environment on
    that shared graph, as the ILC authors' code does with `autograd.grad` per environment ("the
    output of the model, where inputs were *all examples from all envs stacked in a big
    batch*"), and the original study (kylrth/worst_group_scale ilc.py, modified from it).
    BatchNorm therefore normalises every environment with the whole batch's statistics, as at
    evaluation (with running statistics accumulated from whole batches). DomainBed's `ANDMask`
    forwards each environment's minibatch alone, but its ResNets keep BatchNorm frozen in eval
    mode (domainbed/networks.py `freeze_bn`); with BatchNorm training, per-environment forwards
    let a model rely on statistics of single-group batches that do not exist at test time
    (measured: see `Objective`).

    Memory: the activations of the whole batch (as ERM) are kept until the last environment's
    backward pass, where ERM frees them during its one; gradients are not stacked per
    environment as in the references but streamed through parameter hooks: each environment's
    is added into `.grad` (which ends up holding the mean) and its signs into one int16 count per
    parameter. The extra memory does not grow with the number of environments (BENCHMARKS.md,
    "ilc memory"). Time: one backward pass through the whole batch per present environment, so
    `environments: examples` costs a backward pass per example, as in the references.

    Defaults: environments `examples`, as the original study ran ILC and as the ILC authors'
    CIFAR-10 code does (every example its own environment). Threshold 0.1: the original study
    ran 0.1, 0.25 and 0.5 (run.py `main`), the authors' CIFAR-10 README 0.2; on a binary task
    with labels balanced in the batch, per-example environments keep the classifier's bias only
    when the batch's label imbalance reaches the threshold (see `masking`), which 0.1 allows on
    about a third of batches of 64 and 0.5 almost never. Sampler `group_balanced`, as every
    robust objective here. Deliberate deviation: the original study ran ILC on shuffled batches
    (its 'standard' loader without `uniform_over_groups`); `sampler: shuffle` restores that.
    `check_setting` refuses the settings that freeze the classifier's bias;
    `allow_masked_head: true` overrides that.
    """

    name = "ilc"
    defaults = {"threshold": 0.1, "allow_masked_head": False}
    default_environments = "examples"
    default_sampler = "group_balanced"
    environment_kinds = ("groups", "attribute", "examples")

    def __init__(self, env_counts: torch.Tensor, params: Mapping[str, Any]) -> None:
        super().__init__(env_counts, params)
        self.threshold = float(self.params["threshold"])
        if not 0.0 <= self.threshold <= 1.0:
            raise OptionError(
                f"objective 'ilc': option 'threshold' must be in [0, 1], got {self.threshold!r}"
            )

    def backward_from(
        self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor, scale: Scale
    ) -> dict[str, float]:
        """One backward pass per present environment on the batch's graph; leaves the masked mean in `.grad`."""
        import torch
        import torch.nn.functional as F

        params = [p for p in model.parameters() if p.requires_grad]
        per_example = F.cross_entropy(logits, y, reduction="none")
        present = torch.unique(env)  # sorted
        n_present = len(present)
        slot = torch.searchsorted(present, env)
        counts = torch.bincount(slot, minlength=n_present).to(per_example.dtype)
        env_losses = torch.zeros_like(counts).index_add(0, slot, per_example) / counts
        signs = [torch.zeros_like(p, dtype=torch.int16) for p in params]

        def count_signs(buffer: torch.Tensor) -> Callable[[torch.Tensor], None]:
            def hook(grad: torch.Tensor) -> None:
                buffer.add_(torch.sign(grad).to(torch.int16))

            return hook

        for p in params:
            p.grad = None  # .grad accumulates exactly the environments' gradients below
        # A hook on each parameter sees each environment's gradient on its way into .grad, so no
        # environment's full gradient is ever held beside the running sum.
        handles = [p.register_hook(count_signs(s)) for p, s in zip(params, signs)]
        try:
            for k in range(n_present):
                # Dividing by the number of environments leaves their mean in .grad; signs, and
                # so the mask, are unaffected. The graph is kept until the last environment's pass.
                scale(env_losses[k] / n_present).backward(retain_graph=k < n_present - 1)
        finally:
            for handle in handles:
                handle.remove()

        kept = torch.zeros((), device=logits.device)
        for p, s in zip(params, signs):
            if p.grad is None:  # unused by the model's forward: nothing to mask
                continue
            mask = s.abs().to(torch.float32) / n_present >= self.threshold
            fraction = mask.sum() / mask.numel()
            # Rescale before masking so that an all-masked tensor stays exactly zero.
            p.grad.mul_(1.0 / (1e-10 + fraction)).masked_fill_(~mask, 0.0)
            kept = kept + mask.sum()
        numel = sum(p.numel() for p in params)
        # 0-dim device tensors: the loop reads them back in bulk (trainables/meter.py), no sync per step.
        # (`torch.unique` above still syncs once per step: the number of backward passes is data-dependent.)
        return {"loss": env_losses.detach().mean().float(), "mask_fraction": kept.float() / numel,
                "envs_present": float(n_present)}

    @classmethod
    def check_setting(cls, setting: Setting) -> None:
        """Refuse settings under which the AND-mask freezes the classifier's bias (see `masking`):
        provably in every batch holding two labels, or, under group-balanced sampling, on more
        than 99% of steps. `allow_masked_head: true` accepts them."""
        super().check_setting(setting)
        threshold = float(setting.options["threshold"])
        if setting.options["allow_masked_head"] or threshold == 0.0:
            return
        bound = worst_case_agreement(setting.environments, setting.n_classes, setting.n_groups, setting.batch_size)
        why = (
            f"with environments {setting.environments!r} every environment holds one label, so the "
            f"environments' gradients of the classifier's bias have the sign of their label "
            f"(p_c - [y = c]) and cancel in the sign agreement"
        )
        force = ("set a lower threshold, use environments 'attribute', or set objective option "
                 "allow_masked_head: true to train this way on purpose (the bias then stays at its "
                 "initialisation)")
        if bound is not None and threshold > bound:
            raise SettingError(
                f"objective 'ilc': threshold {threshold:g} freezes the classifier's bias (and most of a "
                f"ResNet's head weights) in every batch that holds both labels: {why}, which reaches at most "
                f"{bound:.3g} on this {setting.n_classes}-class task with {setting.n_groups} groups "
                f"and batch size {setting.batch_size}. To proceed, {force}."
            )
        if setting.sampler != "group_balanced":
            return
        share = head_update_probability(
            setting.environments, setting.n_classes, setting.n_groups, setting.batch_size, threshold
        )
        if share is not None and share < MIN_HEAD_UPDATE_SHARE:
            raise SettingError(
                f"objective 'ilc': threshold {threshold:g} with sampler 'group_balanced' lets the "
                f"classifier's bias be updated on {share:.2%} of steps (batch size "
                f"{setting.batch_size}): {why}, and balanced batches hold both labels in equal "
                f"measure. To proceed, {force}."
            )
