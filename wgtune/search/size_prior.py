"""Size-aware transfer: how each numeric hyperparameter's optimum moves with model size.

Why a fixed box around the neighbours is not enough. Under the standard parameterisation (SP:
PyTorch's default initialisation and one global learning rate), the optimal learning rate of a
network is not stable across sizes: it shifts as the width grows (Yang et al. 2022, "Tensor
Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer",
arXiv:2203.03466; the repository microsoft/mup, README.md, "Figure above: training loss against
learning rate on Transformers of varying d_model", shows the SP optimum drifting while the μP one
stays) and as the depth grows (Bordelon, Noci, Li, Hanin & Pehlevan 2023, "Depthwise
Hyperparameter Transfer in Residual Networks: Dynamics and Scaling Limit", arXiv:2309.16620;
Yang, Yu, Zhu & Hayou 2023, "Tensor Programs VI: Feature Learning in Infinite-Depth Neural
Networks", arXiv:2310.02244). Every model of this study is in SP (timm's ResNets and ViTs, one lr
per trial), so the optimum of a new size is, to first order, a power law of its size: linear in
log N, in the log of a log-scale hyperparameter. Everett et al. 2024 ("Scaling Exponents Across
Parameterizations and Optimizers", arXiv:2407.05872) measure such exponents per optimizer; we do
not assume theirs, we fit ours from the sizes a study has already searched, and say how sure the
fit is. Nothing here assumes that the slope is non-zero: a hyperparameter whose optimum does not
move gets a slope near 0 and the fit says so.

The method, per numeric hyperparameter, in the dimension's own scale (the log for a log-scale
dimension; ``u = ln N``):

0. The optimum of a numeric hyperparameter depends on the choices made with it: SGD's best lr lies
   one to two decades above AdamW's, and a larger batch wants a larger lr. A size's top trials
   mix those choices, so their raw values are bimodal and locate nothing. The fit is therefore
   conditional: over every size's top trials at once, a weighted least-squares regression of the
   value on one indicator per size (absorbing size) and one per non-reference option of each
   choice (the reference: the option its top trials use most) estimates each option's shift
   ("within-size" contrasts, the fixed-effects estimator of panel regression; each option is an
   additive shift in the dimension's own scale, a log-lr offset for a log-scale lr). An option
   with no within-size contrast among the top trials (never used, or only where nothing else is)
   has no estimable shift: its trials are left out of the fit and `DimensionFit.at` says
   "unknown" for it. With fewer than 2 residual degrees of freedom there is no conditioning (one
   marginal fit for every option). Every value is then moved to the reference combination before
   the steps below, and a prediction for another combination adds its shifts, and their
   variance, to the reference's.
1. Each searched size i gives an estimate of where its optimum lies: the rank-weighted mean of its
   top trials (at most `top_k`, and only those scoring at least the median of that size's trials:
   a quality floor, so a short or failed search cannot offer its worst trials as "top"). The rank
   weights are CMA-ES's recombination weights w_j = ln(k + 1/2) - ln j (Hansen 2016, "The CMA
   Evolution Strategy: A Tutorial", arXiv:1604.00772, eq. 49). Its uncertainty treats the optimum
   as one more draw from the region the top trials occupy: v_i = s_i² (1 + 1/n_eff,i) + `min_sd`²,
   with s_i² the (unweighted) variance of the top trials' values and n_eff,i = 1/sum w² (more top
   trials give a size more weight, a tighter cloud of them too; the floor keeps one trial, or
   identical ones, from being certain). s_i² is pooled with the other sizes' in proportion to
   degrees of freedom (2 prior degrees of freedom from the pool), so a size with one or two top
   trials borrows a spread rather than claiming none. Deliberately not a standard error (s²/n):
   the top trials of a 20-trial TPE search are not independent draws centred on the optimum (TPE
   samples near what it has found, and a surface is asymmetric, e.g. the divergence cliff above
   the best lr leaves more good trials below the optimum than above it). Measured on the
   surfaces of `bench/prior_coverage.py` (a size's own estimate against its known best, 60
   repetitions x 4 sizes x 2 families): (error / sd) has standard deviation 0.93-1.03 this way,
   1.2-1.3 with rank-weighted s², 3-4 with a standard error.
2. Across sizes, a weighted linear regression of the estimates on u with weights 1/v_i, the
   random-effects meta-regression of DerSimonian & Laird (1986, "Meta-analysis in clinical
   trials"): with 3 or more sizes, scatter about the line beyond what the v_i explain is
   estimated by the method of moments as tau² (how far a size's optimum strays from any straight
   line), and the weights become 1/(v_i + tau²). A fraction `SHARED` of each v_i is an error every
   size makes alike (the same search on the same kind of surface: the cliff above pulls every
   size's estimate of the best lr down), which moves the line, not its slope, and does not
   average out over sizes: the regression weighs sizes by their own part (1 - SHARED) v_i, and
   the prediction adds SHARED · v̄ (v̄ the harmonic mean of the v_i). SHARED = 0.25 is measured,
   not derived: on the benchmark surfaces bias² / (bias² + variance) of a size's estimate is
   0.22-0.29 for lr (the per-size errors are otherwise uncorrelated across sizes, |r| < 0.05),
   0.07 for weight decay. The slope has a zero-mean Gaussian prior of sd `slope_prior_sd` (below),
   so two close sizes, which cannot pin a slope, give a slope near 0 with that standard error
   rather than a wild one with a huge one; sizes that do pin it (far apart, tight estimates) give
   the data's slope.
3. At the target size u*, the centre is the line's value and the band a prediction interval
   (Higgins, Thompson & Spiegelhalter 2009, "A re-evaluation of random-effects meta-analysis",
   J. R. Stat. Soc. A, sec. 4.2): variance = the line's variance at u* + tau² + SHARED · v̄, whose
   first term grows with (u* - ū)²: a target beyond the largest (or smallest) size searched gets a wider
   band than one between them, the more so the further out. The band is centre ± z sd with z the
   normal quantile of `level`. Deviation: Higgins et al. use a t quantile with m - 2 degrees of
   freedom; with the 2 to 4 sizes of a study that is infinite or 12.7 (m = 3), i.e. no band at
   all, so we use the normal quantile and keep the random-effects term.
4. With one size there is no slope to fit: the slope is the prior's, 0, with its standard error
   `slope_prior_sd` (0.5 per unit ln N: under μP, Adam's hidden-layer lr scales as 1/fan_in, Yang
   et al. 2022, i.e. -1 per unit ln width and -0.5 per unit ln N at fixed depth, the size of drift
   SP leaves uncorrected), so the band widens with the size gap |u* - u_1| as
   sd² = v_1 + (slope_prior_sd · |u* - u_1|)².

Plain data in and out (no MLflow, Ray or hyperopt); `wgtune.search.soft_prior` turns a fit into
a search prior.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DimensionFit", "LEVEL", "OptionEffect", "SLOPE_PRIOR_SD", "SizeEstimate", "SizeFit", "SizeTrials",
           "TOP_K", "fit_sizes", "rank_weights", "same_option"]

LEVEL = 0.95
"""Nominal coverage of a band: the probability that the target's optimum lies inside it."""
TOP_K = 12
"""Trials per size that locate its optimum (at most; fewer where fewer pass the median-score floor)."""
SLOPE_PRIOR_SD = 0.5
"""Standard error of the slope when one size alone is known (own-scale units per unit ln N)."""
POOL_DOF = 2.0
"""Degrees of freedom the spread pooled over sizes lends each size's own spread."""
SHARED = 0.25
"""Fraction of a size's estimation variance shared by every size (a habit of the search, not chance; step 2)."""


