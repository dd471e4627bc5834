"""Where each cell's TPE starts from: its own finished trials, or its neighbours' (transfer).

Same-cell history becomes completed observations in the cell's hyperopt `Trials` (never re-run:
docs/design.md, decision 2). A cell without history learns from the cells of the same dataset,
objective and pretrained flag at other sizes, nearest in parameter count first: their best configurations
are proposed first, and optionally the space is narrowed to a box around their top
configurations (Perrone et al. 2019, "Learning search spaces for Bayesian optimization").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wgtune.spec.spaces import SearchSpace, SpaceError

if TYPE_CHECKING:
    from wgtune.spec.grid import Cell, PriorSettings
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
    """What a cell's search starts from, and why (recorded on its MLflow parent run)."""

    cell_id: str
    space: SearchSpace
    observations: tuple[tuple[dict[str, Any], float | None], ...] = ()  # loss None: a diverged configuration
    observed_runs: tuple[str, ...] = ()
    first_points: tuple[dict[str, Any], ...] = ()
    first_params: tuple[dict[str, Any], ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    narrowed: bool = False
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-ready provenance: counts, run ids, neighbours, the space TPE samples from."""
        return {
            "cell": self.cell_id,
            "observations": len(self.observations),
            "diverged_observations": sum(loss is None for _, loss in self.observations),
            "observed_runs": list(self.observed_runs),
            "skipped": [{"run_id": run, "reason": why} for run, why in self.skipped],
            "transfer": {
                "neighbours": [n.__dict__ for n in self.neighbours],
                "first_points": [dict(p) for p in self.first_params],
                "narrowed": self.narrowed,
            },
            "space": self.space.describe(),
        }


def cell_priors(
    cell: Cell,
    space: SearchSpace,
    summaries: Mapping[str, CellSummary],
    n_params: Mapping[str, int],
    peers: Sequence[Cell],
    settings: PriorSettings,
) -> CellPriors:
    """The priors of `cell`. `peers` are the study's other cells, `n_params` every cell's size.

    Own history always becomes observations. Neighbours' best configurations are proposed
    first only to a cell with no history. The box, when asked for, spans the neighbours' top
    configurations and the cell's own history, so it survives a re-launch and every own
    observation still fits it.
    """
    own = summaries.get(cell.id)
    history = tuple(own.observations) if own is not None else ()
    finished = [o for o in history if not o.diverged]  # a diverged point must not widen the box
    skipped: list[tuple[str, str]] = []
    neighbours: list[Neighbour] = []
    if settings.transfer == "neighbours":
        neighbours = _neighbours(cell, peers, summaries, n_params)[: settings.top_k]
    sources = [summaries[n.cell_id] for n in neighbours]
    narrowed = False
    if sources and settings.narrow == "box":
        points = _top_configs(space, sources, settings.top_k, skipped)
        points += _fitting(space, finished)
        if points:
            space = space.narrow(points, margin=settings.margin)
            narrowed = True
    observations, runs, rejected = _observations(space, history)
    skipped.extend(rejected)
    first: list[dict[str, Any]] = []
    if not finished and sources:
        first = list({_key(p): p for p in _top_configs(space, sources, 1, skipped)}.values())
    return CellPriors(
        cell.id,
        space,
        observations=tuple(observations),
        observed_runs=tuple(runs),
        first_points=tuple(space.encode(p) for p in first),
        first_params=tuple(first),
        neighbours=tuple(neighbours),
        narrowed=narrowed,
        skipped=tuple(skipped),
    )


def parse_params(space: SearchSpace, logged: Mapping[str, str]) -> dict[str, Any]:
    """MLflow's string params back to the typed values of the space's searched dimensions."""
    values: dict[str, Any] = {}
    for dim in space.searched():
        if dim.name not in logged:
            raise SpaceError(f"no value logged for {dim.name!r}")
        text = logged[dim.name]
        if dim.kind == "choice":
            matches = [option for option in dim.args if str(option) == text]
            if not matches:
                raise SpaceError(f"{dim.name}={text} is not one of the choices {list(dim.args)}")
            values[dim.name] = matches[0]
        else:
            number = float(text)
            values[dim.name] = int(number) if dim.integer else number
    return values


def _observations(
    space: SearchSpace, history: Sequence[Observation]
) -> tuple[list[tuple[dict[str, Any], float | None]], list[str], list[tuple[str, str]]]:
    """Finished trials that fit the space, as (hyperopt vals, loss), and diverged ones with loss None
    (TPE ranks a failure below every loss); the rest with the reason."""
    observations: list[tuple[dict[str, Any], float | None]] = []
    runs, skipped = [], []
    for obs in history:
        if not obs.diverged and (obs.value is None or not math.isfinite(obs.value)):
            skipped.append((obs.run_id, "no objective value was logged"))
            continue
        try:
            vals = space.encode(parse_params(space, obs.params))
        except (SpaceError, ValueError) as err:
            skipped.append((obs.run_id, f"outside the current search space: {err}"))
            continue
        observations.append((vals, None if obs.diverged else -obs.value))  # TPE minimises; we maximise accuracy
        runs.append(obs.run_id)
    return observations, runs, skipped


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
    cell: Cell, peers: Sequence[Cell], summaries: Mapping[str, CellSummary], n_params: Mapping[str, int]
) -> list[Neighbour]:
    """Same dataset, objective and pretrained flag, other size, with finished trials; nearest in
    log parameter count first, the same model family before others."""
    own = math.log(n_params[cell.id])
    found = []
    for peer in peers:
        summary = summaries.get(peer.id)
        same_question = (peer.dataset, peer.objective, peer.pretrained) == (cell.dataset, cell.objective, cell.pretrained)
        if peer.id == cell.id or not same_question or summary is None or summary.best_value is None:
            continue
        distance = abs(math.log(n_params[peer.id]) - own)
        found.append(((peer.family != cell.family, distance, peer.id),
                      Neighbour(peer.id, n_params[peer.id], summary.best_value, summary.best_run_id)))
    return [n for _, n in sorted(found, key=lambda item: item[0])]


def _top_configs(
    space: SearchSpace, summaries: Sequence[CellSummary], k: int, skipped: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The k best finished configurations of each summary that fit `space`."""
    points = []
    for summary in summaries:
        ranked = sorted((o for o in summary.observations if o.value is not None), key=lambda o: -o.value)
        taken = 0
        for obs in ranked:
            if taken == k:
                break
            try:
                params = parse_params(space, obs.params)
                reason = space.contains(params)
            except (SpaceError, ValueError) as err:
                reason = str(err)
            if reason:
                skipped.append((obs.run_id, f"neighbour config outside this cell's space: {reason}"))
                continue
            points.append(params)
            taken += 1
    return points


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
