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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

from trainables.metrics import BEST_TEST_WORST, BEST_VAL_AVG, SELECTION_METRIC
from wgtune.tracking.records import PHASE_FINAL, SEED_PARAM, final_seed_done

if TYPE_CHECKING:
    from wgtune.tracking.records import TrialRecord

__all__ = ["DEFAULT_RULE", "SELECTION_RULE", "SELECTION_RULES", "RuleChoice", "SelectionRule", "best_index",
           "differing_keys", "rule_choices", "rule_of", "select_trial"]

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


def differing_keys(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """The params two runs both logged with other values, their seeds aside: empty when they trained one config."""
    return sorted(k for k in a.keys() & b.keys() if k != SEED_PARAM and a[k] != b[k])


@dataclass(frozen=True)
class RuleChoice:
    """A cell's chosen search trial under one rule, and the final seeds that re-trained it.

    `final_done`: final seeds done (`records.final_seed_done`) that ran this config under this rule (the study's
    own seeds carry no rule tag; another rule's carry `records.SELECT_TAG`). `study_ran`: whether the study's own
    final seeds ran this config (then another rule's report reads them and nothing needs re-training);
    `study_choice`: whether it is the trial the study's rule chose too (the study's own launch re-trains that one).
    """

    rule: str
    run_id: str
    params: Mapping[str, str]
    final_done: int = 0
    study_ran: bool = False
    study_choice: bool = False

    @property
    def needs_retraining(self) -> bool:
        """Whether `wgtune launch --select <rule>` re-trains this choice: another rule's, which differs from the
        study's choice, and whose config no final seed of the study ran."""
        return self.rule != DEFAULT_RULE and not self.study_choice and not self.study_ran


def rule_choices(trials: Sequence[TrialRecord]) -> dict[str, RuleChoice]:
    """One cell's choice under every rule that can choose (a rule whose metric no finished trial logged cannot)."""
    done = [t for t in trials if t.phase == PHASE_FINAL and final_seed_done(t.status, t.diverged)]
    study = [t for t in done if (t.select or DEFAULT_RULE) == DEFAULT_RULE]
    study_choice = select_trial(trials, SELECTION_RULES[DEFAULT_RULE].metric)
    choices = {}
    for name, rule in SELECTION_RULES.items():
        chosen = select_trial(trials, rule.metric)
        if chosen is None:
            continue
        ran = [t for t in done if (t.select or DEFAULT_RULE) == name and not differing_keys(chosen.params, t.params)]
        choices[name] = RuleChoice(name, chosen.run_id, chosen.params, final_done=len(ran),
                                   study_ran=any(not differing_keys(chosen.params, t.params) for t in study),
                                   study_choice=study_choice is not None and chosen.run_id == study_choice.run_id)
    return choices
