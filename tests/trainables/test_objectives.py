"""Objectives: the mathematics of each, against hand computations and naive references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.objectives import OBJECTIVES, Objective, Scale, create_objective
from trainables.options import OptionError
from trainables.registry import UnknownNameError


def identity(loss: torch.Tensor) -> torch.Tensor:
    return loss


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def run(
    objective: Objective, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor,
    scale: Scale = identity,
) -> dict[str, float]:
    """One `backward`; its statistics as floats, once each is known to be a number or a 0-dim tensor."""
    model.zero_grad(set_to_none=True)
    stats = objective.backward(model, x, y, env, scale).stats
    for key, value in stats.items():
        assert isinstance(value, float) or (isinstance(value, torch.Tensor) and value.dim() == 0), (key, value)
    return {key: float(value) for key, value in stats.items()}


def mlp(seed: int = 0, d_in: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed: int, n: int = 24, d_in: int = 5, n_envs: int = 4) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    env = torch.arange(n) % n_envs
    env = env[torch.randperm(n, generator=gen)]
    return x, y, env


# --- ERM --------------------------------------------------------------------------------------


def test_erm_gradient_is_cross_entropy_gradient() -> None:
    model = mlp()
    x, y, env = batch(1)
    stats = run(create_objective("erm", torch.ones(4)), model, x, y, env)
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    assert stats["loss"] == pytest.approx(loss.item())
    for got, want in zip(grads_of(model), expected):
        torch.testing.assert_close(got, want)


# --- IRM --------------------------------------------------------------------------------------


def irm_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, n_envs: int, weight: float
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """DomainBed's IRM update, environment by environment (their `_irm_penalty` per minibatch),
    backpropagating ``nll + λ·penalty`` undivided, as DomainBed and WILDS do."""
    logits = model(x)
    nlls, penalties = [], []
    for e in range(n_envs):
        logits_e, y_e = logits[env == e], y[env == e]
        if len(y_e) == 0:
            continue
        nlls.append(F.cross_entropy(logits_e, y_e))
        if len(y_e) < 2:
            continue
        w = torch.tensor(1.0, requires_grad=True)
        g1 = torch.autograd.grad(F.cross_entropy(logits_e[::2] * w, y_e[::2]), [w], create_graph=True)[0]
        g2 = torch.autograd.grad(F.cross_entropy(logits_e[1::2] * w, y_e[1::2]), [w], create_graph=True)[0]
        penalties.append(g1 * g2)
    nll, penalty = torch.stack(nlls).mean(), torch.stack(penalties).mean()
    loss = nll + weight * penalty
    return nll, penalty, torch.autograd.grad(loss, list(model.parameters()))


def calibrated_model(slope: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (0, slope * x) on two environments in which scale 1 minimises each half's risk.

    With logits (0, a) and a fraction f of label 1, d risk / d w at w = 1 is (sigmoid(a) - f) a,
    which vanishes for a = log(f / (1 - f)): env 0 has f = 3/4 in both halves (x = log 3),
    env 1 has f = 1/4 (x = -log 3). `slope` = 1 is calibrated; any other slope is not.
    """
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [slope]]))
    # Within each env, even and odd positions each hold labels (1, 1, 1, 0) resp. (0, 0, 0, 1).
    y0 = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    y1 = 1 - y0
    x = torch.cat([torch.full((8, 1), math.log(3.0)), torch.full((8, 1), -math.log(3.0))])
    y = torch.cat([y0, y1])
    env = torch.cat([torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)])
    # Interleave the environments: halves are positions within an environment, not in the batch.
    order = torch.stack([torch.arange(8), torch.arange(8, 16)], 1).flatten()
    return model, x[order], y[order], env[order]


def test_irm_penalty_vanishes_when_scale_one_is_optimal_in_every_env() -> None:
    model, x, y, env = calibrated_model(slope=1.0)
    objective = create_objective("irm", torch.tensor([8, 8]), {"penalty_weight": 1e4, "anneal_steps": 0})
    stats = run(objective, model, x, y, env)
    assert abs(stats["penalty"]) < 1e-10
    # A zero penalty with zero gradient: the update is the risk's, not divided by λ.
    nll = F.cross_entropy(model(x[env == 0]), y[env == 0]) + F.cross_entropy(model(x[env == 1]), y[env == 1])
    (expected,) = torch.autograd.grad(nll / 2, [model.weight])
    torch.testing.assert_close(model.weight.grad, expected)