@dataclass(frozen=True)
class SizeTrials:
    """The scored trials of one searched size of a family, as the fit reads them.

    `points[j]` maps a numeric hyperparameter to trial j's value in the dimension's own scale (the
    natural log for a log-scale one); a trial may lack a name (it then says nothing about it).
    `scores[j]` is trial j's objective, higher is better. `options[j]`, if given, maps each choice
    hyperparameter to trial j's option: the fit is then conditional on them (step 0).
    """

    n_params: int
    points: tuple[Mapping[str, float], ...]
    scores: tuple[float, ...]
    label: str = ""
    options: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.n_params <= 0:
            raise ValueError(f"SizeTrials {self.label!r}: n_params must be > 0, got {self.n_params}")
        if len(self.points) != len(self.scores) or self.options and len(self.options) != len(self.points):
            raise ValueError(f"SizeTrials {self.label!r}: {len(self.points)} points, {len(self.scores)} scores "
                             f"and {len(self.options)} option sets; need one score (and option set) per point")


@dataclass(frozen=True)
class SizeEstimate:
    """Where one size's optimum of one hyperparameter lies, at the reference combination of choices:
    its top trials' weighted centre and the uncertainty of that location (sd, own scale)."""

    label: str
    log_n: float
    centre: float
    sd: float
    n_top: int


