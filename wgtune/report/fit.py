"""Two fits of worst-group error against model size, both free to say that error rises with size.

- `PowerLaw`: L(N) = A·(N/scale)^(-β) + C with β in (0, 3] and A of either sign (A < 0: error rises
  towards C as models grow), fitted by variable projection: for a fixed β the law is linear in
  (A, C), so the weighted least-squares (A, C) is closed-form and only β is searched, on a grid and
  then by a bounded scalar minimisation. The earlier fit bounded A > 0 and fitted rising data to
  β ≈ 0 with a meaningless standard error (issue 14); here a rising trend is a negative A.
- `LogSlope`: the weighted least-squares slope of log(error) on log(N), a 2-parameter summary with
  its sign (slope < 0: error falls with size), readable with as few as 3 sizes.

Both have a `_many` form that fits B replicate error vectors at once (numpy broadcasting), so a
bootstrap of a few hundred replicates costs milliseconds (`wgtune.report.scaling`). A fit with
fewer than `MIN_RESIDUAL_DOF` residual degrees of freedom is returned but `flagged`: its
parameters are not determined by the data (4 sizes leave a 3-parameter law 1 degree of freedom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BETA_MAX", "ERROR_FLOOR", "FIT_SCALE", "MIN_RESIDUAL_DOF", "SIGMA_FLOOR", "FitError", "LogSlope", "PowerLaw",
    "fit_log_slope", "fit_log_slope_many", "fit_power_law", "fit_power_law_many",
]

FIT_SCALE = 1e6
"""Sizes are fitted as N / 1e6: A stays near 0.01–1 instead of spanning ten orders of magnitude."""
SIGMA_FLOOR = 1e-3
"""Smallest weight sigma (0.1 point of accuracy): seeds that agree by chance must not pin the fit."""
ERROR_FLOOR = 1e-3
"""Error below which log(error) is taken at this value (a perfect cell would be log 0)."""
BETA_MAX = 3.0
"""Largest exponent searched; near β = 0 the law's two terms are collinear, so the grid starts at BETA_MIN."""
BETA_MIN = 0.01
MIN_RESIDUAL_DOF = 2
"""Fewer residual degrees of freedom than this (points − parameters) and a fit is flagged as undetermined."""
_GRID = 300  # β grid points; the best is refined by a bounded scalar search (single fits) or a parabola (many)


class PowerLaw(NamedTuple):
    """Worst-group error L(N) = A·(N/scale)^(-β) + C; A < 0 is error rising with N towards C."""

    A: float
    beta: float
    C: float
    n_points: int
    scale: float = FIT_SCALE

    def __call__(self, n_params: Any) -> Any:
        """The fitted error at `n_params` (a number or a numpy array)."""
        return self.A * (n_params / self.scale) ** -self.beta + self.C

    @property
    def dof(self) -> int:
        """Residual degrees of freedom: points − 3."""
        return self.n_points - 3

    @property
    def flagged(self) -> bool:
        """Fewer than MIN_RESIDUAL_DOF residual degrees of freedom: the three parameters are not determined."""
        return self.dof < MIN_RESIDUAL_DOF

    @property
    def trend(self) -> str:
        """`falling` (A > 0), `rising` (A < 0) or `flat`."""
        return "falling" if self.A > 0 else "rising" if self.A < 0 else "flat"


class LogSlope(NamedTuple):
    """log L = intercept + slope·log(N/scale): slope < 0 is error falling with size, > 0 rising."""

    slope: float
    intercept: float
    n_points: int
    scale: float = FIT_SCALE

    def __call__(self, n_params: Any) -> Any:
        """The fitted error at `n_params`."""
        import numpy as np

        return np.exp(self.intercept) * (n_params / self.scale) ** self.slope

    @property
    def dof(self) -> int:
        """Residual degrees of freedom: points − 2."""
        return self.n_points - 2

    @property
    def flagged(self) -> bool:
        """Fewer than MIN_RESIDUAL_DOF residual degrees of freedom."""
        return self.dof < MIN_RESIDUAL_DOF


class FitError(RuntimeError):
    """A law could not be fitted; the message says why."""


