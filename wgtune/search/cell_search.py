"""One cell's search: what it may do in an experiment (`SearchPlan`) and its hyperopt state
(`CellSearch`): its Trials (history injected as completed trials, docs/design.md decision 2),
its transfer points, its draws and the seeds its trials train with.

Free of Ray: `router.CellRouter` routes Tune's calls to one `CellSearch` per cell.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Domain, pyll, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, Trials, spec_from_misc, trials_from_docs
from hyperopt.utils import coarse_utcnow

from wgtune.search import prior_tpe
from wgtune.search.budget import CellBudget
from wgtune.spec.grid import derive_seed
from wgtune.tracking.records import PROPOSAL_PRIOR, PROPOSAL_RANDOM, PROPOSAL_TPE, PROPOSAL_TRANSFER
from wgtune.tracking.selection import best_index

if TYPE_CHECKING:
    from collections.abc import Callable

    from wgtune.search.soft_prior import SoftPrior

__all__ = ["CellSearch", "SearchPlan", "TRIAL_ERROR", "result_doc"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchPlan:
    """What one cell's search may do in this experiment, and what it starts from.

    `budget.search_left` search trials and `budget.final_left` final seeds run in this experiment;
    final seeds are numbered after the `budget.final_done` of earlier launches.
    """

    cell: str
    space: dict[str, Any]
    budget: CellBudget
    seed: int
    n_startup: int = 5
    observations: tuple[tuple[dict[str, Any], float | None], ...] = ()  # loss None: a failed configuration
    first_points: tuple[dict[str, Any], ...] = ()
    max_failed: int | None = None
    """Failed trials (search and final) after which the cell gives up; None: as many as it has to run."""
    draw_seed: int | None = None
    """The seed of this experiment's random draws and search-trial training seeds; None: `seed`.
    A new experiment derives it from the cell and the history it starts from (`driver.search_plan`),
    so it never replays an earlier launch's draws (issue 13, defect 3). Final seeds stay derived
    from `seed`: they are numbered across launches."""
    allow_repeats: bool = False
    """Whether a search trial may re-run a configuration the cell has already tried."""
    prior: SoftPrior | None = None
    """What the random start-up draws from instead of `space`'s own prior (`search.prior_tpe.suggest`):
    a new cell's size-aware prior under `priors: {narrow: soft}`; TPE then searches `space` itself."""
    final_params: dict[str, Any] | None = None
    """The searched values the final seeds re-train when another selection rule than the study's chose them
    (`run.plan.rule_plan`, from MLflow); None: the study's rule, over the cell's Trials as its search ends."""
    rule: str = ""
    """The selection rule `final_params` are the choice of (its final trials carry it); empty: the study's."""
    history_values: tuple[float, ...] = ()
    """The values (higher is better: the negated loss) of the cell's finished search trials in MLflow: what adaptive
    allocation (`search.allocation`) judges the cell by, with this experiment's own, as the plan did."""

    def __post_init__(self) -> None:
        if not self.cell:
            raise ValueError("SearchPlan.cell must be a non-empty id")
        if self.n_startup < 0:
            raise ValueError(f"cell {self.cell!r}: n_startup must be >= 0")
        if self.max_failed is not None and self.max_failed < 1:
            raise ValueError(f"cell {self.cell!r}: max_failed must be >= 1 or None")
        if not self.space:
            raise ValueError(f"cell {self.cell!r}: empty search space")

    @property
    def failure_cap(self) -> int:
        """How many trials may fail before the cell gives up: at most as many as it has to run,
        so a cell whose every trial fails (a bug, a bad space) costs at most twice its work."""
        return self.max_failed if self.max_failed is not None else max(self.search_trials + self.final_seeds, 1)

    @property
    def search_trials(self) -> int:
        """Search trials to complete in this experiment (failed ones are replaced)."""
        return self.budget.search_left

    @property
    def final_seeds(self) -> int:
        """Final seeds to complete in this experiment, once the search is spent."""
        return self.budget.final_left


