"""How a cell's config is chosen among its search trials: the selection rules, defined once.

The report reads a cell's choice under any rule (`wgtune report --select`), and a launch's final
phase re-trains the choice of the study's rule (`DEFAULT_RULE`) or, when asked, of another rule
(`wgtune launch --select`). Both choose with `best_index`, so "highest value, earliest on ties" has
one definition; it lives in `tracking` because `search` and `report` do not import each other.
DomainBed keeps model selection as a strategy too (facebookresearch/DomainBed,
domainbed/model_selection.py: `SelectionMethod`); its "training-domain validation" is our
`val_avg` (no group labels needed) and its "test-domain validation" our `oracle_test_worst`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

from trainables.metrics import BEST_TEST_WORST, BEST_VAL_AVG, SELECTION_METRIC
from wgtune.tracking.records import PHASE_FINAL

if TYPE_CHECKING:
    from wgtune.tracking.records import TrialRecord

__all__ = ["DEFAULT_RULE", "SELECTION_RULE", "SELECTION_RULES", "SelectionRule", "best_index", "rule_of",
           "select_trial"]

SELECTION_RULE = "best validation worst-group accuracy over the search trials (the best epoch of each)"


class SelectionRule(NamedTuple):
    """How a cell's config is chosen among its search trials: the one with the highest `metric`."""

    metric: str
    description: str


SELECTION_RULES = {
    "val_worst": SelectionRule(SELECTION_METRIC, SELECTION_RULE),
    "val_avg": SelectionRule(BEST_VAL_AVG, "best validation average accuracy over the search trials (no group "
                                           "labels needed at selection; each trial still at the epoch its validation "
                                           "worst-group accuracy picked, the only epoch it logged)"),
    "oracle_test_worst": SelectionRule(BEST_TEST_WORST, "best TEST worst-group accuracy over the search trials: an "
                                                        "oracle, the ceiling of what selection could reach, not a "
                                                        "result"),
}
"""The rules `wgtune report --select` and `wgtune launch --select` offer; `val_worst` is the study's."""
DEFAULT_RULE = "val_worst"
"""The study's own rule: what a plain launch's final seeds re-train (its metric is the one TPE maximises)."""


def rule_of(name: str) -> SelectionRule:
    """The rule called `name`, or a ValueError naming the valid ones."""
    if name not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {name!r}; valid: {', '.join(SELECTION_RULES)}")
    return SELECTION_RULES[name]


def best_index(values: Sequence[float | None]) -> int | None:
    """The index of the highest finite value, the first among ties (callers list candidates in start
    order, so the earliest trial wins); None when no value is finite."""
    scored = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    return min(scored, key=lambda s: (-s[0], s[1]))[1] if scored else None


def select_trial(trials: Sequence[TrialRecord], metric: str = SELECTION_METRIC) -> TrialRecord | None:
    """The FINISHED search trial with the highest `metric` (default `SELECTION_METRIC`), the earliest among ties."""
    candidates = sorted((t for t in trials if t.status == "FINISHED" and t.phase != PHASE_FINAL),
                        key=lambda t: t.start_time_ms or 0)  # stable: equal start times keep their order
    index = best_index([t.metrics.get(metric) for t in candidates])
    return None if index is None else candidates[index]
