"""Soft, gated narrowing: a cell's search prior from its neighbours' size fit, with mass kept outside.

What it replaces: `wgtune.priors` narrows the space TPE searches to a box (the bounding box of the
neighbours' top configurations plus a margin, Perrone et al. 2019). That is a hard cut: an optimum
outside the box can never be proposed, choice options no neighbour used are gone, and `margin: 0`
collapses a dimension. Here nothing of the original space becomes unreachable and no option is
cut: the prior is a distribution over the ORIGINAL space:

- per numeric dimension, a mixture (hyperopt's `hp.pchoice`) of a narrowed distribution over the
  band the size fit predicts (`wgtune.search.size_prior`: centre ± prediction interval at the
  target size, plus `margin` × the dimension's range, at least `MIN_HALF_WIDTH` × the range on each
  side, clipped to the original bounds) with weight 1 - `outside`, and the dimension's full
  original distribution with weight `outside` (default 0.25): a quarter of every dimension's draws
  ignore the neighbours altogether, so an optimum outside the band stays reachable. The band
  depends on the draw's choices (the fit is conditional, size_prior step 0: SGD's lr band sits
  above AdamW's), so a draw picks its choices first, then its numeric values from their bands;
  under an option the fit could not place, the numeric values come from the full distribution
  (with more than `MAX_COMBINATIONS` combinations of choices, the fit is not conditioned);
- a band is widened on a side where an anchor sits at its edge: each neighbour's best trial
  moved to the target size along the fitted slope, and the cell's own best trial when given (a
  search whose best lies at the edge of where it looked has not bracketed its optimum);
- per choice dimension, a reweighting by the neighbours' top trials, every option keeping
  probability >= `outside` / (number of options): no option is ever dropped;
- gating: a neighbour shapes the prior only with at least `n_startup + min_informed` scored
  trials (its random start-up plus `MIN_INFORMED` that TPE chose); thinner ones are skipped, with
  the reason.

The mixture never becomes TPE's space (hyperopt's TPE and a mixture space do not mix with
history): `wgtune.search.prior_tpe` draws a cell's start-up from it, then runs TPE mostly on
`SoftPrior.tpe_space()` (the original labels, numeric bounds narrowed to the bands' `hull`, choices
reweighted) and otherwise on the original space. `SoftPrior.transferred` holds the first points:
each neighbour's best configuration, moved to the target size along a slope the data pin.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from wgtune.search.dimension_scale import from_own, own, own_bounds, real, span
from wgtune.search.size_prior import (
    LEVEL,
    TOP_K,
    DimensionFit,
    SizeFit,
    SizeTrials,
    fit_sizes,
    rank_weights,
    same_option,
)
from wgtune.spec.spaces import LOG_KINDS, QUANTIZED_KINDS

if TYPE_CHECKING:
    from wgtune.spec.spaces import Dimension, SearchSpace

__all__ = ["Band", "ChoiceWeights", "EDGE", "MIN_HALF_WIDTH", "MIN_INFORMED", "MIN_SD", "NeighbourTrials",
           "MAX_COMBINATIONS", "OUTSIDE", "SoftPrior", "build_prior", "gate"]

OUTSIDE = 0.25
"""Per numeric dimension, the probability that a prior draw comes from the full original distribution."""
MIN_INFORMED = 5
"""Scored trials past its random start-up a neighbour needs before it shapes a prior."""
MIN_HALF_WIDTH = 0.05
"""The narrowest half-width of a band, as a fraction of the dimension's range (so margin 0 works)."""
MIN_SD = 0.02
"""Floor of a size's location uncertainty in the fit, as a fraction of the dimension's range."""
EDGE = 0.1
"""An anchor within this fraction of a band's width from its edge (or beyond) widens that side."""
MAX_COMBINATIONS = 64
"""Most combinations of choice options the bands are conditioned on; beyond, one band per dimension."""

_TOL = 1e-9


@dataclass(frozen=True)
class NeighbourTrials:
    """A neighbour cell as a prior reads it: its size and its scored search trials.

    `trials`: (plain params, score) per finished trial whose fixed settings match the target cell
    (the caller filters), score higher-is-better and finite; diverged and errored trials are not
    scores and are left out.
    """

    label: str
    n_params: int
    trials: tuple[tuple[Mapping[str, Any], float], ...]


