"""Group accuracies are computed with bincount; these check them against hand counts."""

import math

import torch

from trainables.metrics import group_accuracy


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
