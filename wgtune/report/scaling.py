"""Curves of worst-group accuracy over model size, one per parameterisation, and their fits.

A series is one parameterisation of one family (data set, objective and pretraining fixed): sizes
that differ along one axis of the family's architecture (a ResNet depth ladder at width 1, or
`resnet-18xW` widths at depth 18; ViT depth or embedding width), as a scaling law is read along
one axis (Kaplan et al. 2020 and Hoffmann et al. 2022 fit width/depth shapes apart). A cell can sit
on two series (resnet-18 is on both ladders). Sizes the family cannot parse form one `size` series;
sizes that differ along several axes with no two sharing one form a `mixed` series, drawn but
not fitted.

Each series is fitted twice (`fit.py`): the log-log slope (3+ sizes) and the power law with
asymptote (4+ sizes), and both get a percentile bootstrap interval that resamples every cell's
final seeds and its search outcome (`noise.replicates`), so the interval carries seed-to-seed and
search-to-search noise, not only the fit's residuals.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

from wgtune.report.fit import (
    BETA_MAX,
    BETA_MIN,
    FitError,
    LogSlope,
    PowerLaw,
    fit_log_slope,
    fit_log_slope_many,
    fit_power_law,
    fit_power_law_many,
)
from wgtune.report.noise import CellSamples, TuningNoise, replicates

if TYPE_CHECKING:
    from wgtune.report.stats import Estimate

__all__ = ["AXES", "BOOTSTRAP", "CurvePoint", "Series", "SeriesFit", "fit_series", "group_series", "size_axes"]

AXES = ("depth", "width", "embed_dim")
"""Architecture numbers a size varies along (the keys of `ModelFamily.parse`), in the order labels name them."""
BOOTSTRAP = 400
"""Bootstrap replicates per series: percentile 95% ends move by ~1% of the interval between reports."""
MIN_SLOPE_SIZES, MIN_LAW_SIZES = 3, 4
FINAL = "final"  # the status of a cell with final seeds (build.FINAL names the same phase)


class CurvePoint(NamedTuple):
    """One cell on a curve: its size, test worst-group and average accuracy, and what they are made of."""

    n_params: int
    model: str
    cell_id: str
    status: str
    worst: Estimate
    avg: Estimate | None
    samples: CellSamples = CellSamples()
    tuning: TuningNoise | None = None
    n_failed: int = 0


@dataclass(frozen=True)
class Series:
    """The cells of one data set, family, objective, pretraining and size axis, by size; `label` names it."""

    dataset: str
    family: str
    objective: str
    pretrained: bool
    label: str
    points: tuple[CurvePoint, ...]
    axis: str = "size"
    fixed: str = ""


@dataclass(frozen=True)
class SeriesFit:
    """A series' fits (`slope`, `law`), their bootstrap intervals, or the `reason` there is none."""

    dataset: str
    family: str
    objective: str
    pretrained: bool
    label: str
    n_sizes: int
    axis: str = "size"
    law: PowerLaw | None = None
    slope: LogSlope | None = None
    weighted: bool = False
    beta_interval: tuple[float, float] | None = None
    slope_interval: tuple[float, float] | None = None
    p_falling: float | None = None
    """Share of bootstrap replicates whose log-log slope is negative (error falling with size)."""
    n_boot: int = 0
    reason: str | None = None
    notes: tuple[str, ...] = ()


def size_axes(family: str, size: str) -> dict[str, float] | None:
    """The architecture numbers of a size (`{"depth": 18, "width": 0.5}`), or None if the family cannot say."""
    from trainables.models import FAMILIES

    try:
        arch = FAMILIES.get(family).parse(size)
    except (ValueError, KeyError):
        return None
    return {a: float(arch[a]) for a in AXES if a in arch}


def group_series(entries: Iterable[tuple[tuple[str, str, str, bool], str, CurvePoint]]) -> tuple[Series, ...]:
    """Series from (dataset, family, objective, pretrained), size, point; sorted, each by size."""
    groups: dict[tuple[str, str, str, bool], list[tuple[str, CurvePoint]]] = {}
    for key, size, point in entries:
        groups.setdefault(key, []).append((size, point))
    families: dict[str, set[str]] = {}
    for dataset, family, _, _ in groups:
        families.setdefault(dataset, set()).add(family)
    out = []
    for key, members in sorted(groups.items()):
        dataset, family, objective, pretrained = key
        parts = _by_axis(family, members)
        base = objective + ("+pt" if pretrained else "")
        if len(families[dataset]) > 1:  # sizes of two families are not one curve
            base = f"{family} {base}"
        for axis, fixed, pts in parts:
            label = base if len(parts) == 1 else f"{base} · {axis}" + (f" ({fixed})" if fixed else "")
            out.append(Series(dataset, family, objective, pretrained, label,
                              tuple(sorted(pts, key=lambda p: (p.n_params, p.model))), axis, fixed))
    return tuple(out)