@dataclass(frozen=True)
class Band:
    """Where a numeric dimension's narrowed draws fall under the choices `combination` (choice ->
    option pairs; empty: under any choices): [low, high] in the dimension's own scale (log for a
    log-scale one; multiples of q for a quantized one), around the fit's `centre`."""

    name: str
    combination: tuple[tuple[str, Any], ...]
    low: float
    high: float
    centre: float
    widened: bool = False

    def applies(self, params: Mapping[str, Any]) -> bool:
        """Whether `params`' choices are this band's combination."""
        return _matches(self.combination, params)


@dataclass(frozen=True)
class ChoiceWeights:
    """A choice dimension's prior probabilities, one per option of the original, in its order; all > 0."""

    name: str
    weights: tuple[float, ...]


@dataclass(frozen=True)
class SoftPrior:
    """A search prior over `space` (the original, unchanged space), with its provenance.

    No bands and no choice weights (no neighbour passed the gate) is the original prior itself.
    """

    space: SearchSpace
    bands: tuple[Band, ...] = ()
    choices: tuple[ChoiceWeights, ...] = ()
    outside: float = OUTSIDE
    fit: SizeFit | None = None
    sources: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    transferred: tuple[dict[str, Any], ...] = ()
    """Each source's best configuration moved to the target size along the fitted slopes, nearest
    source first: the first points to try (today's "neighbours' best configs", made size-aware)."""

    @property
    def informed(self) -> bool:
        """Whether any neighbour shaped this prior (else it is the original space's own prior)."""
        return bool(self.sources)

    def band_for(self, name: str, params: Mapping[str, Any]) -> Band | None:
        """The band of `name` under `params`' choices; None: drawn from its full distribution there."""
        return next((b for b in self.bands if b.name == name and b.applies(params)), None)

    def mixture(self) -> Any:
        """The prior as a hyperopt space: for sampling only, never for TPE (see the module doc).

        Choices first (`hp.pchoice` over every combination, with the product of the choice
        weights), then per numeric dimension `hp.pchoice` between its band under that combination
        and its full distribution; labels carry the combination's index to stay unique.
        """
        from hyperopt import hp

        searched = self.space.searched()
        weights = {c.name: c.weights for c in self.choices}
        choice_dims = [d for d in searched if d.kind == "choice"]
        branches = []
        for k, picks in enumerate(itertools.product(*(range(len(d.args)) for d in choice_dims))):
            chosen = {d.name: d.args[i] for d, i in zip(choice_dims, picks)}
            p = math.prod(weights.get(d.name, (1.0 / len(d.args),) * len(d.args))[i]
                          for d, i in zip(choice_dims, picks))
            branch: dict[str, Any] = dict(chosen)
            for d in searched:
                if d.kind != "choice":
                    branch[d.name] = self._numeric_expr(d, self.band_for(d.name, chosen), k)
            branches.append((p, branch))
        if len(branches) == 1:
            return branches[0][1]
        return hp.pchoice("choices", list(zip(_sum_to_one([p for p, _ in branches]), [b for _, b in branches])))

    def hull(self) -> tuple[Band, ...]:
        """Per numeric dimension, the hull of its bands under the likely combinations of choices
        (those at least half as probable as the most probable one); a dimension without a band
        under one of them has none (it keeps its full range)."""
        weights = {c.name: c.weights for c in self.choices}
        choice_dims = [d for d in self.space.searched() if d.kind == "choice"]
        combos = []
        for picks in itertools.product(*(range(len(d.args)) for d in choice_dims)):
            p = math.prod(weights.get(d.name, (1.0,) * len(d.args))[i] for d, i in zip(choice_dims, picks))
            combos.append((p, {d.name: d.args[i] for d, i in zip(choice_dims, picks)}))
        top = max(p for p, _ in combos)
        likely = [c for p, c in combos if p >= top / 2]
        out = []
        for d in self.space.searched():
            bands = [self.band_for(d.name, c) for c in likely] if d.kind != "choice" else []
            if bands and all(b is not None for b in bands):
                out.append(Band(d.name, (), min(b.low for b in bands), max(b.high for b in bands),
                                float(np.mean([b.centre for b in bands]))))
        return tuple(out)

    def tpe_space(self) -> dict[str, Any]:
        """The space TPE searches most of the time: the ORIGINAL labels and kinds (so history stays
        valid), each numeric dimension over its `hull`, each choice over all its options with the
        prior's weights (`hp.pchoice`: TPE's categorical prior, its pseudo-counts, follows them).
        Uninformed, it is the original space."""
        from hyperopt import hp
        from hyperopt.pyll import scope

        weights = {c.name: c.weights for c in self.choices}
        dims = {d.name: d for d in self.space.searched()}
        out = self.space.to_hyperopt()
        for name, w in weights.items():
            out[name] = hp.pchoice(name, list(zip(_sum_to_one(w), dims[name].args)))
        for band in self.hull():
            d = dims[band.name]
            near = _near_expr(d, band, d.name)
            out[d.name] = scope.int(near) if d.integer else near
        return out

    def _numeric_expr(self, d: Dimension, band: Band | None, k: int) -> Any:
        from hyperopt import hp
        from hyperopt.pyll import scope

        full = _dist_expr(d, d.kind, _hyperopt_args(d), f"{d.name}.full[{k}]")
        if band is None:
            return full
        near = _near_expr(d, band, f"{d.name}.near[{k}]")
        near = scope.int(near) if d.integer else near  # as the full one: a branch's values are all ints
        return hp.pchoice(f"{d.name}.branch[{k}]", [(1 - self.outside, near), (self.outside, full)])

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One draw from the prior: plain values of every searched dimension, inside the original space."""
        from hyperopt.pyll import stochastic

        drawn = stochastic.sample(self.mixture(), rng=rng)
        params = {name: _plain(value) for name, value in drawn.items()}
        reason = self.space.contains(params)
        if reason:  # the mixture's bounds are the original's or inside them: a bug, not bad input
            raise AssertionError(f"a prior draw left the space: {reason}")
        return params

    def holds(self, params: Mapping[str, Any]) -> bool:
        """Whether `params` lie in the prior's high-density region: each numeric value inside its
        band under `params`' choices. Choices are never cut, and a dimension without a band there
        is drawn from its full distribution, which holds every value."""
        for d in self.space.searched():
            band = None if d.kind == "choice" else self.band_for(d.name, params)
            if band is not None:
                value = own(d, params[d.name])
                tol = _TOL * max(1.0, abs(band.low), abs(band.high))
                if not band.low - tol <= value <= band.high + tol:
                    return False
        return True

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-ready provenance: sources, skipped neighbours, bands in real units, the fit."""
        dims = {d.name: d for d in self.space.searched()}
        return {
            "sources": list(self.sources),
            "skipped": [{"neighbour": who, "reason": why} for who, why in self.skipped],
            "outside": self.outside,
            "bands": [{"name": b.name, "under": {c: o for c, o in b.combination},
                       "low": real(dims[b.name], b.low), "high": real(dims[b.name], b.high),
                       "centre": real(dims[b.name], b.centre), "widened_at_edge": b.widened} for b in self.bands],
            "choices": {c.name: dict(zip(map(str, dims[c.name].args), c.weights)) for c in self.choices},
            "fit": self.fit.describe() if self.fit is not None else None,
        }