@pytest.mark.parametrize("slope", [0.5, 2.0, -1.0])
def test_irm_penalty_positive_when_scale_one_is_not_optimal(slope: float) -> None:
    model, x, y, env = calibrated_model(slope)
    stats = run(create_objective("irm", torch.tensor([8, 8])), model, x, y, env)
    assert stats["penalty"] > 1e-3


def test_irm_matches_domainbed_reference_with_an_absent_and_a_singleton_env() -> None:
    model = mlp(3)
    x, y, env = batch(4, n=21, n_envs=3)
    env[0] = 4  # a singleton environment; env 3 is absent
    objective = create_objective("irm", torch.ones(5), {"penalty_weight": 50.0, "anneal_steps": 0})
    stats = run(objective, model, x, y, env)
    nll, penalty, expected = irm_reference(model, x, y, env, 5, 50.0)
    assert stats["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert stats["penalty"] == pytest.approx(penalty.item(), rel=1e-4)
    assert stats["loss"] == pytest.approx(nll.item() + 50.0 * penalty.item(), rel=1e-5)
    for got, want in zip(grads_of(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_irm_large_lambda_does_not_shrink_the_data_term_against_weight_decay() -> None:
    # Issue 12, item 3. With one example per environment no environment has two halves, so the
    # penalty is 0 whatever the weights: an SGD step with weight decay must then be the same for
    # λ = 1 and λ = 1e4, since the objective is nll + λ·penalty undivided (DomainBed, WILDS).
    # Dividing by λ, as the original study did while SGD's weight decay stayed undivided, would
    # shrink the nll's share of the step 1e4-fold.
    x, y, _ = batch(20, n=12)
    env = torch.arange(12)
    steps = []
    for weight in (1.0, 1e4):
        model = mlp(21)
        objective = create_objective("irm", torch.ones(12), {"penalty_weight": weight, "anneal_steps": 0})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
        before = [p.detach().clone() for p in model.parameters()]
        stats = run(objective, model, x, y, env)
        optimizer.step()
        steps.append([p.detach() - b for p, b in zip(model.parameters(), before)])
        assert stats["penalty"] == 0.0 and stats["penalty_weight"] == weight
    for small, large in zip(*steps):
        torch.testing.assert_close(large, small)
    # The nll's part of the step is not negligible next to weight decay's.
    model = mlp(21)
    (nll_grad, *_) = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert nll_grad.abs().max() > 0.1 * (0.5 * model[0].weight).abs().max()


def test_irm_schedule_switches_weight_and_asks_for_optimizer_reset_once() -> None:
    model = mlp(5)
    x, y, env = batch(6)
    objective = create_objective("irm", torch.ones(4), {"penalty_weight": 100.0, "anneal_steps": 3})
    weights, resets = [], []
    for step in range(5):
        stats = run(objective, model, x, y, env)
        weights.append(stats["penalty_weight"])
        resets.append(stats.get("reset_optimizer", 0.0))
        if step == 3:
            _, _, expected = irm_reference(model, x, y, env, 4, 100.0)
            for got, want in zip(grads_of(model), expected):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert weights == [1.0, 1.0, 1.0, 100.0, 100.0]
    assert resets == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_irm_without_annealing_never_resets() -> None:
    objective = create_objective("irm", torch.ones(4), {"anneal_steps": 0})
    model, (x, y, env) = mlp(), batch(0)
    assert all("reset_optimizer" not in run(objective, model, x, y, env) for _ in range(3))


def test_irm_step_count_survives_state_dict() -> None:
    model = mlp()
    x, y, env = batch(0)
    first = create_objective("irm", torch.ones(4), {"anneal_steps": 2})
    run(first, model, x, y, env)
    run(first, model, x, y, env)
    resumed = create_objective("irm", torch.ones(4), {"anneal_steps": 2})
    resumed.load_state_dict(first.state_dict())
    stats = run(resumed, model, x, y, env)
    assert stats["reset_optimizer"] == 1.0 and stats["penalty_weight"] == 100.0


# --- Group DRO --------------------------------------------------------------------------------


def two_env_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Env 0's examples are misclassified by the model, env 1's are right: env 0 has the higher loss."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([1, 0, 0, 1])
    env = torch.tensor([0, 0, 1, 1])
    return model, x, y, env


def test_groupdro_weight_moves_to_the_worst_env_and_loss_is_q_weighted() -> None:
    model, x, y, env = two_env_batch()
    objective = create_objective("groupdro", torch.tensor([10, 10]), {"eta": 0.5})
    stats = run(objective, model, x, y, env)
    losses = torch.stack([F.cross_entropy(model(x[env == e]), y[env == e]) for e in (0, 1)])
    q = torch.softmax(0.5 * losses.detach(), 0)  # uniform times exp(eta * loss), renormalised
    torch.testing.assert_close(objective.q, q)
    assert objective.q[0] > 0.5 > objective.q[1]
    assert objective.q.sum().item() == pytest.approx(1.0)
    assert stats["worst_env"] == 0.0 and stats["worst_env_loss"] == pytest.approx(losses[0].item())
    assert stats["loss"] == pytest.approx((q * losses).sum().item())
    (expected,) = torch.autograd.grad((q * losses).sum(), [model.weight])
    torch.testing.assert_close(model.weight.grad, expected)
    for _ in range(5):  # q keeps compounding toward env 0
        previous = objective.q[0].item()
        run(objective, model, x, y, env)
        assert objective.q[0].item() > previous


def test_groupdro_adjustment_favours_small_groups() -> None:
    model, x, _, _ = two_env_batch()
    y, env = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1])  # the same loss in both envs
    objective = create_objective("groupdro", torch.tensor([4, 400]), {"eta": 0.1, "adjustment": 2.0})
    run(objective, model, x, y, env)
    expected = torch.softmax(torch.tensor([0.1 * 2.0 / 2.0, 0.1 * 2.0 / 20.0]), 0)
    torch.testing.assert_close(objective.q, expected)
    without = create_objective("groupdro", torch.tensor([4, 400]), {"eta": 0.1})
    run(without, model, x, y, env)
    torch.testing.assert_close(without.q, torch.full((2,), 0.5))


def test_groupdro_absent_env_keeps_its_weight_before_renormalising() -> None:
    model, x, y, env = two_env_batch()
    objective = create_objective("groupdro", torch.tensor([4, 4, 4]), {"eta": 1.0, "adjustment": 1.0})
    run(objective, model, x, y, env)  # env 2 is absent: neither its loss nor its adjustment counts
    losses = torch.stack([F.cross_entropy(model(x[env == e]), y[env == e]) for e in (0, 1)]).detach()
    unnormalised = torch.cat([torch.exp(losses + 0.5), torch.ones(1)]) / 3
    torch.testing.assert_close(objective.q, unnormalised / unnormalised.sum())


def test_groupdro_weights_survive_state_dict() -> None:
    model, x, y, env = two_env_batch()
    first = create_objective("groupdro", torch.tensor([10, 10]), {"eta": 0.5})
    run(first, model, x, y, env)
    resumed = create_objective("groupdro", torch.tensor([10, 10]), {"eta": 0.5})
    resumed.load_state_dict(first.state_dict())
    torch.testing.assert_close(resumed.q, first.q)
    assert run(resumed, model, x, y, env) == pytest.approx(run(first, model, x, y, env))
    with pytest.raises(ValueError, match="shape"):
        create_objective("groupdro", torch.ones(3)).load_state_dict(first.state_dict())


# --- ILC (AND-mask) ---------------------------------------------------------------------------


def and_mask_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, threshold: float
) -> list[torch.Tensor]:
    """The ILC authors' `get_grads` (and_mask/and_mask_utils.py): one forward of the stacked
    batch, each environment's gradient by `autograd.grad` on that graph, stacked, then masked
    per parameter tensor. Leaves `model`'s BatchNorm running statistics updated by one forward."""
    params = list(model.parameters())
    logits = model(x)
    per_env = []
    for e in torch.unique(env).tolist():
        loss = F.cross_entropy(logits[env == e], y[env == e])
        per_env.append(torch.autograd.grad(loss, params, retain_graph=True))
    result = []
    for grads in zip(*per_env):
        grads = torch.stack(grads)
        mask = (torch.sign(grads).mean(0).abs() >= threshold).float()
        result.append(mask * grads.mean(0) / (1e-10 + mask.sum() / mask.numel()))
    return result


