"""Figures of a study's report, drawn from `wgtune.report.build` data and written as PNG and SVG.

matplotlib loads only inside `write_figures`, and through `Figure` rather than pyplot: no global
backend is switched and no figure registry grows, so a long-lived process can call it freely
(PNG is rendered by Agg, SVG by matplotlib's SVG writer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from wgtune.report.build import FIT_SCALE, SEARCH_ONLY, Estimate, Series, SeriesFit, StudyReport
from wgtune.report.compute import compute_lines, device_unit
from wgtune.report.tables import format_count

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_figures"]


def write_figures(report: StudyReport, out_dir: str | Path) -> list[Path]:
    """Write accuracy_vs_size, worst_group_error_fit, search_curves and error_vs_compute, each as .png and .svg;
    returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    draws: tuple[tuple[str, Callable[[StudyReport], Figure]], ...] = (
        ("accuracy_vs_size", _accuracy_vs_size), ("worst_group_error_fit", _error_fit),
        ("search_curves", _search_curves), ("error_vs_compute", _error_vs_compute))
    for name, draw in draws:
        paths += _save(draw(report), out / name)
    return paths


def _accuracy_vs_size(report: StudyReport) -> Figure:
    from matplotlib.lines import Line2D

    fig, panels = _panels(report)
    colors = _colors(report.series)
    search_only = banded = failed = False
    for dataset, ax in panels.items():
        for series in _of(report.series, dataset):
            color = colors[series.label]
            xs = [p.n_params for p in series.points]
            ax.errorbar(xs, [p.worst.mean for p in series.points], yerr=_yerr([p.worst for p in series.points]),
                        fmt="-o", color=color, capsize=3, label=series.label)
            # Tuning noise: how far a re-run search would move the point (its chosen trial's test spread).
            noise = [(p.n_params, p.worst.mean, p.tuning.rerun_test_std) for p in series.points
                     if p.tuning is not None and p.tuning.rerun_test_std is not None]
            if noise:
                banded = True
                ax.fill_between([n for n, _, _ in noise], [m - sd for _, m, sd in noise],
                                [m + sd for _, m, sd in noise], color=color, alpha=0.15, linewidth=0)
            for p in series.points:
                if p.n_failed:
                    failed = True
                    ax.plot([p.n_params], [p.worst.mean], "x", color="red", markersize=10, mew=2, zorder=4)
                    ax.annotate(f"{p.n_failed} diverged", (p.n_params, p.worst.mean), textcoords="offset points",
                                xytext=(6, -12), fontsize="x-small", color="red")
            with_avg = [p for p in series.points if p.avg is not None]
            ax.errorbar([p.n_params for p in with_avg], [p.avg.mean for p in with_avg],  # type: ignore[union-attr]
                        yerr=_yerr([p.avg for p in with_avg]), fmt="--s", color=color, capsize=3, alpha=0.6,
                        markersize=4)
            hollow = [p for p in series.points if p.status == SEARCH_ONLY]
            search_only = search_only or bool(hollow)
            ax.plot([p.n_params for p in hollow], [p.worst.mean for p in hollow], "o", color=color,
                    markerfacecolor="white", zorder=3)
            ax.plot([p.n_params for p in hollow if p.avg], [p.avg.mean for p in hollow if p.avg], "s",
                    color=color, markerfacecolor="white", markersize=4, zorder=3)
        ax.set_ylabel("test accuracy")
        # Accuracy lives in [0, 1]; a t-interval over two seeds reaches far past it and would
        # squash the curves. The tables keep the intervals as computed.
        ax.set_ylim(-0.02, 1.02)
    for ax in panels.values():
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", ls="-", label="worst-group"),
                    Line2D([], [], color="black", ls="--", label="average (train-proportion weighted where logged)")]
        if banded:
            from matplotlib.patches import Patch

            handles.append(Patch(color="black", alpha=0.15, label="± tuning noise (re-run search sd)"))
        if failed:
            handles.append(Line2D([], [], color="red", marker="x", ls="", label="final seed(s) diverged"))
        if search_only:
            handles.append(Line2D([], [], color="black", marker="o", ls="", markerfacecolor="white",
                                  label="search trial only (one run)"))
        ax.legend(handles=handles, fontsize="small")
    fig.suptitle(f"Test accuracy vs model size (mean over final seeds, {100 * report.confidence:g}% interval)")
    return fig