def gate(neighbours: Sequence[NeighbourTrials], n_startup: int, min_informed: int = MIN_INFORMED
         ) -> tuple[list[NeighbourTrials], list[tuple[str, str]]]:
    """The neighbours with at least `n_startup + min_informed` scored trials, and the others with why."""
    if n_startup < 0 or min_informed < 0:
        raise ValueError(f"gate: n_startup and min_informed must be >= 0, got {n_startup}, {min_informed}")
    need = n_startup + min_informed
    kept, skipped = [], []
    for n in neighbours:
        scored = sum(math.isfinite(score) for _, score in n.trials)
        if scored >= need:
            kept.append(n)
        else:
            skipped.append((n.label, f"{scored} scored trials; shaping a prior needs {need} "
                                     f"({n_startup} random start-up + {min_informed} chosen by TPE)"))
    return kept, skipped


def build_prior(
    space: SearchSpace,
    neighbours: Sequence[NeighbourTrials],
    target_n_params: int,
    *,
    n_startup: int,
    min_informed: int = MIN_INFORMED,
    outside: float = OUTSIDE,
    margin: float = 0.0,
    level: float = LEVEL,
    top_k: int = TOP_K,
    own_best: Mapping[str, Any] | None = None,
) -> SoftPrior:
    """The soft prior of a cell of `target_n_params` parameters from its same-family neighbours.

    `margin`: widens every band by that fraction of its dimension's range on each side (the grid's
    `priors.margin`; 0 is valid). `own_best`: the cell's best trial so far, if any (a relaunch).
    """
    if not 0 < outside <= 1:
        raise ValueError(f"build_prior: outside must lie in (0, 1] (mass left outside the bands), got {outside}")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"build_prior: margin must be a finite number >= 0, got {margin}")
    kept, skipped = gate(neighbours, n_startup, min_informed)
    if not kept:
        return SoftPrior(space, outside=outside, skipped=tuple(skipped))
    searched = space.searched()
    numeric = [d for d in searched if d.kind != "choice"]
    choice_dims = [d for d in searched if d.kind == "choice"]
    if math.prod(len(d.args) for d in choice_dims) > MAX_COMBINATIONS:
        choice_dims = []  # too many combinations to condition on: one band per dimension
    ranges = {d.name: span(d) for d in numeric}
    sizes = [_size_trials(n, numeric, choice_dims) for n in kept]
    fit = fit_sizes(sizes, target_n_params, [d.name for d in numeric], top_k=top_k, level=level,
                    min_sd={name: MIN_SD * r for name, r in ranges.items()})
    target = math.log(target_n_params)
    combinations = [tuple(zip((d.name for d in choice_dims), picks))
                    for picks in itertools.product(*(d.args for d in choice_dims))]
    bands = []
    for d in numeric:
        f = fit.dims.get(d.name)
        if f is None:
            continue
        conditional = bool(f.reference)
        for combination in (combinations if conditional else [()]):
            found = f.at(dict(combination))
            if found is None:
                continue  # an option the fit could not place: the full distribution there
            centre, sd = found
            half = max(f.z * sd + margin * ranges[d.name], MIN_HALF_WIDTH * ranges[d.name])
            anchors = [_anchor(f, size, d.name, dict(combination), target) for size in sizes]
            if own_best is not None and d.name in own_best and _matches(combination, own_best):
                anchors.append(own(d, own_best[d.name]))
            bands.append(_band(d, combination, centre, half, [a for a in anchors if math.isfinite(a)]))
    choices = [ChoiceWeights(d.name, _choice_weights(d, kept, top_k, outside)) for d in searched if d.kind == "choice"]
    by_distance = sorted(zip(kept, sizes), key=lambda pair: abs(math.log(pair[0].n_params) - target))
    transferred = _transferred(space, fit, [s for _, s in by_distance], [n for n, _ in by_distance], target)
    return SoftPrior(space, tuple(bands), tuple(choices), outside, fit, tuple(n.label for n in kept), tuple(skipped),
                     transferred)