def hand_designed() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A zero linear model and four one-example environments, all labelled 1.

    At W = 0 the softmax is (1/2, 1/2), so env e's gradient is row 0 = x_e / 2, row 1 = -x_e / 2.
    Feature 0 is positive in every env (signs agree), feature 1 has signs (+, +, -, -)
    (mean sign 0), feature 2 has (+, +, +, -) (mean sign 1/2).
    """
    model = nn.Linear(3, 2, bias=False)
    nn.init.zeros_(model.weight)
    x = torch.tensor([[1.0, 2.0, 1.0], [3.0, 1.0, 2.0], [2.0, -1.0, 1.0], [1.0, -3.0, -1.0]])
    return model, x, torch.ones(4, dtype=torch.long), torch.arange(4)


@pytest.mark.parametrize(
    ("threshold", "expected_row0", "kept"),
    [
        # mean_e x_e / 2 = (0.875, -0.125, 0.375); rescaled by 1 / (fraction of the 6 entries kept)
        (1.0, [0.875 * 3, 0.0, 0.0], 2 / 6),
        (0.9, [0.875 * 3, 0.0, 0.0], 2 / 6),
        (0.5, [0.875 * 1.5, 0.0, 0.375 * 1.5], 4 / 6),
        (0.0, [0.875, -0.125, 0.375], 1.0),
    ],
)
def test_and_mask_on_hand_designed_gradients(
    threshold: float, expected_row0: list[float], kept: float
) -> None:
    model, x, y, env = hand_designed()
    stats = run(create_objective("ilc", torch.ones(4), {"threshold": threshold}), model, x, y, env)
    row0 = torch.tensor(expected_row0)
    torch.testing.assert_close(model.weight.grad, torch.stack([row0, -row0]))
    assert stats["mask_fraction"] == pytest.approx(kept)
    torch.testing.assert_close(model.weight.grad, and_mask_reference(model, x, y, env, threshold)[0])


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_and_mask_matches_per_env_autograd_reference(threshold: float) -> None:
    model = mlp(7)
    x, y, env = batch(8, n=32)
    run(create_objective("ilc", torch.ones(4), {"threshold": threshold}), model, x, y, env)
    for got, want in zip(grads_of(model), and_mask_reference(model, x, y, env, threshold)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_and_mask_threshold_zero_is_mean_of_env_gradients_not_batch_gradient() -> None:
    model = mlp(9)
    x, y, env = batch(10, n=20)
    env = torch.tensor([0] * 11 + [1] * 3 + [2] * 6)  # unequal environments
    run(create_objective("ilc", torch.ones(3), {"threshold": 0.0}), model, x, y, env)
    params = list(model.parameters())
    env_mean = sum(F.cross_entropy(model(x[env == e]), y[env == e]) for e in range(3)) / 3
    for got, want in zip(grads_of(model), torch.autograd.grad(env_mean, params)):
        torch.testing.assert_close(got, want)
    batch_grad = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    assert not torch.allclose(model[0].weight.grad, batch_grad[0])


def test_and_mask_skips_absent_envs() -> None:
    model = mlp(11)
    x, y, _ = batch(12, n=20)
    env = torch.tensor([0, 1, 3, 4] * 5)  # envs 2 and 5 absent
    # Threshold 1/2 keeps components on which >= 3 of the 4 present envs agree; counting the
    # absent envs as zero gradients would demand 3 of 6 (all 4 present) and shrink the mean.
    stats = run(create_objective("ilc", torch.ones(6), {"threshold": 0.5}), model, x, y, env)
    assert stats["envs_present"] == 4.0
    for got, want in zip(grads_of(model), and_mask_reference(model, x, y, env, 0.5)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_and_mask_overwrites_stale_grads() -> None:
    model = mlp(13)
    x, y, env = batch(14)
    objective = create_objective("ilc", torch.ones(4), {"threshold": 0.5})
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    objective.backward(model, x, y, env, identity)
    for got, want in zip(grads_of(model), and_mask_reference(model, x, y, env, 0.5)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_and_mask_normalises_every_env_with_the_whole_batch_statistics() -> None:
    torch.manual_seed(15)
    # No bias before BatchNorm: its true gradient is 0 and its float noise has arbitrary signs.
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y, _ = batch(16, n=13)
    env = torch.tensor([0] * 6 + [1] * 6 + [2])  # a one-example env needs no special case any more
    reference, twin = copy.deepcopy(model), copy.deepcopy(model)
    run(create_objective("ilc", torch.ones(3), {"threshold": 0.5}), model, x, y, env)
    for got, want in zip(grads_of(model), and_mask_reference(reference, x, y, env, 0.5)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # A per-environment forward would differ: BatchNorm statistics of env 0 alone.
    solo = copy.deepcopy(twin)
    alone = torch.autograd.grad(F.cross_entropy(solo(x[env == 0]), y[env == 0]), list(solo.parameters()))
    shared = torch.autograd.grad(F.cross_entropy(twin(x)[env == 0], y[env == 0]), list(twin.parameters()))
    assert not torch.allclose(alone[0], shared[0])
    # Running statistics: updated once per step, by the whole batch, as an ERM step updates them.
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)
    assert model.training and model[1].training


# --- Options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ilc", {"threshold": 1.5}, "threshold"),
        ("ilc", {"threshold": -0.1}, "threshold"),
        ("groupdro", {"eta": 0.0}, "eta"),
        ("groupdro", {"adjustment": -1.0}, "adjustment"),
        ("irm", {"penalty_weight": -1.0}, "penalty_weight"),
        ("irm", {"anneal_steps": -1}, "anneal_steps"),
        ("irm", {"anneal_steps": 2.5}, "anneal_steps"),
        ("ilc", {"threshold": "high"}, "threshold"),
    ],
)
def test_out_of_range_options_are_rejected_with_their_name(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        create_objective(name, torch.ones(4), options)


def test_integral_float_anneal_steps_is_accepted_as_int() -> None:
    objective = create_objective("irm", torch.ones(4), {"anneal_steps": 3.0})
    assert objective.anneal_steps == 3 and isinstance(objective.anneal_steps, int)


def test_unknown_objective_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="groupdro"):
        create_objective("groupdr", torch.ones(4))


# --- Conformance: every registered objective ----------------------------------------------------


def tiny_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2),
    )


def image_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 8, 8, generator=gen)
    y = torch.randint(0, 2, (16,), generator=gen)
    return x, y, torch.arange(16) % 4


ENV_COUNTS = torch.tensor([40, 10, 5, 45])


def assert_same_state(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_leaves_finite_grads_and_loss(name: str) -> None:
    model = tiny_convnet()
    stats = run(create_objective(name, ENV_COUNTS), model, *image_batch())
    assert math.isfinite(stats["loss"])
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_copes_with_a_one_example_env_and_an_absent_env(name: str) -> None:
    model = tiny_convnet()
    x, y, _ = image_batch()
    env = torch.tensor([0] * 8 + [1] * 7 + [3])  # env 2 absent, env 3 a single example
    stats = run(create_objective(name, ENV_COUNTS), model, x, y, env)
    assert math.isfinite(stats["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_backpropagates_the_scaled_loss(name: str) -> None:
    model = tiny_convnet()
    twin = copy.deepcopy(model)
    plain = run(create_objective(name, ENV_COUNTS), model, *image_batch())
    scaled = run(create_objective(name, ENV_COUNTS), twin, *image_batch(), scale=lambda t: t * 64.0)
    assert scaled == pytest.approx(plain)  # statistics are of the unscaled loss
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, 64.0 * a.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_rejects_unknown_option_by_name(name: str) -> None:
    with pytest.raises(OptionError, match="no_such_option"):
        create_objective(name, ENV_COUNTS, {"no_such_option": 1.0})


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_defaults_are_valid_and_registered_under_their_name(name: str) -> None:
    cls = OBJECTIVES.get(name)
    assert cls.name == name
    assert isinstance(create_objective(name, ENV_COUNTS, dict(cls.defaults)), cls)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_state_round_trip_continues_identically(name: str) -> None:
    model = tiny_convnet()
    first = create_objective(name, ENV_COUNTS)
    run(first, model, *image_batch(1))
    resumed = create_objective(name, ENV_COUNTS)
    resumed.load_state_dict(first.state_dict())
    assert_same_state(resumed.state_dict(), first.state_dict())
    twin = copy.deepcopy(model)
    assert run(resumed, twin, *image_batch(2)) == pytest.approx(run(first, model, *image_batch(2)))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert_same_state(resumed.state_dict(), first.state_dict())
