"""Power-law fit of worst-group error against model size: L(N) = A·(N/scale)^(-β) + C."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FIT_SCALE", "SIGMA_FLOOR", "FitError", "PowerLaw", "fit_power_law"]

FIT_SCALE = 1e6
"""Sizes are fitted as N / 1e6: A stays near 0.01–1 instead of spanning ten orders of magnitude."""
SIGMA_FLOOR = 1e-3
"""Smallest weight sigma (0.1 point of accuracy): seeds that agree by chance must not pin the fit."""


class PowerLaw(NamedTuple):
    """Worst-group error L(N) = A·(N/scale)^(-β) + C, with standard errors (None where undetermined)."""

    A: float
    beta: float
    C: float
    A_se: float | None
    beta_se: float | None
    C_se: float | None
    scale: float = FIT_SCALE

    def __call__(self, n_params: Any) -> Any:
        """The fitted error at `n_params` (a number or a numpy array)."""
        return self.A * (n_params / self.scale) ** -self.beta + self.C


class FitError(RuntimeError):
    """A power law could not be fitted; the message says why."""


def fit_power_law(n_params: Sequence[float], errors: Sequence[float], sigma: Sequence[float] | None = None,
                  scale: float = FIT_SCALE) -> PowerLaw:
    """Least-squares L(N) = A·(N/scale)^(-β) + C with A > 0, β in [0, 3], C in [0, 1]; FitError if it fails.

    Started from three exponents and the lowest residual kept, since one start can stall in a
    flat valley of β against A.
    """
    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(n_params, dtype=float) / scale
    y = np.asarray(errors, dtype=float)
    if x.shape != y.shape or x.size < 4:
        raise FitError(f"needs ≥ 4 points of (size, error), got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(y))):
        raise FitError("sizes must be positive and errors finite")
    s = None if sigma is None else np.maximum(np.asarray(sigma, dtype=float), SIGMA_FLOOR)

    def law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a * np.power(x, -b) + c

    smallest = int(np.argmin(x))
    c0 = min(max(0.5 * float(y.min()), 0.0), 0.99)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    failure = "no start converged"
    for b0 in (0.2, 0.5, 1.0):
        a0 = max((float(y[smallest]) - c0) * float(x[smallest]) ** b0, 1e-6)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)  # an undetermined covariance is reported as None
                popt, pcov = curve_fit(law, x, y, p0=(a0, b0, c0), sigma=s, absolute_sigma=False,
                                       bounds=((1e-12, 0.0, 0.0), (np.inf, 3.0, 1.0)), max_nfev=20_000)
        except (RuntimeError, ValueError) as err:
            failure = str(err)
            continue
        cost = float(np.sum(((law(x, *popt) - y) / (1.0 if s is None else s)) ** 2))
        if best is None or cost < best[0]:
            best = (cost, popt, pcov)
    if best is None:
        raise FitError(f"did not converge ({failure})")
    _, popt, pcov = best
    se = [float(v) if np.isfinite(v) else None for v in np.sqrt(np.abs(np.diag(pcov)))]
    return PowerLaw(float(popt[0]), float(popt[1]), float(popt[2]), se[0], se[1], se[2], scale)
