"""Strict merging of user options over declared defaults (datasets, objectives)."""

from __future__ import annotations

import difflib
from typing import Any, Mapping


class OptionError(ValueError):
    """An option that the receiving component does not declare, or of the wrong type."""


def merge_options(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return `defaults` updated with `given`; unknown keys and type mismatches are errors naming `owner`."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(defaults) or "none"
            raise OptionError(f"{owner}: unknown option {key!r}.{hint} Valid: {valid}")
        default = defaults[key]
        if default is not None and not _compatible(default, value):
            raise OptionError(
                f"{owner}: option {key!r} must be {type(default).__name__}, got {value!r}"
            )
        merged[key] = type(default)(value) if isinstance(default, float) and value is not None else value
    return merged


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or float(value).is_integer())
    return isinstance(value, type(default))
