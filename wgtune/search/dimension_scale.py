"""A search dimension's own scale: where the soft prior fits, widens and moves values.

The natural log for log-scale dimensions, the value itself otherwise; `from_own` maps back to a
plain value of the dimension (quantized as hyperopt rounds, inside its bounds).
"""

from __future__ import annotations

import math
from typing import Any

from wgtune.spec.spaces import LOG_KINDS, QUANTIZED_KINDS, Dimension


def own(d: Dimension, value: Any) -> float:
    """A value in the dimension's own scale: the natural log for log-scale dims."""
    x = float(value)
    return math.log(x) if d.kind in LOG_KINDS else x


def real(d: Dimension, own: float) -> float:
    return math.exp(own) if d.kind in LOG_KINDS else own


def own_bounds(d: Dimension) -> tuple[float, float]:
    """What the original distribution spans in own scale; a normal's mu ± 2 sigma (as `SearchSpace.narrow`)."""
    if d.kind == "normal":
        return d.args[0] - 2 * d.args[1], d.args[0] + 2 * d.args[1]
    return own(d, d.args[0]), own(d, d.args[1])


def span(d: Dimension) -> float:
    lo, hi = own_bounds(d)
    return hi - lo


def from_own(d: Dimension, own: float) -> Any:
    """A plain value of the dimension nearest `own`: quantized as hyperopt rounds, inside the bounds."""
    x = real(d, own)
    if d.kind == "normal":
        return float(x)
    low, high = d.args[0], d.args[1]
    if d.kind in QUANTIZED_KINDS:
        q = d.args[2]
        lo_q, hi_q = round(low / q) * q, round(high / q) * q
        x = min(max(round(x / q) * q, lo_q), hi_q)
        return int(round(x)) if d.integer else float(x)
    return float(min(max(x, low), high))
