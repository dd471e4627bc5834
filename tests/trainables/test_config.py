"""A trial configuration is strict: misspelled keys and bad values fail with a clear message."""

import pytest

from trainables.config import ConfigError, TrialConfig


def test_misspelled_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown trial setting 'weight_decy'. Did you mean 'weight_decay'"):
        TrialConfig.from_mapping({"weight_decy": 0.1})


def test_values_from_search_spaces_are_coerced_without_losing_meaning():
    config = TrialConfig.from_mapping({"lr": 1, "batch_size": 64.0, "epochs": 3})

    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.batch_size == 64 and isinstance(config.batch_size, int)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"batch_size": 32.5}, "batch_size must be int"),
        ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"epochs": True}, "epochs must be int"),
        ({"dataset_options": [1, 2]}, "dataset_options must be a mapping"),
        ({"momentum": 1.0}, "momentum in"),
        ({"eval_test": "last"}, "eval_test must be one of best, every"),
        ({"cache": "yes"}, "cache must be bool"),
        ({"compile": 1}, "compile must be bool"),
    ],
)
def test_invalid_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_mapping(raw)


def test_as_dict_round_trips():
    config = TrialConfig.from_mapping({"objective": "groupdro", "objective_options": {"eta": 0.1}})

    assert TrialConfig.from_mapping(config.as_dict()) == config
