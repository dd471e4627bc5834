"""The step meter: statistics read back in bulk, and the first non-finite loss caught in time."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.meter import StepMeter


class Diverged(Exception):
    pass


def meter(check_every: int) -> StepMeter:
    return StepMeter(lambda step, loss: Diverged(step, loss), check_every=check_every)


def test_means_of_tensor_and_number_statistics_equal_the_per_step_values():
    m = meter(check_every=3)
    losses = [0.5, 1.5, 2.0, 4.0, 3.0]
    for k, loss in enumerate(losses):
        m.add({"loss": torch.tensor(loss), "weight": float(k), "q": torch.tensor([k * 2.0]).sum()})

    means = m.finish()

    assert means == pytest.approx({"loss": sum(losses) / 5, "weight": 2.0, "q": 4.0})
    assert m.steps == 5


def test_a_non_finite_loss_raises_at_the_next_read_back_naming_its_own_step():
    m = meter(check_every=4)
    for loss in (1.0, 1.0):
        m.add({"loss": torch.tensor(loss)})
    m.add({"loss": torch.tensor(float("nan"))})  # step 3: not read back yet
    with pytest.raises(Diverged) as caught:
        m.add({"loss": torch.tensor(float("inf"))})  # step 4: the read-back
    step, loss = caught.value.args
    assert step == 3 and math.isnan(loss)  # the first bad step, not the one that triggered the check


def test_a_non_finite_loss_in_the_last_steps_is_caught_by_finish():
    m = meter(check_every=50)
    m.add({"loss": 1.0})
    m.add({"loss": torch.tensor(float("-inf"))})
    with pytest.raises(Diverged) as caught:
        m.finish()
    assert caught.value.args == (2, float("-inf"))


def test_waiting_for_batches_is_timed_and_every_batch_passes_through():
    m = meter(check_every=2)
    assert list(m.timed(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert m.wait_s >= 0.0
