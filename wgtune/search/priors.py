"""Where each cell's TPE starts from: its own trials, or its neighbours' (transfer).

Same-cell history becomes completed observations in the cell's hyperopt `Trials` (never re-run:
docs/design.md, decision 2). A cell without finished history learns from the cells of the same
dataset, objective, pretrained flag and model family at other sizes, nearest in parameter count
first: their best configurations are proposed first, and optionally the space is narrowed to a box
around their top configurations (Perrone et al. 2019, "Learning search spaces for Bayesian
optimization"), or, with `narrow: soft`, the random start-up draws from a size-aware prior fitted
across every searched size of the family (`search.size_prior`, `search.soft_prior`), which keeps
the space whole: a quarter of each dimension's draws come from the full range, no choice option is
dropped, and a neighbour shapes it only past its random start-up plus `soft_prior.MIN_INFORMED`
trials. A new cell's size fit is shown by `wgtune priors` whatever `narrow` says.

History is used only where it was trained as this cell trains (issue 13, defect 1): every trial
logs its whole resolved config (`records.config_params`), and a run whose fixed settings
(optimizer when fixed, momentum, schedule, epochs, image size, objective options, environments,
pretrained, data set options...) differ from this cell's is skipped, with the reason, as an
observation and as a transfer point. Runs logged before configs were (no `config.*` params) are
taken as compatible and counted in `unverified`: a cell's own old runs were trained by the same
grid cell (dataset, model, objective, pretrained are its id) and count against its budget, so
dropping them would leave their budget spent and their knowledge lost; `wgtune priors` shows how
many there are, so a researcher who changed fixed settings since knows to start a new study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wgtune.search.soft_prior import NeighbourTrials, SoftPrior, build_prior
from wgtune.spec.spaces import SearchSpace, SpaceError
from wgtune.tracking.records import logged_config, parse_params, settings_mismatch

if TYPE_CHECKING:
    from wgtune.spec.grid import Cell
    from wgtune.spec.schema import PriorSettings
    from wgtune.tracking.summary import CellSummary, Observation


@dataclass(frozen=True)
class Neighbour:
    """A cell whose history informs another: the same study question at another size."""

    cell_id: str
    n_params: int
    best_value: float | None
    best_run_id: str | None


@dataclass(frozen=True)
class CellPriors:
    """What a cell's search starts from, and why (recorded on its MLflow parent run).

    `history_runs` are every run of the cell's own history, used or skipped: the seed of a new
    experiment's draws derives from them (`run.driver.search_plan`), so a new launch never replays
    the draws of the one before (issue 13, defect 3). `curves` are, per observed fully or partly
    trained run, its early-stopping metric by epoch, for ASHA's rungs (`scheduler.CellASHA`).
    """

    cell_id: str
    space: SearchSpace
    observations: tuple[tuple[dict[str, Any], float | None], ...] = ()  # loss None: a failed configuration
    observed_runs: tuple[str, ...] = ()
    first_points: tuple[dict[str, Any], ...] = ()
    first_params: tuple[dict[str, Any], ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    narrowed: bool = False
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    unverified: tuple[str, ...] = ()
    history_runs: tuple[str, ...] = ()
    curves: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    size_prior: SoftPrior | None = None
    """A new cell's size-aware prior from its family's searched sizes (`soft_prior.build_prior`):
    shown by `wgtune priors` (the fit per hyperparameter: slope, centre, band) whatever `narrow`
    says; drawn from by the start-up only with `narrow: soft` (`startup_prior`)."""
    soft: bool = False

    @property
    def startup_prior(self) -> SoftPrior | None:
        """The prior the cell's random start-up draws from (`search.prior_tpe.suggest`), if any."""
        return self.size_prior if self.soft and self.size_prior is not None and self.size_prior.informed else None

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-ready provenance: counts, run ids, neighbours, the space TPE samples from."""
        return {
            "cell": self.cell_id,
            "observations": len(self.observations),
            "failed_observations": sum(loss is None for _, loss in self.observations),
            "observed_runs": list(self.observed_runs),
            "unverified_runs": list(self.unverified),
            "skipped": [{"run_id": run, "reason": why} for run, why in self.skipped],
            "transfer": {
                "neighbours": [n.__dict__ for n in self.neighbours],
                "first_points": [dict(p) for p in self.first_params],
                "narrowed": self.narrowed,
            },
            "asha_curves": len(self.curves),
            "size_fit": _fit_summary(self.size_prior),
            "size_prior": None if self.size_prior is None else {**self.size_prior.describe(),
                                                                  "drawn_from": self.startup_prior is not None},
            "space": self.space.describe(),
        }


def _fit_summary(prior: SoftPrior | None) -> dict[str, Any] | None:
    """Per numeric hyperparameter, how its optimum moves with size and where the fit puts this cell's:
    the slope per unit ln N (in the log of a log-scale hyperparameter), the centre and the band in
    real units, and how far the cell lies beyond the sizes searched (ln N; 0 between them)."""
    if prior is None or prior.fit is None:
        return None
    kinds = {d.name: d.kind for d in prior.space.searched()}
    out = {}
    for name, f in prior.fit.dims.items():
        real = math.exp if kinds.get(name) in ("loguniform", "qloguniform") else float
        out[name] = {"slope_per_ln_n": round(f.slope, 4), "slope_se": round(f.slope_se, 4),
                     "centre": real(f.centre), "band": [real(f.low), real(f.high)],
                     "extrapolation_ln_n": round(f.extrapolation, 3), "sizes": len(f.sizes)}
    return out


class _Skips:
    """Runs left out, once each with the first reason found (a run can be met twice: as a box
    point and as a first point, say)."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def add(self, run_id: str, reason: str) -> None:
        self.reasons.setdefault(run_id, reason)


