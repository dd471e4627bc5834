"""Strict merging of user options over declared defaults (datasets, objectives)."""

from __future__ import annotations

from typing import Any, Mapping

from trainables.registry import did_you_mean


class OptionError(ValueError):
    """An option that the receiving component does not declare, or of the wrong type."""


def merge_options(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return `defaults` updated with `given`; unknown keys and type mismatches are errors naming `owner`."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise OptionError(f"{owner}: unknown option {key!r}.{did_you_mean(key, defaults)} Valid: {valid}")
        default = defaults[key]
        if default is not None and not _compatible(default, value):
            raise OptionError(
                f"{owner}: option {key!r} must be {type(default).__name__}, got {value!r}"
            )
        # Numbers take the default's type: YAML and search spaces give 3 for 3.0 and 3.0 for 3.
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        merged[key] = type(default)(value) if numeric and value is not None else value
    return merged


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or float(value).is_integer())
    return isinstance(value, type(default))
