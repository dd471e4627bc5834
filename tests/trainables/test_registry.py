"""The registry and option merging every plug-in kind (data set, model family, objective) uses."""

import pytest

from trainables.options import OptionError, merge_options
from trainables.registry import Registry, UnknownNameError


def test_unknown_name_lists_the_valid_ones_and_the_closest():
    registry: Registry[int] = Registry("objective")
    registry.add("groupdro", 1)
    registry.add("erm", 2)

    with pytest.raises(UnknownNameError) as err:
        registry.get("groupdr0")

    assert "unknown objective 'groupdr0'" in str(err.value)
    assert "Did you mean 'groupdro'?" in str(err.value)
    assert "Valid: groupdro, erm" in str(err.value)


def test_a_name_cannot_be_registered_twice():
    registry: Registry[int] = Registry("dataset")
    registry.add("digits", 1)

    with pytest.raises(ValueError, match="registered twice"):
        registry.add("digits", 2)


def test_options_merge_over_defaults_and_reject_unknown_keys_and_types():
    defaults = {"eta": 0.01, "steps": 10, "name": "x"}

    assert merge_options("objective 'dro'", defaults, {"eta": 1}) == {"eta": 1.0, "steps": 10, "name": "x"}
    merged = merge_options("objective 'dro'", defaults, {"steps": 3.0})
    assert merged["steps"] == 3 and isinstance(merged["steps"], int)
    with pytest.raises(OptionError, match="objective 'dro': unknown option 'etta'. Did you mean 'eta'"):
        merge_options("objective 'dro'", defaults, {"etta": 0.1})
    with pytest.raises(OptionError, match="option 'steps' must be int"):
        merge_options("objective 'dro'", defaults, {"steps": 2.5})
    with pytest.raises(OptionError, match="option 'name' must be str"):
        merge_options("objective 'dro'", defaults, {"name": 3})