@dataclass(frozen=True)
class OptionEffect:
    """How far the optimum moves (own scale) when `choice` takes `option` instead of the reference."""

    choice: str
    option: Any
    shift: float


@dataclass(frozen=True)
class DimensionFit:
    """The fit of one hyperparameter across sizes, and its prediction at the target size.

    `slope`: own-scale units per unit ln N (for a log-scale dimension, the exponent a of
    value ∝ N^a); `slope_se` its standard error. `centre`, `sd`: the predicted optimum at the
    target under the `reference` combination of choices, and its standard deviation; `low`,
    `high`: the band centre ± z·sd at the fit's level. `effects` (covariance `effects_cov`): the
    shift of each other option seen among the top trials; `at` predicts for any combination.
    `extrapolation`: how far (in ln N) the target lies outside the sizes searched, 0 inside.
    `tau`: the random-effects scatter of sizes about the line (0 with fewer than 3 sizes).
    """

    name: str
    slope: float
    slope_se: float
    centre: float
    sd: float
    low: float
    high: float
    extrapolation: float
    tau: float
    sizes: tuple[SizeEstimate, ...]
    z: float
    reference: tuple[tuple[str, Any], ...] = ()
    effects: tuple[OptionEffect, ...] = ()
    effects_cov: tuple[tuple[float, ...], ...] = ()

    def at(self, options: Mapping[str, Any]) -> tuple[float, float] | None:
        """(centre, sd) of the target's optimum under `options` (choice -> option; a choice the fit
        is not conditioned on is ignored, an absent one keeps the reference), or None when one of
        the options has no estimable shift (it never met another option among the top trials)."""
        reference = dict(self.reference)
        use = np.zeros(len(self.effects))
        for choice, option in options.items():
            if choice not in reference or same_option(option, reference[choice]):
                continue
            index = next((i for i, e in enumerate(self.effects)
                          if e.choice == choice and same_option(e.option, option)), None)
            if index is None:
                return None
            use[index] = 1.0
        if not use.any():
            return self.centre, self.sd
        shifts = np.array([e.shift for e in self.effects])
        var = self.sd**2 + float(use @ np.array(self.effects_cov) @ use)
        return self.centre + float(use @ shifts), math.sqrt(var)

    def band(self, options: Mapping[str, Any]) -> tuple[float, float] | None:
        """centre ± z·sd under `options` (see `at`), or None where unknown."""
        found = self.at(options)
        return None if found is None else (found[0] - self.z * found[1], found[0] + self.z * found[1])

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-ready: slope, centre and band (own scale), option shifts, per-size estimates."""
        return {
            "slope": self.slope, "slope_se": self.slope_se, "centre": self.centre, "sd": self.sd,
            "band": [self.low, self.high], "extrapolation_ln_n": self.extrapolation, "tau": self.tau,
            "reference": {choice: option for choice, option in self.reference},
            "option_shifts": [{"choice": e.choice, "option": e.option, "shift": e.shift,
                               "se": math.sqrt(self.effects_cov[i][i])} for i, e in enumerate(self.effects)],
            "sizes": [{"label": s.label, "n_params": round(math.exp(s.log_n)), "centre": s.centre, "sd": s.sd,
                       "top_trials": s.n_top} for s in self.sizes],
        }


@dataclass(frozen=True)
class SizeFit:
    """Every numeric hyperparameter's fit for one target size (names without data are absent)."""

    target_n_params: int
    level: float
    dims: Mapping[str, DimensionFit] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-ready provenance of the fit (for `priors.json` and `wgtune priors`)."""
        return {"target_n_params": self.target_n_params, "level": self.level,
                "dims": {name: fit.describe() for name, fit in self.dims.items()}}


def rank_weights(k: int) -> np.ndarray:
    """CMA-ES's positive recombination weights for ranks 1..k, normalised to sum 1 (Hansen 2016, eq. 49)."""
    if k < 1:
        raise ValueError(f"rank_weights: k must be >= 1, got {k}")
    raw = math.log(k + 0.5) - np.log(np.arange(1, k + 1))
    return raw / raw.sum()