def _by_axis(family: str, members: list[tuple[str, CurvePoint]]) -> list[tuple[str, str, list[CurvePoint]]]:
    parsed = [(size_axes(family, size), p) for size, p in members]
    known = [(dims, p) for dims, p in parsed if dims is not None]
    unknown = [p for dims, p in parsed if dims is None]
    parts: list[tuple[str, str, list[CurvePoint]]] = []
    covered: set[str] = set()
    for axis in AXES:
        buckets: dict[tuple[tuple[str, float], ...], list[CurvePoint]] = {}
        for dims, p in known:
            if axis in dims:
                rest = tuple(sorted((a, v) for a, v in dims.items() if a != axis))
                buckets.setdefault(rest, []).append(p)
        for rest, pts in sorted(buckets.items()):
            if len({p.n_params for p in pts}) >= 2:
                parts.append((axis, ", ".join(f"{a} {v:g}" for a, v in rest), pts))
                covered.update(p.cell_id for p in pts)
    left = [p for _, p in known if p.cell_id not in covered]
    if left:
        distinct = {tuple(sorted(d.items())) for d, p in known if p.cell_id not in covered}
        parts.append(("mixed" if len(distinct) > 1 else "size", "", left))
    if unknown:
        parts.append(("size", "", unknown))
    return parts


def fit_series(series: Series, confidence: float = 0.95, n_boot: int = BOOTSTRAP) -> SeriesFit:
    """Fit worst-group error vs size over the series' final-seed points, with bootstrap intervals.

    Weighted by each point's standard error of the mean (floored) when every point has one, else
    unweighted. The slope needs ≥ 3 sizes, the power law ≥ 4; either is flagged below 2 residual
    degrees of freedom. Search-only points (one run) are on the curve but not in the fit.
    """
    key: dict[str, Any] = dict(dataset=series.dataset, family=series.family, objective=series.objective,
                               pretrained=series.pretrained, label=series.label, axis=series.axis)
    pts = [p for p in series.points if p.status == FINAL]
    sizes = len({p.n_params for p in pts})
    others = len(series.points) - len(pts)
    if series.axis == "mixed":
        return SeriesFit(**key, n_sizes=sizes, reason="sizes differ along more than one axis with none shared: "
                                                      "not one parameterisation, not fitted")
    if sizes < MIN_SLOPE_SIZES:
        extra = f"; {others} more search only" if others else ""
        return SeriesFit(**key, n_sizes=sizes, reason=f"needs ≥ {MIN_SLOPE_SIZES} sizes with final seeds "
                                                      f"(has {sizes}{extra})")
    xs = [p.n_params for p in pts]
    errors = [1 - p.worst.mean for p in pts]
    sems = [p.worst.sem for p in pts]
    sigma = None if any(s is None for s in sems) else [float(s) for s in sems]  # type: ignore[arg-type]
    notes: list[str] = []
    if others:
        notes.append(f"{others} search-only point(s) not fitted")
    try:
        slope = fit_log_slope(xs, errors, sigma)
        law = fit_power_law(xs, errors, sigma) if sizes >= MIN_LAW_SIZES else None
    except FitError as err:
        return SeriesFit(**key, n_sizes=sizes, weighted=sigma is not None, reason=f"fit failed: {err}")
    if slope.flagged:
        notes.append(f"log-log slope on {sizes} sizes: {slope.dof} residual degree(s) of freedom, undetermined")
    if law is None:
        notes.append(f"power law needs ≥ {MIN_LAW_SIZES} sizes")
    else:
        if law.flagged:
            notes.append(f"power law on {sizes} sizes: {law.dof} residual degree(s) of freedom for 3 parameters, "
                         "A, β and C are not determined; read the slope")
        if law.beta <= BETA_MIN + 1e-6 or law.beta >= BETA_MAX - 1e-6:
            notes.append(f"β at a bound of [{BETA_MIN:g}, {BETA_MAX:g}]: these sizes do not determine it")
    boot = _bootstrap(series, pts, xs, sigma, law is not None, confidence, n_boot)
    if any(len(p.samples.final_worst) < 2 for p in pts):
        notes.append("cells with one final seed add no seed spread to the bootstrap")
    return SeriesFit(**key, n_sizes=sizes, law=law, slope=slope, weighted=sigma is not None, n_boot=n_boot,
                     notes=tuple(notes), **boot)


def _bootstrap(series: Series, pts: Sequence[CurvePoint], xs: list[int], sigma: list[float] | None,
               with_law: bool, confidence: float, n_boot: int) -> dict[str, Any]:
    """Percentile intervals of the slope and β over replicates that resample seeds and search outcomes."""
    import numpy as np

    if n_boot <= 0 or any(not p.samples.final_worst for p in pts):
        return {}
    # Seeded by the series, so the same study gives the same report.
    seed = int.from_bytes(hashlib.sha256(f"{series.dataset}/{series.label}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    errors = 1 - np.stack([replicates(p.samples, n_boot, rng) for p in pts], axis=1)  # (n_boot, n points)
    tail = 100 * (1 - confidence) / 2
    slopes, _ = fit_log_slope_many(xs, errors, sigma)
    out: dict[str, Any] = dict(slope_interval=tuple(float(v) for v in np.percentile(slopes, [tail, 100 - tail])),
                               p_falling=float(np.mean(slopes < 0)))
    if with_law:
        _, betas, _ = fit_power_law_many(xs, errors, sigma)
        out["beta_interval"] = tuple(float(v) for v in np.percentile(betas, [tail, 100 - tail]))
    return out
