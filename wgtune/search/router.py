"""One Ray Tune searcher for a whole grid: a hyperopt TPE per cell, routed by cell id.

Each cell keeps its own hyperopt ``Trials``. History of the cell is injected as completed trials
(docs/design.md, decision 2), transfer points are proposed first, and suggestions go to the cell
that has started the fewest trials, so every cell progresses while slots are free (decision 5).

A trial that errors after Tune's retries is a failed hyperopt trial (TPE treats it as worse than
any real result) and does not spend its budget slot: the cell gets a replacement, so it ends with
its budget of completed trials. A cell stops (gives up) once `SearchPlan.failure_cap` of its trials
have failed, so a broken cell cannot loop forever; the router says FINISHED only when no running
trial could still need a replacement.
"""

from __future__ import annotations

import copy
import logging
import numbers
import pickle
from typing import TYPE_CHECKING, Any

from hyperopt import STATUS_FAIL
from hyperopt.base import JOB_STATE_DONE, Trials
from hyperopt.utils import coarse_utcnow
from ray.tune.search import Searcher

from trainables.metrics import DEVICE_SECONDS
from wgtune.search.allocation import FLOOR, AllocationPolicy, CellState, Decision, decide, pool_cell
from wgtune.search.cell_search import TRIAL_ERROR, CellSearch, SearchPlan, result_doc
from wgtune.tracking.records import PHASE_FINAL, SEED_PARAM, SELECT_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from wgtune.search.ceiling import CeilingLedger