def _error_fit(report: StudyReport) -> Figure:
    import numpy as np

    fig, panels = _panels(report)
    colors = _colors(report.series)
    fits = {(f.dataset, f.label): f for f in report.fits}
    for dataset, ax in panels.items():
        for series in _of(report.series, dataset):
            color = colors[series.label]
            fit: SeriesFit | None = fits.get((dataset, series.label))
            xs = [p.n_params for p in series.points]
            errors = [1 - p.worst.mean for p in series.points]
            low, high = _yerr([p.worst for p in series.points])
            law = fit.law if fit is not None else None
            fitted = fit is not None and fit.slope is not None
            label = series.label if fitted else f"{series.label} (no fit)"
            # Error is 1 - accuracy: the accuracy interval's upper side is the error's lower side.
            ax.errorbar(xs, errors, yerr=[high, low], fmt="o" if fitted else ":o", color=color, capsize=3,
                        label=label)
            if fit is not None and fit.slope is not None:
                grid = np.logspace(np.log10(min(xs)), np.log10(max(xs)), 100)
                ax.plot(grid, fit.slope(grid), ":", color=color,
                        label=f"{series.label} slope s = {_ci(fit.slope.slope, fit.slope_interval)}"
                              f"{' ⚠' if fit.slope.flagged else ''}")
                if law is not None:
                    ax.plot(grid, law(grid), "-", color=color,
                            label=f"{series.label} law: β = {_ci(law.beta, fit.beta_interval)}, A = {law.A:.2g}, "
                                  f"C = {law.C:.2f}{' ⚠' if law.flagged else ''}")
        ax.set_yscale("log")
        ax.set_ylabel("test worst-group error")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"Worst-group error vs size: log-log slope s (dotted), L(N) = A·(N/{format_count(FIT_SCALE)})^(-β) + C"
                 " (solid); [bootstrap interval], ⚠ < 2 residual dof", fontsize="medium")
    return fig