def cell_priors(
    cell: Cell,
    space: SearchSpace,
    summaries: Mapping[str, CellSummary],
    n_params: Mapping[str, int],
    peers: Sequence[Cell],
    settings: PriorSettings,
    settings_of: Mapping[str, Mapping[str, str]] | None = None,
    n_startup: int = 5,
) -> CellPriors:
    """The priors of `cell`. `peers` are the study's other cells, `n_params` every cell's size,
    `settings_of` every cell's fixed trial settings as logged (`plan.fixed_settings`; None: not checked),
    `n_startup` the random trials of a search (a neighbour shapes a size prior only past them).

    Own history that was trained under this cell's settings becomes observations. Neighbours'
    best configurations are proposed first only to a cell with no finished history, never one the
    cell has already tried (a transfer point that failed is not proposed again, defect 4). The box,
    when asked for, spans the neighbours' top configurations, widened by the margin, and is
    stretched with no margin to hold the cell's own trials, so it does not creep across relaunches.
    """
    expected = (settings_of or {}).get(cell.id)
    free = space.searched_keys()
    skips = _Skips()
    unverified: list[str] = []
    own = summaries.get(cell.id)
    history = tuple(own.observations) if own is not None else ()
    usable = [o for o in history if _compatible(o, expected, free, skips, unverified, "")]
    finished = [o for o in usable if not o.failed]  # a failed point must not widen the box
    family: list[Neighbour] = []
    if settings.transfer == "neighbours":
        family = _neighbours(cell, peers, summaries, n_params, settings.across_families)
    neighbours = family[: settings.neighbours]
    sources = [summaries[n.cell_id] for n in neighbours]
    check = (expected, free, skips, unverified)
    size_prior = None
    if family and not finished:  # a new cell: every searched size of its family informs the fit
        size_prior = build_prior(space, [_trials_of(n, summaries[n.cell_id], space, check) for n in family],
                                 n_params[cell.id], n_startup=n_startup, margin=settings.margin)
    narrowed = False
    if sources and settings.narrow == "box":
        points = _top_configs(space, sources, settings.top_k, skips, check)
        if points:
            space = space.narrow(points, margin=settings.margin, keep=_fitting(space, finished))
            narrowed = True
    observations, runs = _observations(space, usable, skips)
    first: list[dict[str, Any]] = []
    if not finished and sources:
        tried = {_key(p) for p in _fitting(space, usable)}
        # With the soft prior, the neighbours' bests moved to this size along the slopes the data pin first.
        moved = list(size_prior.transferred) if settings.narrow == "soft" and size_prior and size_prior.informed else []
        candidates = moved + _top_configs(space, sources, 1, skips, check)
        first = [p for p in {_key(p): p for p in candidates if space.contains(p) is None}.values()
                 if _key(p) not in tried]
    return CellPriors(
        cell.id,
        space,
        observations=tuple(observations),
        observed_runs=tuple(runs),
        first_points=tuple(space.encode(p) for p in first),
        first_params=tuple(first),
        neighbours=tuple(neighbours),
        narrowed=narrowed,
        skipped=tuple(skips.reasons.items()),
        unverified=tuple(dict.fromkeys(unverified)),
        history_runs=tuple(sorted(o.run_id for o in history)),
        size_prior=size_prior,
        soft=settings.narrow == "soft",
    )


