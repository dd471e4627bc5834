"""The registry and option merging every plug-in kind (data set, model family, objective) uses."""

import subprocess
import sys
import textwrap

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


def test_every_registry_and_its_declared_settings_are_read_without_torch():
    # `wgtune status`, dry runs and grid validation read names, defaults and settings checks only;
    # importing torch for them cost ~4 s a command (issue 16). Training still imports it, where it trains.
    code = textwrap.dedent("""
        import sys
        from trainables.datasets import DATASETS
        from trainables.environments import ENVIRONMENTS
        from trainables.objectives import OBJECTIVES
        from trainables.sampling import SAMPLERS
        from trainables.setting import check_setting, resolve_setting
        for name in OBJECTIVES:
            resolve_setting(name)
            data = DATASETS.get("waterbirds")
            check_setting(name, options={}, n_classes=data.n_classes, n_groups=data.n_groups, batch_size=64)
        assert len(DATASETS) and len(ENVIRONMENTS) and len(SAMPLERS)
        print(sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