__all__ = ["CellRouter", "SearchPlan"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


class CellRouter(Searcher):
    """Routes suggestions and results by cell; one hyperopt TPE per cell.

    `on_give_up(cell, failures)` is told when a cell reaches its failure cap (it travels
    pickled with the experiment, so a module-level function or a partial of one). A completed
    trial whose last result holds `failed_key` failed as well: it ended itself on an error that
    retrying cannot fix (a diverged loss), so Tune saw no exception. Such a search trial is replaced;
    such a final-seed trial is that seed's result, and its seed is not re-trained.

    With an `allocation` (adaptive allocation, `search/allocation.py`), a cell's search trials beyond its
    floor are granted from the study's pool by expected gain, and a cell's search ends when its decision
    says so (plateaued, pool spent, cap) and none of its search trials runs; `on_allocation(cell, record)`
    is told each such end with its reason (a module-level function or a partial of one, like `on_give_up`).
    `ceiling`, if given, holds each cell's compute limits: a cell it refuses proposes nothing more
    (`search/ceiling.py`), and its running trials finish.
    """

    def __init__(
        self,
        plans: Sequence[SearchPlan],
        metric: str,
        mode: str = "max",
        max_running_per_cell: int | None = None,
        on_give_up: Callable[[str, int], None] | None = None,
        failed_key: str | None = None,
        allocation: AllocationPolicy | None = None,
        on_allocation: Callable[[str, dict[str, Any]], None] | None = None,
        ceiling: CeilingLedger | None = None,
    ) -> None:
        if not metric or mode not in ("min", "max"):
            raise ValueError("CellRouter needs a metric name and mode 'min' or 'max'")
        super().__init__(metric=metric, mode=mode)
        if max_running_per_cell is not None and max_running_per_cell < 1:
            raise ValueError("max_running_per_cell must be >= 1 or None")
        cells = [p.cell for p in plans]
        duplicates = sorted({c for c in cells if cells.count(c) > 1})
        if duplicates:
            raise ValueError(f"duplicate cells in plans: {duplicates}")
        self.max_running_per_cell = max_running_per_cell
        self.on_give_up = on_give_up
        self.failed_key = failed_key
        self.allocation = allocation
        self.on_allocation = on_allocation
        self.decisions: dict[str, Decision] = {}  # adaptive allocation's latest word on each cell
        self.ceiling = ceiling
        self._cells = {p.cell: CellSearch(p) for p in plans}
        self._index()

    def _index(self) -> None:
        self._trial_cell: dict[str, tuple[str, int | None]] = {
            doc["misc"]["ray_trial_id"]: (name, doc["tid"])
            for name, cell in self._cells.items()
            for doc in cell.trials.trials
            if "ray_trial_id" in doc["misc"]
        }
        for name, cell in self._cells.items():
            self._trial_cell.update({trial_id: (name, None) for trial_id in cell.finals})

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Check Tune's metric/mode against ours; the space lives in the plans, not in ``config``."""
        for name, ours, theirs in (("metric", self._metric, metric), ("mode", self._mode, mode)):
            if theirs and theirs != ours:
                raise ValueError(f"TuneConfig {name}={theirs!r} but CellRouter {name}={ours!r}")
        # False: Tune then rejects a param_space holding unresolved Tune distributions.
        return False

    def suggest(self, trial_id: str) -> dict | None | str:
        """Next trial for the cell with the fewest started trials that has one to give now:
        a search trial, or, once its search is spent and settled, a final-seed trial.
        FINISHED when every cell's work is done or given up; None while some wait, running
        trials included: Tune asks nothing more after FINISHED, and one may fail and need a replacement."""
        allowed = self._allocate() if self.allocation is not None else None
        busy = [c for c in self._cells.values() if c.has_work() and (self._open(c) or c.running or c.finals_running)]
        if not busy:
            return Searcher.FINISHED
        ready = [c for c in busy if self._open(c) and ((c.can_search(self.max_running_per_cell)
                                                        and (allowed is None or c.plan.cell in allowed))
                                                       or c.final_ready())]
        if not ready:
            return None
        cell = min(ready, key=lambda c: c.work_started)  # min keeps the first: plan order on ties
        if self.ceiling is not None:
            self.ceiling.start(trial_id, cell.plan.cell, final=cell.search_left == 0)
        if cell.search_left == 0:
            final = cell.propose_final(trial_id)
            self._trial_cell[trial_id] = (cell.plan.cell, None)
            rule = {SELECT_KEY: cell.plan.rule} if cell.plan.rule else {}
            return {"cell": cell.plan.cell, "params": final["params"], "proposal": PHASE_FINAL,
                    "phase": PHASE_FINAL, SEED_PARAM: final["seed"], **rule}
        doc, proposal = cell.propose(trial_id)
        self._trial_cell[trial_id] = (cell.plan.cell, doc["tid"])
        return {"cell": cell.plan.cell, "params": cell.params(doc["misc"]), "proposal": proposal,
                SEED_PARAM: cell.training_seed(doc["tid"])}

    def _allocate(self) -> set[str]:
        """Adaptive allocation: end the search of every cell whose decision ends it (none of its search trials
        running), and return the cells that may start a search trial now: those below their floor, and the
        rising cell with the largest expected gain of one more trial."""
        assert self.allocation is not None
        gave_up = [c for c in self._cells.values() if c.gave_up]
        self.decisions = decide(self.allocation.less(sum(c.spent for c in gave_up)), self.allocation_states())
        for name, decision in self.decisions.items():
            cell = self._cells[name]
            if decision.ends_search and not cell.running and not cell.closed and cell.search_left:
                cell.closed = decision.action
                if self.on_allocation is not None:
                    self.on_allocation(name, decision.record())
        can = {name: self._cells[name].can_search(self.max_running_per_cell) for name in self.decisions}
        floors = {name for name, d in self.decisions.items() if d.action == FLOOR and can[name]}
        best = pool_cell(self.decisions, can)
        return floors | ({best} if best is not None else set())

    def allocation_states(self) -> dict[str, CellState]:
        """What adaptive allocation reads of each cell that has not given up: search trials spent (earlier
        launches' included), its finished values (higher is better), its running search trials."""
        return {name: CellState(c.spent, c.values(), len(c.running))
                for name, c in self._cells.items() if not c.gave_up}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Record the trial's final metric as its cell's hyperopt result (failed if unusable);
        an errored trial is replaced, up to the cell's failure cap."""
        if trial_id not in self._trial_cell:
            logger.warning("CellRouter: completion of unknown trial %s ignored", trial_id)
            return
        name, tid = self._trial_cell[trial_id]
        cell = self._cells[name]
        if self.ceiling is not None:
            self.ceiling.finish(trial_id, (result or {}).get(DEVICE_SECONDS))
        gave_up = cell.gave_up
        failed_itself = bool(self.failed_key and result and result.get(self.failed_key))
        if tid is None:  # a final-seed trial: it evaluates the chosen config, it informs no TPE
            cell.finals_running.discard(trial_id)
            if failed_itself:  # that seed's result: re-training it would fail the same way
                cell.finals_diverged.add(trial_id)
            elif error:
                cell.finals_failed.add(trial_id)
        else:
            self._complete_search(cell, cell.by_tid[tid], trial_id, result, error or failed_itself)
        if cell.gave_up and not gave_up and self.on_give_up is not None:
            self.on_give_up(name, cell.failures)

    def _complete_search(self, cell: CellSearch, doc: dict[str, Any], trial_id: str, result: dict | None,
                         error: bool) -> None:
        value = None if error or not result else result.get(self._metric)
        if error:
            loss, why = None, TRIAL_ERROR
        elif not isinstance(value, numbers.Real) or isinstance(value, bool):
            loss, why = None, f"no numeric {self._metric!r} in result"
        else:
            loss, why = (-float(value) if self._mode == "max" else float(value)), "non-finite metric"
        # A repeated completion (Tune's restart_errored) overwrites the result; counts stay.
        doc["result"] = result_doc(loss, why)
        doc["state"] = JOB_STATE_DONE
        doc["refresh_time"] = coarse_utcnow()
        cell.running.discard(trial_id)
        cell.trials.refresh()
        cell.count_errors()

    def _open(self, cell: CellSearch) -> bool:
        """Whether the cell's next trial stays within its compute ceilings (none: always)."""
        return self.ceiling is None or self.ceiling.allows(cell.plan.cell, final=cell.search_left == 0)

    def cell_of(self, trial_id: str) -> str:
        """The cell a suggested trial belongs to."""
        return self._trial_cell[trial_id][0]

    def hyperopt_trials(self, cell: str) -> Trials:
        """The cell's hyperopt Trials (history docs included), for inspection."""
        return self._cells[cell].trials

    def progress(self) -> dict[str, dict[str, Any]]:
        """Per cell: started, finished, failed (errored: of these, after Tune's retries), running,
        search trials to complete, final seeds started, running and failed, observed, gave up, best (metric units)."""
        out = {}
        for name, cell in self._cells.items():
            mine = [d for d in cell.trials.trials if "ray_trial_id" in d["misc"]]
            done = [d for d in mine if d["state"] == JOB_STATE_DONE]
            best = cell.best_loss()
            out[name] = {
                "started": cell.started,
                "finished": len(done),
                "failed": sum(d["result"].get("status") == STATUS_FAIL for d in done),
                "errored": cell.errors,
                "running": len(cell.running),
                "search_trials": cell.plan.search_trials,
                "final_started": len(cell.finals),
                "final_running": len(cell.finals_running),
                "final_failed": len(cell.finals_failed),
                "final_diverged": len(cell.finals_diverged),
                "observed": len(cell.plan.observations),
                "gave_up": cell.gave_up,
                "best": None if best is None else (-best if self._mode == "max" else best),
            }
        return out

    def get_state(self) -> dict[str, Any]:
        """Everything a restored experiment needs: each cell's Trials docs and RNG state."""
        return {
            "version": _STATE_VERSION,
            "cells": {
                name: {
                    "docs": copy.deepcopy(cell.trials.trials),
                    "rng": cell.rng.bit_generator.state,
                    "budget": cell.plan.search_trials,
                    "finals": dict(cell.finals),
                    "finals_running": sorted(cell.finals_running),
                    "finals_failed": sorted(cell.finals_failed),
                    "finals_diverged": sorted(cell.finals_diverged),
                    "closed": cell.closed,
                }
                for name, cell in self._cells.items()
            },
            **({"ceiling": self.ceiling.get_state()} if self.ceiling is not None else {}),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Load a ``get_state`` snapshot into a router built from the same plans."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported CellRouter state version {state.get('version')!r}")
        saved = state["cells"]
        if set(saved) != set(self._cells) or any(
            saved[n]["budget"] != c.plan.search_trials for n, c in self._cells.items()
        ):
            # Restore cannot change the grid or budgets (docs/design.md, decision 1): start a fresh,
            # warm-started experiment for that.
            raise ValueError(
                "CellRouter state was saved for other plans: cells/budgets "
                f"{ {n: s['budget'] for n, s in saved.items()} } vs "
                f"{ {n: c.plan.search_trials for n, c in self._cells.items()} }"
            )
        for name, cell in self._cells.items():
            cell.load(saved[name]["docs"])
            cell.rng.bit_generator.state = saved[name]["rng"]
            cell.finals = dict(saved[name].get("finals", {}))
            cell.finals_running = set(saved[name].get("finals_running", ()))
            cell.finals_failed = set(saved[name].get("finals_failed", ()))
            cell.finals_diverged = set(saved[name].get("finals_diverged", ()))
            cell.closed = saved[name].get("closed", "")
        if self.ceiling is not None and "ceiling" in state:
            self.ceiling.set_state(state["ceiling"])
        self._index()

    def save(self, checkpoint_path: str) -> None:
        """Write ``get_state()`` to a file (Tune calls this via ``save_to_dir``)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Read a file written by ``save`` (Tune calls this on ``Tuner.restore``)."""
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
