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
