"""A trial's objective setting: its environments and sampler, resolved and checked in one place.

`environments` and `sampler` left unset (None) in a trial config mean "the objective's
default", which each objective declares after its reference (`Objective.default_environments`,
`Objective.default_sampler`). `resolve_config` fills them in, so what is logged and
checkpointed is what ran; `check_setting` refuses combinations that cannot train as intended
(e.g. an AND-mask that freezes the classifier) before any data is loaded.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainables.environments import ENVIRONMENTS
from trainables.objectives import OBJECTIVES, Setting
from trainables.options import merge_options
from trainables.sampling import SAMPLERS

SETTING_KEYS = ("environments", "sampler")
"""The trial-config keys `resolve_config` fills in (log them as run parameters)."""


def resolve_setting(objective: str, environments: str | None = None, sampler: str | None = None) -> tuple[str, str]:
    """(environments, sampler): the given ones, or the objective's defaults; names are checked."""
    cls = OBJECTIVES.get(objective)
    environments = environments if environments is not None else cls.default_environments
    sampler = sampler if sampler is not None else cls.default_sampler
    ENVIRONMENTS.get(environments)  # raise UnknownNameError listing the valid names
    SAMPLERS.get(sampler)
    return environments, sampler


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a plain trial config with `environments` and `sampler` set (objective defaults
    where absent or None). The objective defaults to "erm", as `TrialConfig` does."""
    resolved = dict(config)
    objective = resolved.get("objective", "erm")
    resolved["environments"], resolved["sampler"] = resolve_setting(
        objective, resolved.get("environments"), resolved.get("sampler")
    )
    return resolved


def check_setting(
    objective: str,
    *,
    environments: str | None = None,
    sampler: str | None = None,
    options: Mapping[str, Any] | None = None,
    n_classes: int,
    n_groups: int,
    batch_size: int,
) -> tuple[str, str]:
    """Raise `SettingError` (a `ConfigError`) if the objective cannot train as intended under this
    setting; return the resolved (environments, sampler).

    Pure: reads no data. `options` are the objective's options as given (merged over its
    defaults here; unknown ones raise `OptionError`). `n_groups` is the data set's number of
    (attribute, label) groups, `batch_size` the training batch size. For a searched value, call
    it with each choice, or the worst case of a range (ILC: the highest threshold, the largest
    batch size under `group_balanced`, the smallest otherwise).
    """
    environments, sampler = resolve_setting(objective, environments, sampler)
    cls = OBJECTIVES.get(objective)
    merged = merge_options(f"objective {objective!r}", cls.defaults, options)
    cls.check_setting(Setting(objective, environments, sampler, merged, n_classes, n_groups, batch_size))
    return environments, sampler