def _identity(space: Any) -> Any:
    # Module-level, not a lambda: the Domain travels inside the pickled Tuner.
    return space


def _python_scalars(value: Any) -> Any:
    """Numpy scalars -> Python scalars, recursively (Tune configs and MLflow params want plain)."""
    if isinstance(value, dict):
        return {k: _python_scalars(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_python_scalars(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class CellSearch:
    """One cell's hyperopt state; its counters are rebuilt from the Trials docs on load."""

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self.domain = Domain(_identity, plan.space)
        self.algo: Callable[..., list[dict]] = functools.partial(
            tpe.suggest, n_startup_jobs=plan.n_startup, verbose=False
        ) if plan.prior is None else functools.partial(
            prior_tpe.suggest, prior=plan.prior, n_startup_jobs=plan.n_startup, verbose=False
        )
        self.draws = plan.seed if plan.draw_seed is None else plan.draw_seed
        self.rng = np.random.default_rng(self.draws)
        self.finals: dict[str, int] = {}  # ray trial id -> final seed, for the final phase
        self.finals_running: set[str] = set()
        self.finals_failed: set[str] = set()
        self.finals_diverged: set[str] = set()  # done: the chosen config diverges on that seed, and would again
        self.closed = ""  # adaptive allocation ended this cell's search (the decision's action)
        self.trials = Trials()
        self._check_points()
        docs = [self._doc(tid, vals) for tid, (vals, _) in enumerate(plan.observations)]
        for doc, (_, loss) in zip(docs, plan.observations):
            doc["state"] = JOB_STATE_DONE
            doc["misc"]["proposal"] = "observation"
            doc["result"] = result_doc(None if loss is None else float(loss), "non-finite loss")
        self.load(docs)

    def _check_points(self) -> None:
        labels = set(self.domain.params)
        points = [v for v, _ in self.plan.observations] + list(self.plan.first_points)
        for vals in points:
            unknown = set(vals) - labels
            if unknown:
                raise ValueError(
                    f"cell {self.plan.cell!r}: unknown labels {sorted(unknown)} in a "
                    f"prior point; the space has {sorted(labels)}"
                )
            # Fails now, not mid-experiment, when a point misses a label the space needs.
            self.params({"vals": {k: [v] for k, v in vals.items() if v is not None}})

    def _doc(self, tid: int, vals: dict[str, Any]) -> dict[str, Any]:
        """A trial doc shaped exactly like the ones tpe/rand.suggest return."""
        misc: dict[str, Any] = {"tid": tid, "cmd": self.domain.cmd, "workdir": self.domain.workdir}
        misc["idxs"] = {k: [tid] if vals.get(k) is not None else [] for k in self.domain.params}
        misc["vals"] = {k: [_python_scalars(vals[k])] if vals.get(k) is not None else [] for k in self.domain.params}
        [doc] = self.trials.new_trial_docs([tid], [None], [self.domain.new_result()], [misc])
        return doc

    def load(self, docs: list[dict[str, Any]]) -> None:
        """Replace the Trials with ``docs`` and rebuild the indexes over them."""
        self.trials = trials_from_docs(docs)
        self.by_tid = {doc["tid"]: doc for doc in self.trials.trials}
        self.seen = {_vals_key(doc["misc"]["vals"]) for doc in docs}
        self.started = sum("ray_trial_id" in d["misc"] for d in docs)
        self.count_errors()
        self.running = {
            d["misc"]["ray_trial_id"] for d in docs if d["state"] == JOB_STATE_RUNNING
        }

    def count_errors(self) -> None:
        """Search trials of this experiment that errored (after Tune's retries)."""
        self.errors = sum(
            "ray_trial_id" in d["misc"] and d["result"].get("failure") == TRIAL_ERROR for d in self.trials.trials
        )

    def propose(self, trial_id: str) -> tuple[dict[str, Any], str]:
        """Insert the next trial doc of this cell; return it and how it was proposed.

        Transfer points go first, those the cell has not tried yet; then random or TPE draws. A
        draw that repeats a configuration the cell has tried (its history included) is drawn
        again, with the next seed, unless `allow_repeats`: a repeat is a wasted trial and a
        duplicate observation. After `_REDRAWS` repeats in a row the space is taken as exhausted
        and the repeat is run.
        """
        [tid] = self.trials.new_trial_ids(1)
        transfer = [p for p in self.plan.first_points if _vals_key(_as_vals(p)) not in self.seen]
        if transfer:
            doc, proposal = self._doc(tid, transfer[0]), PROPOSAL_TRANSFER
        else:
            # Same rule tpe.suggest applies: it falls back to rand.suggest below n_startup docs.
            startup_draw = len(self.trials.trials) < self.plan.n_startup
            startup_kind = PROPOSAL_RANDOM if self.plan.prior is None else PROPOSAL_PRIOR
            proposal = startup_kind if startup_draw else PROPOSAL_TPE
            for _ in range(_REDRAWS):
                seed = int(self.rng.integers(2**31 - 1))
                [doc] = self.algo([tid], self.domain, self.trials, seed)
                if self.plan.allow_repeats or _vals_key(doc["misc"]["vals"]) not in self.seen:
                    break
            else:
                logger.warning("cell %s: %d draws in a row repeated tried configurations; running a repeat",
                               self.plan.cell, _REDRAWS)
        doc["state"] = JOB_STATE_RUNNING
        doc["book_time"] = coarse_utcnow()
        doc["misc"]["ray_trial_id"] = trial_id
        doc["misc"]["proposal"] = proposal
        self.trials.insert_trial_docs([doc])
        self.trials.refresh()
        self.by_tid[tid] = self.trials.trials[-1]
        self.seen.add(_vals_key(doc["misc"]["vals"]))
        self.started += 1
        self.running.add(trial_id)
        return self.by_tid[tid], proposal

    def training_seed(self, tid: int) -> int:
        """The training seed of search trial `tid`: each its own, derived from this experiment's
        draw seed, so no two search trials of a cell (nor of two launches) train alike."""
        return derive_seed(self.draws, "search", tid) % 2**31

    def params(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Plain parameter values of a doc: hyperopt's own decoding (indices -> choices)."""
        memo = self.domain.memo_from_config(spec_from_misc(doc))
        return _python_scalars(pyll.rec_eval(self.domain.expr, memo=memo))

    def best_loss(self) -> float | None:
        losses = [r["loss"] for r in self.trials.results if r.get("status") == STATUS_OK]
        return min(losses) if losses else None

    @property
    def search_left(self) -> int:
        """Search trials still to start: the budget less the started ones that have not failed; none once
        adaptive allocation closed the search."""
        return 0 if self.closed else max(self.plan.search_trials - (self.started - self.errors), 0)

    @property
    def spent(self) -> int:
        """Search trials the cell has spent, earlier launches' included: finished, and running."""
        return self.plan.budget.search_done + self.started - self.errors

    def values(self) -> tuple[float, ...]:
        """The finished search trials' values (higher is better: the negated loss), earlier launches' first."""
        mine = [-d["result"]["loss"] for d in self.trials.trials
                if "ray_trial_id" in d["misc"] and d["result"].get("status") == STATUS_OK]
        return (*self.plan.history_values, *mine)

    @property
    def finals_left(self) -> int:
        """Final-seed trials still to start: the final seeds less the started ones that have not failed."""
        return max(self.plan.final_seeds - (len(self.finals) - len(self.finals_failed)), 0)

    @property
    def failures(self) -> int:
        return self.errors + len(self.finals_failed)

    @property
    def gave_up(self) -> bool:
        """Too many of the cell's trials failed: it starts no more (its running ones go on)."""
        return self.failures >= self.plan.failure_cap

    @property
    def work_started(self) -> int:
        """Trials started that have not failed: a cell that lost one gets its replacement first."""
        return self.started - self.errors + len(self.finals) - len(self.finals_failed)

    def can_search(self, max_running: int | None) -> bool:
        return not self.gave_up and self.search_left > 0 and (max_running is None or len(self.running) < max_running)

    def final_ready(self) -> bool:
        """The search is spent and settled, a config was found, and final seeds remain."""
        searched = self.search_left == 0 and not self.running
        return not self.gave_up and searched and self.finals_left > 0 and self.has_choice()

    def has_choice(self) -> bool:
        """Whether there is a config for final seeds to re-train: the rule's given one, or a scored trial."""
        return self.plan.final_params is not None or self.best_loss() is not None

    def has_work(self) -> bool:
        """Trials may still start in this experiment: now, once the search settles, or to replace
        a running trial that fails."""
        if self.gave_up:
            return False
        if self.search_left or self.running or self.finals_running:
            return True
        return self.finals_left > 0 and self.has_choice()

    def propose_final(self, trial_id: str) -> dict[str, Any]:
        """The chosen config on the next seed: a failed final's seed again, else the next fresh one derived from
        the cell's seed. The study's rule chooses over every finished search trial, history included, as the
        report does (`tracking.selection.best_index`: highest metric, earliest on ties; a loss is the metric
        negated); another rule's choice comes chosen (`SearchPlan.final_params`)."""
        if self.plan.final_params is None:
            scored = [d for d in self.trials.trials if d["result"].get("status") == STATUS_OK]
            index = best_index([-d["result"]["loss"] for d in scored])
            assert index is not None  # final_ready: a scored trial exists
            params = self.params(scored[index]["misc"])
        else:
            params = dict(self.plan.final_params)
        # A replacement re-trains its failed seed: the seeds finished stay the first N of the
        # sequence, which is what the next launch's `budget.final_done` assumes.
        redo = self.seeds_to_redo()
        if redo:
            seed = redo[0]
        else:
            index = self.plan.budget.final_done + len(set(self.finals.values()))
            seed = (self.plan.seed + 1_000_003 * (index + 1)) % 2**31
        self.finals[trial_id] = seed
        self.finals_running.add(trial_id)
        return {"params": params, "seed": seed}

    def seeds_to_redo(self) -> list[int]:
        """Final seeds whose every trial failed."""
        alive = {s for t, s in self.finals.items() if t not in self.finals_failed}
        return list(dict.fromkeys(s for t, s in self.finals.items() if t in self.finals_failed and s not in alive))


_REDRAWS = 32
"""Draws in a row that may repeat a tried configuration before the space counts as exhausted."""


def _as_vals(point: dict[str, Any]) -> dict[str, list[Any]]:
    """A hyperopt point `{label: value}` as a doc's `misc.vals` `{label: [value]}`."""
    return {k: [v] for k, v in point.items() if v is not None}


def _vals_key(vals: dict[str, list[Any]]) -> tuple:
    """A configuration's identity from its `misc.vals`: an observation encoded from MLflow's text
    and the same draw made again compare equal (12 significant digits)."""
    return tuple(sorted((k, tuple(float(f"{float(x):.12g}") for x in v)) for k, v in vals.items() if v))


TRIAL_ERROR = "trial error"
"""The failure reason of a search trial that errored after Tune's retries (it gets a replacement)."""


def result_doc(loss: float | None, why: str) -> dict[str, Any]:
    # A failed doc must carry no "loss": hyperopt 0.3.0's tpe.suggest reads result["loss"]
    # whatever the status, and treats a missing one as +inf: it sorts after every real loss.
    if loss is None or not math.isfinite(loss):
        return {"status": STATUS_FAIL, "failure": why}
    return {"loss": loss, "status": STATUS_OK}
