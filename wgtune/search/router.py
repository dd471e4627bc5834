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
import functools
import logging
import math
import numbers
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Domain, pyll, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, Trials, spec_from_misc, trials_from_docs
from hyperopt.utils import coarse_utcnow
from ray.tune.search import Searcher

from wgtune.search.budget import CellBudget
from wgtune.tracking.records import PHASE_FINAL, SEED_PARAM

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CellRouter", "SearchPlan"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


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


class _SearchState:
    """One cell's hyperopt state; its counters are rebuilt from the Trials docs on load."""

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self.domain = Domain(_identity, plan.space)
        self.algo: Callable[..., list[dict]] = functools.partial(
            tpe.suggest, n_startup_jobs=plan.n_startup, verbose=False
        )
        self.rng = np.random.default_rng(plan.seed)
        self.finals: dict[str, int] = {}  # ray trial id -> final seed, for the final phase
        self.finals_running: set[str] = set()
        self.finals_failed: set[str] = set()
        self.finals_diverged: set[str] = set()  # done: the chosen config diverges on that seed, and would again
        self.trials = Trials()
        self._check_points()
        docs = [self._doc(tid, vals) for tid, (vals, _) in enumerate(plan.observations)]
        for doc, (_, loss) in zip(docs, plan.observations):
            doc["state"] = JOB_STATE_DONE
            doc["misc"]["proposal"] = "observation"
            doc["result"] = _result(None if loss is None else float(loss), "non-finite loss")
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
        """Insert the next trial doc of this cell; return it and how it was proposed."""
        n_transfer = min(len(self.plan.first_points), self.plan.search_trials)
        [tid] = self.trials.new_trial_ids(1)
        if self.started < n_transfer:
            doc, proposal = self._doc(tid, self.plan.first_points[self.started]), "transfer"
        else:
            # Same rule tpe.suggest applies: it falls back to rand.suggest below n_startup docs.
            proposal = "random" if len(self.trials.trials) < self.plan.n_startup else "tpe"
            seed = int(self.rng.integers(2**31 - 1))
            [doc] = self.algo([tid], self.domain, self.trials, seed)
        doc["state"] = JOB_STATE_RUNNING
        doc["book_time"] = coarse_utcnow()
        doc["misc"]["ray_trial_id"] = trial_id
        doc["misc"]["proposal"] = proposal
        self.trials.insert_trial_docs([doc])
        self.trials.refresh()
        self.by_tid[tid] = self.trials.trials[-1]
        self.started += 1
        self.running.add(trial_id)
        return self.by_tid[tid], proposal

    def params(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Plain parameter values of a doc: hyperopt's own decoding (indices -> choices)."""
        memo = self.domain.memo_from_config(spec_from_misc(doc))
        return _python_scalars(pyll.rec_eval(self.domain.expr, memo=memo))

    def best_loss(self) -> float | None:
        losses = [r["loss"] for r in self.trials.results if r.get("status") == STATUS_OK]
        return min(losses) if losses else None

    @property
    def search_left(self) -> int:
        """Search trials still to start: the budget less the started ones that have not failed."""
        return max(self.plan.search_trials - (self.started - self.errors), 0)

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
        return not self.gave_up and searched and self.finals_left > 0 and self.best_loss() is not None

    def has_work(self) -> bool:
        """Trials may still start in this experiment: now, once the search settles, or to replace
        a running trial that fails."""
        if self.gave_up:
            return False
        if self.search_left or self.running or self.finals_running:
            return True
        return self.finals_left > 0 and self.best_loss() is not None

    def propose_final(self, trial_id: str) -> dict[str, Any]:
        """The chosen config (best metric over every finished search trial, history included)
        on the next seed: a failed final's seed again, else the next fresh one derived from the cell's seed."""
        best = min((d for d in self.trials.trials if d["result"].get("status") == STATUS_OK),
                   key=lambda d: d["result"]["loss"])
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
        return {"params": self.params(best["misc"]), "seed": seed}

    def seeds_to_redo(self) -> list[int]:
        """Final seeds whose every trial failed."""
        alive = {s for t, s in self.finals.items() if t not in self.finals_failed}
        return list(dict.fromkeys(s for t, s in self.finals.items() if t in self.finals_failed and s not in alive))


TRIAL_ERROR = "trial error"
"""The failure reason of a search trial that errored after Tune's retries (it gets a replacement)."""


def _result(loss: float | None, why: str) -> dict[str, Any]:
    # A failed doc must carry no "loss": hyperopt 0.3.0's tpe.suggest reads result["loss"]
    # whatever the status, and treats a missing one as +inf: it sorts after every real loss.
    if loss is None or not math.isfinite(loss):
        return {"status": STATUS_FAIL, "failure": why}
    return {"loss": loss, "status": STATUS_OK}


class CellRouter(Searcher):
    """Routes suggestions and results by cell; one hyperopt TPE per cell.

    `on_give_up(cell, failures)` is told when a cell reaches its failure cap (it travels
    pickled with the experiment, so a module-level function or a partial of one). A completed
    trial whose last result holds `failed_key` failed as well: it ended itself on an error that
    retrying cannot fix (a diverged loss), so Tune saw no exception. Such a search trial is replaced;
    such a final-seed trial is that seed's result, and its seed is not re-trained.
    """

    def __init__(
        self,
        plans: Sequence[SearchPlan],
        metric: str,
        mode: str = "max",
        max_running_per_cell: int | None = None,
        on_give_up: Callable[[str, int], None] | None = None,
        failed_key: str | None = None,
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
        self._cells = {p.cell: _SearchState(p) for p in plans}
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
        busy = [c for c in self._cells.values() if c.has_work()]
        if not busy:
            return Searcher.FINISHED
        ready = [c for c in busy if c.can_search(self.max_running_per_cell) or c.final_ready()]
        if not ready:
            return None
        cell = min(ready, key=lambda c: c.work_started)  # min keeps the first: plan order on ties
        if cell.search_left == 0:
            final = cell.propose_final(trial_id)
            self._trial_cell[trial_id] = (cell.plan.cell, None)
            return {"cell": cell.plan.cell, "params": final["params"], "proposal": PHASE_FINAL,
                    "phase": PHASE_FINAL, SEED_PARAM: final["seed"]}
        doc, proposal = cell.propose(trial_id)
        self._trial_cell[trial_id] = (cell.plan.cell, doc["tid"])
        return {"cell": cell.plan.cell, "params": cell.params(doc["misc"]), "proposal": proposal}

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

    def _complete_search(self, cell: _SearchState, doc: dict[str, Any], trial_id: str, result: dict | None,
                         error: bool) -> None:
        value = None if error or not result else result.get(self._metric)
        if error:
            loss, why = None, TRIAL_ERROR
        elif not isinstance(value, numbers.Real) or isinstance(value, bool):
            loss, why = None, f"no numeric {self._metric!r} in result"
        else:
            loss, why = (-float(value) if self._mode == "max" else float(value)), "non-finite metric"
        # A repeated completion (Tune's restart_errored) overwrites the result; counts stay.
        doc["result"] = _result(loss, why)
        doc["state"] = JOB_STATE_DONE
        doc["refresh_time"] = coarse_utcnow()
        cell.running.discard(trial_id)
        cell.trials.refresh()
        cell.count_errors()

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
                }
                for name, cell in self._cells.items()
            },
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
        self._index()

    def save(self, checkpoint_path: str) -> None:
        """Write ``get_state()`` to a file (Tune calls this via ``save_to_dir``)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Read a file written by ``save`` (Tune calls this on ``Tuner.restore``)."""
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
