"""Mixed precision: float32 on the CPU or without amp; bf16 needs no loss scaling."""

from __future__ import annotations

import torch

from trainables.precision import Precision, choose_precision


def test_the_cpu_and_amp_off_train_in_float32_without_a_scaler():
    for amp in (True, False):
        chosen = choose_precision(amp, torch.device("cpu"))
        assert chosen == Precision() and chosen.name == "float32" and not chosen.scaled
    with choose_precision(True, torch.device("cpu")).autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_an_autocast_precision_computes_in_its_dtype():
    bf16 = Precision(torch.bfloat16)
    with bf16.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert bf16.name == "bf16" and not bf16.scaled
