"""Samplers: what an epoch draws, with statistical bounds, and that the order depends on (seed, epoch) only."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

from trainables.datasets import load_dataset
from trainables.datasets.base import Preprocessing
from trainables.registry import UnknownNameError
from trainables.sampling import SAMPLERS, epoch_order

# A chi-square statistic beyond its (1 - ALPHA) quantile rejects uniformity: a correct sampler
# fails one such check in a million seeds, a sampler off by a few percent fails it for sure.
ALPHA = 1e-6


@pytest.fixture(scope="module")
def train_groups() -> torch.Tensor:
    """spurious_digits' training groups: 95% of each class on its colour, so two groups of ~27 of 1079."""
    return load_dataset("spurious_digits", None, Preprocessing(8)).train.g


def chi_square_uniform(counts: torch.Tensor) -> tuple[float, float]:
    """(statistic, critical value) of Pearson's test that `counts` are multinomial with equal cells."""
    counts = counts.double()
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum()), float(chi2.ppf(1 - ALPHA, len(counts) - 1))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_an_epoch_has_as_many_draws_as_the_split_has_examples(name: str, train_groups: torch.Tensor) -> None:
    order = epoch_order(name, train_groups, 4, seed=0, epoch=1)

    assert order.shape == train_groups.shape and order.dtype == torch.long
    assert 0 <= int(order.min()) and int(order.max()) < len(train_groups)


def test_shuffle_visits_every_example_once(train_groups: torch.Tensor) -> None:
    order = epoch_order("shuffle", train_groups, 4, seed=3, epoch=2)

    assert torch.equal(order.sort().values, torch.arange(len(train_groups)))


def test_balanced_epochs_draw_groups_uniformly_within_sampling_error(train_groups: torch.Tensor) -> None:
    # Each draw's group is uniform over the 4 groups, so an epoch's group counts are
    # Multinomial(N, 1/4): Pearson's statistic is chi-square with 3 degrees of freedom.
    for epoch in range(1, 6):
        drawn = train_groups[epoch_order("group_balanced", train_groups, 4, seed=0, epoch=epoch)]
        statistic, critical = chi_square_uniform(torch.bincount(drawn, minlength=4))
        assert statistic < critical, f"epoch {epoch}: group counts {torch.bincount(drawn).tolist()}"
    # The check has power: a shuffled epoch keeps the data's 95% imbalance and fails it by far.
    statistic, critical = chi_square_uniform(torch.bincount(train_groups[epoch_order("shuffle", train_groups, 4, 0, 1)]))
    assert statistic > 10 * critical


def test_balanced_draws_are_uniform_within_each_group(train_groups: torch.Tensor) -> None:
    # Within a group every example is equally likely: over 40 epochs, the draws of the smallest
    # group's examples (about 270 each in expectation) pass a chi-square test of uniformity.
    smallest = int(torch.bincount(train_groups).argmin())
    members = torch.nonzero(train_groups == smallest).squeeze(1)
    hits = torch.zeros(len(train_groups), dtype=torch.long)
    for epoch in range(1, 41):
        hits += torch.bincount(epoch_order("group_balanced", train_groups, 4, seed=1, epoch=epoch),
                               minlength=len(train_groups))
    statistic, critical = chi_square_uniform(hits[members])
    assert statistic < critical
    assert int(hits[members].min()) > 0  # with replacement, yet every minority example is used


def test_balanced_draws_are_with_replacement_as_the_references(train_groups: torch.Tensor) -> None:
    order = epoch_order("group_balanced", train_groups, 4, seed=0, epoch=1)
    smallest = int(torch.bincount(train_groups).min())

    # A quarter of 1079 draws land in a group of ~27 examples: each is drawn about 10 times.
    assert len(order.unique()) < len(order)
    drawn = train_groups[order]
    assert int((drawn == int(torch.bincount(train_groups).argmin())).sum()) > 5 * smallest


def test_absent_groups_are_never_drawn() -> None:
    groups = torch.tensor([0, 0, 0, 2, 2, 3])  # group 1 absent

    drawn = groups[epoch_order("group_balanced", groups, 4, seed=0, epoch=1)]

    assert set(drawn.tolist()) <= {0, 2, 3}


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_the_order_is_a_function_of_seed_and_epoch_only(name: str, train_groups: torch.Tensor) -> None:
    torch.manual_seed(123)  # the global generator plays no part
    first = epoch_order(name, train_groups, 4, seed=7, epoch=3)
    torch.manual_seed(456)
    torch.rand(10)
    again = epoch_order(name, train_groups, 4, seed=7, epoch=3)

    assert torch.equal(first, again)
    assert not torch.equal(first, epoch_order(name, train_groups, 4, seed=7, epoch=4))
    assert not torch.equal(first, epoch_order(name, train_groups, 4, seed=8, epoch=3))


def test_an_unknown_sampler_lists_the_valid_ones(train_groups: torch.Tensor) -> None:
    with pytest.raises(UnknownNameError, match="group_balanced"):
        epoch_order("group_balance", train_groups, 4, seed=0, epoch=1)
