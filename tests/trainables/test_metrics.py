"""Group accuracies are computed with bincount; these check them against hand counts."""

import math

import pytest
import torch

from trainables.metrics import GroupLossSum, best_key, group_accuracy, group_key, group_loss, metric_key


def test_group_accuracies_match_a_hand_count():
    # group:   0  0  0  1  1  2  2  2  2  3
    # correct: 1  1  0  0  1  1  1  1  1  0
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    correct = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    proportions = torch.tensor([0.4, 0.1, 0.4, 0.1])

    acc = group_accuracy(correct, groups, 4, proportions)

    assert acc.counts == (3, 2, 4, 1)
    assert acc.per_group == (2 / 3, 0.5, 1.0, 0.0)
    assert acc.worst_group == 0.0
    assert acc.average == 0.7
    assert math.isclose(acc.weighted, 0.4 * 2 / 3 + 0.1 * 0.5 + 0.4 * 1.0 + 0.1 * 0.0)


def test_absent_groups_are_nan_and_ignored_by_worst_and_weighted():
    groups = torch.tensor([0, 0, 2])
    correct = torch.tensor([True, False, True])

    acc = group_accuracy(correct, groups, 3, torch.tensor([0.5, 0.25, 0.25]))

    assert math.isnan(acc.per_group[1])
    assert acc.worst_group == 0.5
    # weights renormalised over present groups: (0.5 * 0.5 + 0.25 * 1.0) / 0.75
    assert math.isclose(acc.weighted, (0.25 + 0.25) / 0.75)


def test_metric_names_carry_split_and_group_index():
    acc = group_accuracy(torch.tensor([True, False]), torch.tensor([0, 1]), 2, torch.tensor([0.5, 0.5]))

    metrics = acc.as_metrics("val")

    assert metrics == {
        "val/avg_acc": 0.5,
        "val/worst_acc": 0.0,
        "val/weighted_acc": 0.5,
        "val/acc_g0": 1.0,
        "val/acc_g1": 0.0,
    }


def test_group_losses_are_per_group_means_and_the_average_is_over_examples():
    groups = torch.tensor([0, 0, 1, 3, 3, 3])
    losses = torch.tensor([1.0, 3.0, 0.5, 1.0, 2.0, 6.0])

    result = group_loss(losses, groups, 4)

    assert result.per_group[0] == 2.0 and result.per_group[1] == 0.5 and result.per_group[3] == 3.0
    assert math.isnan(result.per_group[2])
    assert result.average == pytest.approx(13.5 / 6)
    assert result.as_metrics("val") == {"val/loss": result.average, "val/loss_g0": 2.0, "val/loss_g1": 0.5,
                                        "val/loss_g2": result.per_group[2], "val/loss_g3": 3.0}
    assert "train/loss" not in result.as_metrics("train", with_average=False)


def test_running_group_loss_over_batches_equals_the_loss_of_their_concatenation():
    gen = torch.Generator().manual_seed(0)
    losses, groups = torch.rand(50, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    running = GroupLossSum(4)
    for start in range(0, 50, 7):
        running.add(losses[start:start + 7], groups[start:start + 7])

    assert running.result() == group_loss(losses, groups, 4)


def test_metric_names_are_built_in_one_place():
    assert metric_key("val", "worst_acc") == "val/worst_acc"
    assert group_key("train", "loss", 3) == "train/loss_g3"
    assert best_key("test", "worst_acc") == "best/test_worst_acc"