def _dataset_panels(datasets: list[str], empty: str) -> tuple[Figure, Sequence[Axes]]:
    """One panel per data set, side by side; with none, one panel saying `empty`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.5 * len(datasets), 7.0), 4.5), layout="constrained")
    axes = fig.subplots(1, max(len(datasets), 1), squeeze=False)[0]
    if not datasets:
        axes[0].text(0.5, 0.5, empty, ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    return fig, axes


def _search_curves(report: StudyReport) -> Figure:
    """Expected best validation worst-group accuracy vs number of search trials, per cell (± sd band)."""

    rows = [r for r in report.rows if r.tuning is not None]
    datasets = sorted({r.dataset for r in rows})
    fig, axes = _dataset_panels(datasets, "no cell with ≥ 2 finished search trials yet")
    if not datasets:
        return fig
    for dataset, ax in zip(datasets, axes):
        for i, row in enumerate(r for r in rows if r.dataset == dataset):
            t = row.tuning
            assert t is not None
            ks = list(range(1, t.n_trials + 1))
            mean = [m for m, _ in t.best_of_k]
            sd = [s for _, s in t.best_of_k]
            color = f"C{i % 10}"
            ax.plot(ks, mean, "-", color=color,
                    label=f"{row.model} {row.objective}{'+pt' if row.pretrained else ''}"
                          f"{' (search-limited)' if t.search_limited else ''}")
            ax.fill_between(ks, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=color,
                            alpha=0.12, linewidth=0)
        ax.set_title(dataset)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("search trials k")
        ax.set_ylabel("expected best val worst-group acc")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("Tuning noise: expected best of k search trials (± sd), exact order statistics")
    return fig


def _error_vs_compute(report: StudyReport) -> Figure:
    """Test worst-group error vs each cell's total compute (search and final seeds), one line per objective."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lines = compute_lines(report.rows)
    datasets = sorted({line.dataset for line in lines})
    fig, axes = _dataset_panels(datasets, "no cell with a test result and a logged cost yet")
    if not datasets:
        return fig
    objectives = sorted({line.objective for line in lines})
    for dataset, ax in zip(datasets, axes):
        of = [line for line in lines if line.dataset == dataset]
        for line in of:
            color = f"C{objectives.index(line.objective) % 10}"  # one colour per objective, on every panel
            points = line.points
            ax.errorbar([p.hours for p in points], [p.error for p in points], yerr=_yerr_error(points),
                        fmt="o--" if line.pretrained else "o-", color=color, capsize=3, label=line.label)
            for p in points:
                ax.annotate(p.model, (p.hours, p.error), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        units = sorted({p.device for line in of for p in line.points})
        ax.set_xscale("log")
        hours = [p.hours for line in of for p in line.points]
        span = max(hours) / min(hours)  # label every 1..9 within a decade, 1-2-5 within two, decades beyond
        ax.xaxis.set_major_locator(LogLocator(subs=tuple(range(1, 10)) if span <= 10 else (1.0, 2.0, 5.0)
                                              if span <= 100 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"total compute, search + final seeds ({', '.join(device_unit(u) for u in units)})")
        ax.set_ylabel("test worst-group error")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Worst-group error vs what each cell cost, its search included "
                 f"(mean over final seeds, {100 * report.confidence:g}% interval)", fontsize="medium")
    return fig


def _yerr_error(points: Sequence) -> tuple[list[float], list[float]]:
    """Distances from each error to its interval's ends; zero where there is none (one run)."""
    return ([0.0 if p.error_low is None else p.error - p.error_low for p in points],
            [0.0 if p.error_high is None else p.error_high - p.error for p in points])


def _ci(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")


def _panels(report: StudyReport) -> tuple[Figure, dict[str, Axes]]:
    """One panel per dataset with results; one empty, labelled panel when there are none yet."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    datasets = sorted({s.dataset for s in report.series})
    fig, axes = _dataset_panels(datasets, "no finished cells yet")
    if not datasets:
        return fig, {}
    panels = dict(zip(datasets, axes))
    for dataset, ax in panels.items():
        sizes = [p.n_params for s in _of(report.series, dataset) for p in s.points]
        ax.set_xscale("log")
        if min(sizes) == max(sizes):  # one size: give the log axis a span, or its transform is singular
            ax.set_xlim(min(sizes) / 2, max(sizes) * 2)
        # Label 1-2-5 steps when the sizes span two decades or less, else decades only: 10M, not 10^7.
        narrow = max(sizes) <= 100 * min(sizes)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_count(x)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("parameters")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
    return fig, panels


def _of(series: Sequence[Series], dataset: str) -> list[Series]:
    return [s for s in series if s.dataset == dataset]


def _colors(series: Sequence[Series]) -> dict[str, str]:
    """One color per series label across every panel, so `erm` looks the same on each dataset."""
    labels = sorted({s.label for s in series})
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _yerr(values: Sequence[Estimate | None]) -> tuple[list[float], list[float]]:
    """Distances to the interval's ends; zero where there is no interval (one run)."""
    below = [0.0 if v is None or v.low is None else v.mean - v.low for v in values]
    above = [0.0 if v is None or v.high is None else v.high - v.mean for v in values]
    return below, above


def _save(fig: Figure, stem: Path) -> list[Path]:
    import matplotlib

    paths = []
    # A fixed salt and no date make the SVG the same bytes for the same data (diffable reports).
    with matplotlib.rc_context({"svg.hashsalt": "wgtune"}):
        for suffix, options in ((".png", {"dpi": 150}), (".svg", {"metadata": {"Date": None}})):
            path = stem.with_suffix(suffix)
            fig.savefig(path, **options)  # type: ignore[arg-type]
            paths.append(path)
    return paths
