"""What a trial run's logged config means when history is compared with a cell's settings."""

from __future__ import annotations

from trainables.config import TrialConfig
from wgtune.tracking.records import config_params, logged_config, settings_mismatch


def _logged(**config: object) -> dict[str, str]:
    return logged_config(config_params(config)) or {}


def test_a_run_trained_under_another_fixed_setting_is_named_with_both_values() -> None:
    here = _logged(optimizer="adamw", momentum=0.9, lr=0.1)
    there = _logged(optimizer="sgd", momentum=0.9, lr=0.01)
    assert settings_mismatch(here, there, free={"lr"}) == "optimizer: sgd there, adamw here"


def test_a_setting_a_run_predates_counts_as_its_default() -> None:
    default = TrialConfig().augment
    assert settings_mismatch(_logged(augment=default, lr=0.1), _logged(lr=0.1), free=set()) is None
    assert settings_mismatch(_logged(augment="standard"), _logged(), free=set()) == (
        f"augment: {default} there, standard here")


def test_how_a_trial_ran_does_not_make_it_incomparable() -> None:
    here = _logged(cache=True, eval_test="best", compile=False, device="cuda", num_workers=4, seed=1)
    there = _logged(cache=False, eval_test="every", compile=True, device="cpu", num_workers=0, seed=2)
    assert settings_mismatch(here, there, free=set()) is None


def test_a_trial_counts_its_gpus_when_it_holds_any_else_its_cpu_cores() -> None:
    from wgtune.spec.grid import ResourceSpec
    from wgtune.tracking.records import DEVICE_CPU, DEVICE_GPU, device_use

    assert device_use(ResourceSpec(cpu=8, gpu=2)) == (DEVICE_GPU, 2.0)  # its CPUs are not added to GPU-seconds
    assert device_use(ResourceSpec(cpu=4, gpu=0.25)) == (DEVICE_GPU, 0.25)  # a quarter of a shared GPU's time
    assert device_use(ResourceSpec(cpu=3)) == (DEVICE_CPU, 3.0)