def same_option(a: Any, b: Any) -> bool:
    """Option equality as a choice means it: True is not 1 (Python says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def fit_sizes(
    sizes: Sequence[SizeTrials],
    target_n_params: int,
    names: Sequence[str],
    *,
    min_sd: Mapping[str, float] | None = None,
    top_k: int = TOP_K,
    level: float = LEVEL,
    slope_prior_sd: float = SLOPE_PRIOR_SD,
) -> SizeFit:
    """Fit how each hyperparameter in `names` moves with ln N across `sizes`; predict at the target.

    `min_sd[name]` floors each size's location uncertainty (own scale; 0 if absent): the soft prior
    passes a fraction of the dimension's range. Sizes that share a parameter count are pooled as one
    (their trials together). A name no size has a value for is left out of the result.
    """
    if target_n_params <= 0:
        raise ValueError(f"fit_sizes: target_n_params must be > 0, got {target_n_params}")
    if not 0 < level < 1:
        raise ValueError(f"fit_sizes: level must lie in (0, 1), got {level}")
    if top_k < 1 or slope_prior_sd < 0:
        raise ValueError(f"fit_sizes: needs top_k >= 1 and slope_prior_sd >= 0, got {top_k}, {slope_prior_sd}")
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    target = math.log(target_n_params)
    pooled = _pool(sizes)
    dims = {}
    for name in names:
        tops = [t for t in (_top(s, name, top_k) for s in pooled) if t]
        if not tops:
            continue
        effects = _option_effects(tops)
        estimates = _estimates(tops, effects, float((min_sd or {}).get(name, 0.0)))
        if estimates:
            dims[name] = _regress(name, estimates, target, z, slope_prior_sd, effects)
    return SizeFit(target_n_params, level, dims)


@dataclass(frozen=True)
class _Trial:
    """One top trial of one size: its value, options and rank (0 = best)."""

    size: SizeTrials
    value: float
    options: Mapping[str, Any]
    rank: int


@dataclass(frozen=True)
class _Effects:
    """Step 0's result: the reference combination, the estimable shifts and their covariance."""

    reference: tuple[tuple[str, Any], ...] = ()
    effects: tuple[OptionEffect, ...] = ()
    cov: tuple[tuple[float, ...], ...] = ()

    def adjust(self, trial: _Trial) -> float | None:
        """The trial's value moved to the reference combination; None where a shift is unknown."""
        value = trial.value
        for choice, ref in self.reference:
            option = trial.options.get(choice)
            if option is None or same_option(option, ref):
                continue
            effect = next((e for e in self.effects if e.choice == choice and same_option(e.option, option)), None)
            if effect is None:
                return None
            value -= effect.shift
        return value