def _inputs(n_params: Sequence[float], errors: Any, sigma: Sequence[float] | None, scale: float,
            min_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = N/scale (n,), errors as (B, n) and weights 1/σ² (n,), checked."""
    import numpy as np

    x = np.asarray(n_params, dtype=float) / scale
    y = np.atleast_2d(np.asarray(errors, dtype=float))
    if y.shape[-1] != x.size or x.ndim != 1:
        raise FitError(f"sizes and errors differ in length ({x.size} vs {y.shape[-1]})")
    if x.size < min_points:
        raise FitError(f"needs ≥ {min_points} points of (size, error), got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(y))):
        raise FitError("sizes must be positive and errors finite")
    if np.unique(x).size < min_points:
        raise FitError(f"needs ≥ {min_points} distinct sizes, got {np.unique(x).size}")
    s = np.ones_like(x) if sigma is None else np.maximum(np.asarray(sigma, dtype=float), SIGMA_FLOOR)
    return x, y, 1.0 / s**2


def _projected(x: np.ndarray, y: np.ndarray, w: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every replicate (rows of y) and every β: the weighted least-squares A, C and residual cost."""
    import numpy as np

    u = x[None, :] ** -betas[:, None]                       # (g, n): the basis (N/scale)^-β
    sw, su, suu = w.sum(), u @ w, (u * u) @ w               # scalars, (g,), (g,)
    sy, suy = y @ w, y @ (w[:, None] * u.T)                 # (B,), (B, g)
    det = sw * suu - su**2                                  # > 0 unless u is constant (β ≈ 0, or one size)
    a = (sw * suy - su * sy[:, None]) / det
    c = (suu * sy[:, None] - su * suy) / det
    cost = ((y * y) @ w)[:, None] - a * suy - c * sy[:, None]       # yᵀWy − θᵀXᵀWy at the least-squares θ
    return a, c, np.maximum(cost, 0.0)


def fit_power_law_many(n_params: Sequence[float], errors: Any, sigma: Sequence[float] | None = None,
                       scale: float = FIT_SCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, β, C), each of shape (B,), for B error vectors (rows of `errors`) at once.

    β is the best of a grid on [BETA_MIN, BETA_MAX], refined by the parabola through it and its
    neighbours (exact to ~1e-4 here, ample for a bootstrap); (A, C) are solved at that β.
    """
    import numpy as np

    x, y, w = _inputs(n_params, errors, sigma, scale, 4)
    betas = np.linspace(BETA_MIN, BETA_MAX, _GRID)
    _, _, cost = _projected(x, y, w, betas)
    i = np.clip(np.argmin(cost, axis=1), 1, _GRID - 2)
    rows = np.arange(y.shape[0])
    c0, c1, c2 = cost[rows, i - 1], cost[rows, i], cost[rows, i + 1]
    curve = c0 - 2 * c1 + c2
    step = np.where(curve > 0, 0.5 * (c0 - c2) / np.where(curve > 0, curve, 1.0), 0.0)
    beta = np.clip(betas[i] + np.clip(step, -1, 1) * (betas[1] - betas[0]), BETA_MIN, BETA_MAX)
    # At the grid's ends the parabola is not trusted: keep the end.
    at_end = np.argmin(cost, axis=1)
    beta = np.where(at_end == 0, BETA_MIN, np.where(at_end == _GRID - 1, BETA_MAX, beta))
    u = x[None, :] ** -beta[:, None]                        # (B, n): each row's basis at its own β
    sw, su, suu, sy, suy = w.sum(), u @ w, (u * u) @ w, y @ w, (y * u) @ w
    det = sw * suu - su**2
    a = (sw * suy - su * sy) / det
    c = (suu * sy - su * suy) / det
    return a, beta, c


def fit_power_law(n_params: Sequence[float], errors: Sequence[float], sigma: Sequence[float] | None = None,
                  scale: float = FIT_SCALE) -> PowerLaw:
    """Weighted least-squares L(N) = A·(N/scale)^(-β) + C, A of either sign, β in [BETA_MIN, BETA_MAX].

    Needs ≥ 4 distinct sizes (FitError otherwise); with fewer than 5 the result is `flagged`.
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    x, y, w = _inputs(n_params, errors, sigma, scale, 4)
    betas = np.linspace(BETA_MIN, BETA_MAX, _GRID)
    _, _, cost = _projected(x, y, w, betas)
    i = int(np.argmin(cost[0]))
    lo, hi = betas[max(i - 1, 0)], betas[min(i + 1, _GRID - 1)]
    found = minimize_scalar(lambda b: float(_projected(x, y, w, np.array([b]))[2][0, 0]), bounds=(lo, hi),
                            method="bounded", options={"xatol": 1e-7})
    beta = float(found.x) if found.success and found.fun <= cost[0, i] else float(betas[i])
    a, c, _ = _projected(x, y, w, np.array([beta]))
    return PowerLaw(float(a[0, 0]), beta, float(c[0, 0]), int(x.size), scale)


def fit_log_slope_many(n_params: Sequence[float], errors: Any, sigma: Sequence[float] | None = None,
                       scale: float = FIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) of log(error) on log(N/scale) for B error vectors at once.

    Weighted by 1/σ_log², σ_log = σ/error (the delta method), with the errors of the point fit
    when `sigma` is given; errors below ERROR_FLOOR are taken at the floor.
    """
    import numpy as np

    x, y, w = _inputs(n_params, errors, sigma, scale, 3)
    ly = np.log(np.maximum(y, ERROR_FLOOR))
    lx = np.log(x)
    if sigma is not None:  # weights of the log: (error/σ)², from the mean errors (one weighting for all rows)
        w = w * np.maximum(np.mean(y, axis=0), ERROR_FLOOR) ** 2
    sw, sx, sxx = w.sum(), lx @ w, (lx * lx) @ w
    sy, sxy = ly @ w, ly @ (w * lx)
    slope = (sw * sxy - sx * sy) / (sw * sxx - sx**2)
    return slope, (sy - slope * sx) / sw


def fit_log_slope(n_params: Sequence[float], errors: Sequence[float], sigma: Sequence[float] | None = None,
                  scale: float = FIT_SCALE) -> LogSlope:
    """The weighted log-log slope of error against size; needs ≥ 3 distinct sizes, `flagged` with 3."""
    slope, intercept = fit_log_slope_many(n_params, [errors], sigma, scale)
    return LogSlope(float(slope[0]), float(intercept[0]), len(errors), scale)