def _matches(combination: Sequence[tuple[str, Any]], params: Mapping[str, Any]) -> bool:
    return all(choice in params and same_option(params[choice], option) for choice, option in combination)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _sum_to_one(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    p = [w / total for w in weights]
    p[-1] = 1.0 - sum(p[:-1])  # hyperopt checks the sum
    return p


# -- building the prior ------------------------------------------------------------------------

def _size_trials(n: NeighbourTrials, numeric: Sequence[Dimension], choice_dims: Sequence[Dimension]) -> SizeTrials:
    """A neighbour's finite-scored trials: numeric values in own scale (unusable ones left out), and
    their options of `choice_dims`, for the conditional fit."""
    points, scores, options = [], [], []
    for params, score in n.trials:
        if not math.isfinite(score):
            continue
        point = {}
        for d in numeric:
            value = params.get(d.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and (value > 0 or d.kind not in LOG_KINDS):
                point[d.name] = own(d, value)
        points.append(point)
        scores.append(float(score))
        options.append({d.name: params[d.name] for d in choice_dims if d.name in params})
    return SizeTrials(n.n_params, tuple(points), tuple(scores), n.label, tuple(options) if choice_dims else ())


def _transferred(space: SearchSpace, fit: SizeFit, sizes: Sequence[SizeTrials],
                 kept: Sequence[NeighbourTrials], target: float) -> tuple[dict[str, Any], ...]:
    """Each neighbour's best configuration, its numeric values moved by slope x (target - its ln N)
    where the slope is clear of zero (inside the bounds, quantized), its choices kept; duplicates once."""
    out: list[dict[str, Any]] = []
    for size, n in zip(sizes, kept):
        scored = [(score, params) for params, score in n.trials if math.isfinite(score)]
        params = dict(max(scored, key=lambda item: item[0])[1])
        for d in space.searched():
            f = fit.dims.get(d.name)
            # Moved only along a slope the data pin (|slope| >= 2 se): a noisy slope would move a
            # configuration that worked, e.g. over the divergence cliff above the best lr.
            if d.kind != "choice" and f is not None and d.name in params and abs(f.slope) >= 2 * f.slope_se:
                params[d.name] = from_own(d, own(d, params[d.name]) + f.slope * (target - math.log(size.n_params)))
        params = {d.name: params[d.name] for d in space.searched() if d.name in params}
        if space.contains(params) is None and params not in out:
            out.append(params)
    return tuple(out)


def _anchor(f: DimensionFit, size: SizeTrials, name: str, combination: Mapping[str, Any], target: float) -> float:
    """The size's best trial of `name` moved to the target size along the slope and to `combination`
    by the option shifts (nan where it has no value, or a shift is unknown)."""
    best = max(((v, p[name], o) for p, v, o in zip(size.points, size.scores, size.options or ({},) * len(size.points))
                if name in p), default=None, key=lambda item: item[0])
    if best is None:
        return math.nan
    here, there = f.at(best[2]), f.at(combination)
    if here is None or there is None:
        return math.nan
    return best[1] - here[0] + there[0] + f.slope * (target - math.log(size.n_params))


def _band(d: Dimension, combination: tuple[tuple[str, Any], ...], centre: float, half: float,
          anchors: Sequence[float]) -> Band:
    """centre ± half inside the original bounds, widened toward an anchor at (or past) an edge."""
    lo0, hi0 = own_bounds(d) if d.kind != "normal" else (-math.inf, math.inf)
    width = min(2 * half, hi0 - lo0)
    low = min(max(centre - half, lo0), hi0 - width)  # a centre beyond a bound: the band sits at that bound
    high = low + width if centre - half < lo0 or centre + half > hi0 else centre + half
    widened = False
    for a in anchors:
        edge = EDGE * (high - low)
        if a > high - edge and high < hi0:
            high, widened = min(a + half, hi0), True
        if a < low + edge and low > lo0:
            low, widened = max(a - half, lo0), True
    if d.kind in QUANTIZED_KINDS:
        low, high = _snap(d, low, high)
    return Band(d.name, combination, low, high, centre, widened)


def _snap(d: Dimension, low: float, high: float) -> tuple[float, float]:
    """Own-scale band bounds at multiples of q, outward, inside the original's, at least one q apart."""
    q = d.args[2]
    lo_q = max(round(d.args[0] / q), 1 if d.kind in LOG_KINDS else -math.inf) * q
    hi_q = round(d.args[1] / q) * q
    a = max(math.floor(real(d, low) / q) * q, lo_q)
    b = min(math.ceil(real(d, high) / q) * q, hi_q)
    if b - a < q:
        a, b = (a, a + q) if a + q <= hi_q else (b - q, b)
    return own(d, a), own(d, b)


def _hyperopt_args(d: Dimension) -> tuple:
    """The dimension's arguments as hyperopt takes them: log-scale bounds as logs (as `to_hyperopt`)."""
    if d.kind in LOG_KINDS:
        return (math.log(d.args[0]), math.log(d.args[1]), *d.args[2:])
    return tuple(d.args)


def _dist_expr(d: Dimension, kind: str, args: tuple, label: str) -> Any:
    """`hp.<kind>(label, *args)`, int-valued for an integer dimension."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    expr = getattr(hp, kind)(label, *args)
    return scope.int(expr) if d.integer else expr


def _near_expr(d: Dimension, b: Band, label: str) -> Any:
    """The narrowed distribution of `d` over band `b` (own-scale bounds, as hyperopt takes them)."""
    from hyperopt import hp

    if d.kind == "normal":
        return hp.uniform(label, b.low, b.high)
    return getattr(hp, d.kind)(label, b.low, b.high, *d.args[2:])


def _choice_weights(d: Dimension, kept: Sequence[NeighbourTrials], top_k: int, outside: float) -> tuple[float, ...]:
    """Options weighted by the neighbours' top trials (rank weights, one vote per neighbour, plus one
    pseudo-vote spread evenly), mixed with the uniform at `outside`: every option stays > 0."""
    k = len(d.args)
    votes = np.full(k, 1.0 / k)
    for n in kept:
        scored = sorted((s for s in n.trials if math.isfinite(s[1])), key=lambda s: -s[1])
        if not scored:
            continue
        median = float(np.median([s for _, s in scored]))
        top = [p for p, s in scored if s >= median][:top_k]
        for w, params in zip(rank_weights(len(top)), top):
            index = next((i for i, o in enumerate(d.args) if same_option(o, params.get(d.name))), None)
            if index is not None:
                votes[index] += w
    p = (1 - outside) * votes / votes.sum() + outside / k
    return tuple(float(x) for x in p)