def _pool(sizes: Sequence[SizeTrials]) -> list[SizeTrials]:
    """One SizeTrials per parameter count: two cells of one size are one point of the regression."""
    by_n: dict[int, list[SizeTrials]] = {}
    for s in sizes:
        by_n.setdefault(s.n_params, []).append(s)
    merged = []
    for n, group in sorted(by_n.items()):
        if len(group) == 1:
            merged.append(group[0])
            continue
        options = tuple(o for s in group for o in (s.options or ({},) * len(s.points)))
        points = tuple(p for s in group for p in s.points)
        scores = tuple(v for s in group for v in s.scores)
        merged.append(SizeTrials(n, points, scores, "+".join(s.label for s in group), options))
    return merged


def _top(size: SizeTrials, name: str, top_k: int) -> list[_Trial]:
    """The size's top trials of `name`: at most `top_k`, none scoring below the size's median, best first."""
    options = size.options or ({},) * len(size.points)
    scored = [(v, p[name], o) for p, v, o in zip(size.points, size.scores, options)
              if name in p and math.isfinite(v) and math.isfinite(p[name])]
    if not scored:
        return []
    median = statistics.median(v for v, _, _ in scored)
    ranked = sorted((item for item in scored if item[0] >= median), key=lambda item: -item[0])[:top_k]
    return [_Trial(size, x, o, rank) for rank, (_, x, o) in enumerate(ranked)]


def _option_effects(tops: list[list[_Trial]]) -> _Effects:
    """Step 0: each option's shift from within-size contrasts, by weighted least squares."""
    trials = [t for size in tops for t in size]
    size_of = [i for i, size in enumerate(tops) for _ in size]
    weights = np.concatenate([rank_weights(len(size)) * len(size) for size in tops])  # mean 1 per trial
    choices = sorted({c for t in trials for c in t.options})
    if not choices:
        return _Effects()
    reference = [(choice, _most_weighted([t.options.get(choice) for t in trials], weights)) for choice in choices]
    columns = [np.array([float(s == i) for s in size_of]) for i in range(len(tops))]
    kept: list[tuple[str, Any]] = []
    for choice, ref in reference:
        for option in _distinct(t.options.get(choice) for t in trials):
            if same_option(option, ref):
                continue
            column = np.array([float(same_option(t.options.get(choice), option)) for t in trials])
            if np.linalg.matrix_rank(np.column_stack([*columns, column])) > len(columns):  # a within-size contrast
                columns.append(column)
                kept.append((choice, option))
    # Trials with an option whose shift is not estimable stay out of the fit.
    known = np.array([all(same_option(t.options.get(c), r) or any(k == c and same_option(o, t.options.get(c))
                                                                   for k, o in kept)
                          for c, r in reference) for t in trials])
    x = np.column_stack(columns)[known]
    y, w = np.array([t.value for t in trials])[known], weights[known]
    x = x[:, x.any(axis=0) | (np.arange(x.shape[1]) >= len(tops))]  # a size left without trials has no column
    n_sizes = x.shape[1] - len(kept)
    dof = len(y) - x.shape[1]
    xtwx = (x.T * w) @ x
    if not kept or dof < 2 or np.linalg.matrix_rank(xtwx) < x.shape[1]:
        return _Effects()
    inv = np.linalg.inv(xtwx)
    beta = inv @ ((x.T * w) @ y)
    resid2 = float(w @ (y - x @ beta) ** 2) / dof
    cov = resid2 * inv[n_sizes:, n_sizes:]
    effects = tuple(OptionEffect(c, o, float(b)) for (c, o), b in zip(kept, beta[n_sizes:]))
    return _Effects(tuple(reference), effects, tuple(tuple(float(v) for v in row) for row in cov))


def _distinct(options: Any) -> list[Any]:
    """The options in first-seen order, once each (as `same_option` compares them)."""
    out: list[Any] = []
    for option in options:
        if not any(same_option(option, o) for o in out):
            out.append(option)
    return out