def _trials_of(neighbour: Neighbour, summary: CellSummary, space: SearchSpace, check: tuple[Any, ...]
               ) -> NeighbourTrials:
    """A neighbour's fully trained, scored trials trained under this cell's settings and inside its
    space, as the size prior reads them (stopped and failed trials are no estimate of an optimum)."""
    expected, free, skips, unverified = check
    trials = []
    for obs in summary.observations:
        if obs.value is None or obs.stopped or not math.isfinite(obs.value):
            continue
        if not _compatible(obs, expected, free, skips, unverified, "neighbour "):
            continue
        try:
            params = parse_params(space, obs.params)
        except (SpaceError, ValueError):
            continue
        if space.contains(params) is None:
            trials.append((params, obs.value))
    return NeighbourTrials(neighbour.cell_id, neighbour.n_params, tuple(trials))


def _compatible(obs: Observation, expected: Mapping[str, str] | None, free: frozenset[str], skips: _Skips,
                unverified: list[str], whose: str) -> bool:
    """Whether a run was trained under the expected settings; the reason is recorded if not."""
    if expected is None:
        return True
    logged = logged_config(obs.params)
    if logged is None:
        unverified.append(obs.run_id)
        return True
    reason = settings_mismatch(expected, logged, free)
    if reason:
        skips.add(obs.run_id, f"{whose}trained under other settings: {reason}")
    return reason is None


def _observations(
    space: SearchSpace, history: Sequence[Observation], skips: _Skips
) -> tuple[list[tuple[dict[str, Any], float | None]], list[str]]:
    """Trials that fit the space, as (hyperopt vals, loss), failed ones with loss None (TPE ranks a
    failure below every loss); the others are skipped with the reason."""
    observations: list[tuple[dict[str, Any], float | None]] = []
    runs = []
    for obs in history:
        if not obs.failed and (obs.value is None or not math.isfinite(obs.value)):
            skips.add(obs.run_id, "no objective value was logged")
            continue
        try:
            vals = space.encode(parse_params(space, obs.params))
        except (SpaceError, ValueError) as err:
            skips.add(obs.run_id, f"outside the current search space: {err}")
            continue
        observations.append((vals, None if obs.failed else -obs.value))  # TPE minimises; we maximise accuracy
        runs.append(obs.run_id)
    return observations, runs


def _fitting(space: SearchSpace, history: Sequence[Observation]) -> list[dict[str, Any]]:
    """The params of the finished trials that lie in `space` (the others are reported elsewhere)."""
    points = []
    for obs in history:
        try:
            params = parse_params(space, obs.params)
        except (SpaceError, ValueError):
            continue
        if space.contains(params) is None:
            points.append(params)
    return points


def _neighbours(
    cell: Cell, peers: Sequence[Cell], summaries: Mapping[str, CellSummary], n_params: Mapping[str, int],
    across_families: bool = False,
) -> list[Neighbour]:
    """Same dataset, objective and pretrained flag, other size, with finished trials, of the same
    model family unless `across_families` (a ResNet's optimum says little about a ViT's: other
    optimizer, other scale of lr); nearest in log parameter count first, the same family first."""
    own = math.log(n_params[cell.id])
    found = []
    for peer in peers:
        summary = summaries.get(peer.id)
        same_question = (peer.dataset, peer.objective, peer.pretrained) == (cell.dataset, cell.objective, cell.pretrained)
        if peer.id == cell.id or not same_question or summary is None or summary.best_value is None:
            continue
        if peer.family != cell.family and not across_families:
            continue
        distance = abs(math.log(n_params[peer.id]) - own)
        found.append(((peer.family != cell.family, distance, peer.id),
                      Neighbour(peer.id, n_params[peer.id], summary.best_value, summary.best_run_id)))
    return [n for _, n in sorted(found, key=lambda item: item[0])]


def _top_configs(space: SearchSpace, summaries: Sequence[CellSummary], k: int, skips: _Skips,
                 check: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The k best fully trained configurations of each summary that fit `space` and were trained
    under this cell's settings (`check`: expected settings, searched keys, skips, unverified)."""
    expected, free, _, unverified = check
    points = []
    for summary in summaries:
        ranked = sorted((o for o in summary.observations if o.value is not None and not o.stopped),
                        key=lambda o: -o.value)
        taken = 0
        for obs in ranked:
            if taken == k:
                break
            if not _compatible(obs, expected, free, skips, unverified, "neighbour "):
                continue
            try:
                params = parse_params(space, obs.params)
                reason = space.contains(params)
            except (SpaceError, ValueError) as err:
                reason = str(err)
            if reason:
                skips.add(obs.run_id, f"neighbour config outside this cell's space: {reason}")
                continue
            points.append(params)
            taken += 1
    return points


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