def _most_weighted(options: list[Any], weights: np.ndarray) -> Any:
    """The option with the largest total weight (the first of equals)."""
    distinct = _distinct(options)
    totals = [sum(float(w) for o, w in zip(options, weights) if same_option(o, d)) for d in distinct]
    return distinct[int(np.argmax(totals))]


def _estimates(tops: list[list[_Trial]], effects: _Effects, floor: float) -> list[SizeEstimate]:
    """Step 1: each size's optimum at the reference combination, its uncertainty as a new draw's."""
    per_size = []
    for size in tops:
        values = [v for v in (effects.adjust(t) for t in size) if v is not None]  # best first still
        if values:
            x = np.array(values)
            w = rank_weights(len(x))
            centre = float(w @ x)
            spread2 = float(np.var(x, ddof=1)) if len(x) > 1 else 0.0  # the region, not the weighted centre's
            per_size.append((size[0].size, centre, spread2, len(x), float(1 / (w @ w))))
    dof = [n - 1 for _, _, _, n, _ in per_size]
    pooled = sum(d * s2 for d, (_, _, s2, _, _) in zip(dof, per_size)) / sum(dof) if sum(dof) else 0.0
    out = []
    for d, (size, centre, spread2, n, n_eff) in zip(dof, per_size):
        shrunk = (d * spread2 + POOL_DOF * pooled) / (d + POOL_DOF)
        out.append(SizeEstimate(size.label, math.log(size.n_params), centre,
                                math.sqrt(shrunk * (1 + 1 / n_eff) + floor**2), n))
    return out


def _regress(name: str, estimates: list[SizeEstimate], target: float, z: float, slope_prior_sd: float,
             effects: _Effects) -> DimensionFit:
    """Steps 2-4: random-effects weighted regression on ln N; prediction interval at `target`."""
    u = np.array([e.log_n for e in estimates])
    y = np.array([e.centre for e in estimates])
    v = np.array([max(e.sd, 1e-12) ** 2 for e in estimates])  # a zero floor must not divide by zero
    outside = float(max(u.min() - target, target - u.max(), 0.0))
    x = np.column_stack([np.ones_like(u), u - u.mean()])
    own = (1 - SHARED) * v  # the part of each size's error that is its own: it averages out over sizes
    prior = np.diag([0.0, 1 / slope_prior_sd**2 if slope_prior_sd > 0 else 1e12])
    beta, cov = _wls(x, y, 1 / own, prior)
    tau2 = 0.0
    if len(estimates) >= 3:
        w = 1 / own
        fixed = np.linalg.inv((x.T * w) @ x)  # method of moments on the fixed-effects fit, without the prior
        q = float(w @ (y - x @ (fixed @ ((x.T * w) @ y))) ** 2)
        trace = w.sum() - np.trace(fixed @ (x.T * w**2) @ x)  # tr(P), P = W - W X (X'WX)^-1 X'W
        tau2 = max(0.0, (q - (len(estimates) - 2)) / trace) if trace > 0 else 0.0
        beta, cov = _wls(x, y, 1 / (own + tau2), prior)
    at = np.array([1.0, target - u.mean()])
    shared = SHARED * len(v) / float(np.sum(1 / v))  # the shared part does not average out
    centre, var = float(at @ beta), float(at @ cov @ at) + tau2 + shared
    sd = math.sqrt(var)
    return DimensionFit(name, float(beta[1]), math.sqrt(cov[1, 1]), centre, sd, centre - z * sd, centre + z * sd,
                        outside, math.sqrt(tau2), tuple(estimates), z, effects.reference, effects.effects, effects.cov)


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares with known variances 1/w and a zero-mean Gaussian prior of precision
    `prior` on the coefficients: posterior mean and covariance."""
    cov = np.linalg.inv((x.T * w) @ x + prior)
    return cov @ ((x.T * w) @ y), cov
