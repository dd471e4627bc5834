"""Search analysis per cell, as HPO tools give it: optimisation history, hyperparameter importance, slices.

From a cell's search trials in MLflow (`TrialRecord`s) and its search space:

- **History**: each ended search trial in start order (FINISHED and FAILED; running and killed runs
  are counted, not drawn), its selection metric (`SELECTION_METRIC`, what the cell's TPE maximises,
  whatever `--select` rule the report uses) and the best so far, marked by how it was proposed
  (`PROPOSAL_TAG`: a neighbour's transfer point, a random or size-aware-prior start-up draw, TPE).
  Optuna's `plot_optimization_history` cannot mark proposal kinds, so this one is drawn here.
- **Importance**: fANOVA (Hutter, Hoos & Leyton-Brown 2014, "An Efficient Approach for Assessing
  Hyperparameter Importance", ICML), as Optuna implements it (optuna/optuna,
  `optuna/importance/_fanova/_evaluator.py: FanovaImportanceEvaluator`: a random forest fitted to
  the COMPLETE trials, each parameter's share of the forest's variance from its main effect). The
  forest is seeded from the cell (`derive_seed`), so a report is reproducible. Each share is
  normalised over the searched parameters (`share`), and `explained` keeps the un-normalised sum:
  the fraction of the forest's variance that main effects explain (the rest is interactions).
- **Slices**: each searched parameter against the selection metric, Optuna's
  `optuna.visualization.matplotlib.plot_slice` (a log axis for a log-scale parameter).

Trials become Optuna `FrozenTrial`s (`optuna.trial.create_trial`): a FINISHED trial with a finite
selection metric is COMPLETE (an ASHA-stopped one too, at its best value so far, as the cell's TPE
and the selection see it: it is marked in the history), anything else FAIL (shown, not used by
importance). Logged params are read back with `tracking.records.parse_params`, as the search reads
them; a trial whose params lie outside the cell's current space (the grid changed since) is in the
history but not in the importance or slices, and the reason is listed.

Deliberate departure from Optuna: its fANOVA integrates each parameter's marginal over its raw
range (`_SearchSpaceTransform(transform_log=False)`), which for `lr ~ loguniform(1e-5, 0.3)` gives
[0.03, 0.3] 90% of the weight. The study samples such a parameter uniformly in its log, and van Rijn
& Hutter 2018 ("Hyperparameter Importance Across Datasets", KDD) ran fANOVA on log-scale parameters
as their logs over a log-scaled space (janvanrijn/openml-pimp, `openmlpimp/backend/fanova.py`,
`manual_logtransform`), so importance is computed on a copy of the trials with log-scale
parameters as log10 values (a tree's splits are the same either way; the marginals' weights are
not). On simulated searches (4 parameters, only lr mattering smoothly in log lr, 10 trials, 30
seeds) lr was named first in 97% of searches with a 0.72 mean share on the log scale, 87% with 0.53
on the raw one.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from trainables.metrics import SELECTION_METRIC
from wgtune.spec.grid import derive_seed
from wgtune.spec.spaces import SpaceError
from wgtune.tracking.records import (
    PHASE_FINAL,
    PROPOSAL_PRIOR,
    PROPOSAL_RANDOM,
    PROPOSAL_TPE,
    PROPOSAL_TRANSFER,
    parse_params,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from wgtune.spec.spaces import Dimension, SearchSpace
    from wgtune.tracking.records import TrialRecord

__all__ = ["MIN_IMPORTANCE_TRIALS", "PROPOSAL_MARKS", "CellSearch", "HistoryPoint", "Importance", "ProposalMark",
           "SEARCH_FOLDER", "analyse_cell", "analyse_search", "search_markdown", "write_search_analysis"]

MIN_IMPORTANCE_TRIALS = 10
"""Complete trials below which no importance is given. On simulated searches (4 searched parameters, lr alone
mattering, 30 seeds each) fANOVA named lr first in 57–60% of searches at 4 trials, 93–97% at 8, 97–100% at 10."""
LOG_KINDS = ("loguniform", "qloguniform")
NORMAL_SPAN = 4.0
"""A normal dimension has no bounds; Optuna's distributions need them: mu ± this many sigma (stretched to hold
every observed value)."""
SEARCH_FOLDER = "search"
"""The report's sub-folder of search-analysis files: `search.md` and one folder of figures per cell."""
FAILED, COMPLETE = "failed", "complete"


class ProposalMark(NamedTuple):
    """How the history draws trials of one proposal kind."""

    marker: str
    color: str
    label: str


PROPOSAL_MARKS: dict[str, ProposalMark] = {
    PROPOSAL_TRANSFER: ProposalMark("s", "tab:purple", "transfer (a neighbour's best)"),
    PROPOSAL_PRIOR: ProposalMark("D", "tab:orange", "start-up draw, size-aware prior"),
    PROPOSAL_RANDOM: ProposalMark("o", "tab:gray", "start-up draw, random"),
    PROPOSAL_TPE: ProposalMark("^", "tab:blue", "TPE"),
}
"""One mark per value of `PROPOSAL_TAG` a search trial can carry; any other (an untagged old run) is `OTHER_MARK`."""
OTHER_MARK = ProposalMark("v", "black", "other / untagged")


class HistoryPoint(NamedTuple):
    """One ended search trial of a cell, in start order (`index` from 1)."""

    index: int
    run_id: str
    proposal: str
    state: str
    """`COMPLETE` (FINISHED, finite selection metric) or `FAILED`."""
    value: float | None
    best_so_far: float | None
    """The best `value` among trials 1..index; None before the first complete one."""
    stopped_early: bool = False


class Importance(NamedTuple):
    """fANOVA importances of a cell's searched parameters (module docstring)."""

    shares: tuple[tuple[str, float], ...]
    """(parameter, share of the main effects' variance), largest first; the shares sum to 1."""
    explained: float
    """The forest's variance fraction the main effects explain together (1 - this: interactions)."""
    n_trials: int
    seed: int


@dataclass(frozen=True)
class CellSearch:
    """A cell's search analysis, numbers only (`write_search_analysis` draws it)."""

    cell_id: str
    label: str
    history: tuple[HistoryPoint, ...]
    dims: tuple[Dimension, ...]
    """The cell's searched dimensions (none: the cell is not in the grid, so its space is unknown)."""
    points: tuple[tuple[int, Mapping[str, Any], float | None], ...]
    """(history index, typed params, value or None if failed) of the trials that lie in the space."""
    importance: Importance | None
    note: str
    """Why there is no importance (too few trials, one parameter, ...), or how it was computed."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(run id, reason) of history trials left out of importance and slices."""
    not_ended: int = 0
    """Search trials still running or killed: not in the history."""

    @property
    def n_complete(self) -> int:
        """Complete trials in the history."""
        return sum(p.state == COMPLETE for p in self.history)


def analyse_search(trials: Sequence[TrialRecord], spaces: Mapping[str, SearchSpace], labels: Mapping[str, str],
                   metric: str = SELECTION_METRIC) -> list[CellSearch]:
    """Every cell's analysis (cells of `labels` and of `trials`), in label order; `spaces` by cell id."""
    by_cell: dict[str, list[TrialRecord]] = {cell_id: [] for cell_id in labels}
    for trial in trials:
        by_cell.setdefault(trial.cell_id, []).append(trial)
    analyses = [analyse_cell(cell_id, labels.get(cell_id) or cell_id, cell_trials, spaces.get(cell_id), metric)
                for cell_id, cell_trials in by_cell.items()]
    return sorted(analyses, key=lambda a: (a.label, a.cell_id))


def analyse_cell(cell_id: str, label: str, trials: Sequence[TrialRecord], space: SearchSpace | None,
                 metric: str = SELECTION_METRIC) -> CellSearch:
    """One cell's history, importance and slice points from its trial records (final seeds are ignored)."""
    search = [t for t in trials if t.phase != PHASE_FINAL]
    ended = sorted((t for t in search if t.status in ("FINISHED", "FAILED")), key=lambda t: t.start_time_ms or 0)
    history, best = [], None
    for i, t in enumerate(ended, start=1):
        value = t.metrics.get(metric)
        complete = t.status == "FINISHED" and value is not None and math.isfinite(value)
        if complete:
            best = value if best is None else max(best, value)
        history.append(HistoryPoint(i, t.run_id, t.proposal, COMPLETE if complete else FAILED,
                                    float(value) if complete else None, best, t.stopped_early))
    dims = space.searched() if space is not None else ()
    points, skipped = [], []
    for t, h in zip(ended, history):
        if space is None:
            break
        try:
            params = parse_params(space, t.params)
            reason = space.contains(params)
        except (SpaceError, ValueError) as err:
            reason = str(err)
        if reason:
            skipped.append((t.run_id, f"outside the cell's search space: {reason}"))
        else:
            points.append((h.index, params, h.value))
    importance, note = _importance(cell_id, dims, points, space is not None)
    return CellSearch(cell_id, label, tuple(history), dims, tuple(points), importance, note, tuple(skipped),
                      not_ended=len(search) - len(ended))


def _importance(cell_id: str, dims: Sequence[Dimension], points: Sequence[tuple[int, Mapping[str, Any], float | None]],
                known: bool) -> tuple[Importance | None, str]:
    """fANOVA importance over the complete points, or None and the reason."""
    values = [v for _, _, v in points if v is not None]
    if not known:
        return None, "no importance: the cell is not in the grid, so its search space is unknown"
    if len(dims) < 2:
        return None, (f"no importance: {len(dims)} searched parameter"
                      + (" (it has all of it by definition)" if dims else "s"))
    if len(values) < MIN_IMPORTANCE_TRIALS:
        return None, (f"not enough trials for importance: {len(values)} complete in the space, "
                      f"fANOVA needs at least {MIN_IMPORTANCE_TRIALS}")
    if max(values) == min(values):
        return None, "no importance: every complete trial has the same value"
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    seed = derive_seed("search-importance", cell_id)
    with _quiet():
        study = _study(dims, points, log_values=True)
        raw = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed),
                                    params=[d.name for d in dims], normalize=False)
    total = float(sum(raw.values()))
    if not total > 0 or not math.isfinite(total):
        return None, "no importance: the forest found no main effect (every share is 0)"
    shares = tuple(sorted(((name, float(v) / total) for name, v in raw.items()), key=lambda s: -s[1]))
    note = (f"fANOVA (Hutter et al. 2014; Optuna's FanovaImportanceEvaluator, seed {seed}) over {len(values)} "
            f"complete trials, log-scale parameters in log10; main effects explain {100 * total:.0f}% of the "
            "forest's variance")
    return Importance(shares, total, len(values), seed), note


def _distributions(dims: Sequence[Dimension], points: Sequence[tuple[int, Mapping[str, Any], float | None]],
                   log_values: bool) -> dict[str, Any]:
    """Optuna distributions of the searched dims: choices categorical, numbers floats (quantized dims on their
    rounded range, as hyperopt draws them); log-scale ones log10-valued if `log_values`, else log=True."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for d in dims:
        if d.kind == "choice":
            out[d.name] = CategoricalDistribution(list(d.args))
            continue
        seen = [float(p[d.name]) for _, p, _ in points]
        if d.kind == "normal":
            low, high = d.args[0] - NORMAL_SPAN * d.args[1], d.args[0] + NORMAL_SPAN * d.args[1]
        elif d.kind.startswith("q"):
            q = d.args[2]
            low, high = round(d.args[0] / q) * q, round(d.args[1] / q) * q
        else:
            low, high = d.args[0], d.args[1]
        low, high = float(min([low, *seen])), float(max([high, *seen]))  # `contains` lets values be an ulp outside
        if d.kind in LOG_KINDS:
            out[d.name] = (FloatDistribution(math.log10(low), math.log10(high)) if log_values
                           else FloatDistribution(low, high, log=True))
        else:
            out[d.name] = FloatDistribution(low, high)
    return out


def _study(dims: Sequence[Dimension], points: Sequence[tuple[int, Mapping[str, Any], float | None]],
           log_values: bool) -> Any:
    """An in-memory Optuna study (maximising) of the points: complete ones COMPLETE, failed ones FAIL."""
    import optuna
    from optuna.trial import TrialState, create_trial

    distributions = _distributions(dims, points, log_values)
    trials = []
    for _, params, value in points:
        typed = {}
        for d in dims:
            v = params[d.name]
            if d.kind != "choice":
                v = float(v)
                if d.kind in LOG_KINDS and log_values:
                    v = math.log10(v)
            typed[d.name] = v
        trials.append(create_trial(params=typed, distributions=distributions, value=value,
                                   state=TrialState.COMPLETE if value is not None else TrialState.FAIL))
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna without its INFO lines (a study created) and experimental-API warnings, restored after."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


# -- files ------------------------------------------------------------------------------------------


def cell_folder(analysis: CellSearch) -> str:
    """A cell's folder name under `SEARCH_FOLDER`: its label with every run of other characters as one dash."""
    return re.sub(r"[^\w.]+", "-", analysis.label).strip("-") or re.sub(r"[^\w.]+", "-", analysis.cell_id)


def write_search_analysis(analyses: Sequence[CellSearch], out_dir: str | Path) -> list[Path]:
    """`<out_dir>/search/search.md` and, per cell, `search/<cell>/history.png`, `importance.png` (if it has
    importances) and `slices.png` (if it has trials in its space); returns the paths written."""
    out = Path(out_dir) / SEARCH_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "search.md"]
    paths[0].write_text(search_markdown(analyses), encoding="utf-8")
    for analysis in analyses:
        folder = out / cell_folder(analysis)
        folder.mkdir(exist_ok=True)
        paths.append(_save(_history_figure(analysis), folder / "history.png"))
        if analysis.importance is not None:
            paths.append(_save_optuna(_importance_figure, analysis, folder / "importance.png"))
        if any(v is not None for _, _, v in analysis.points):
            paths.append(_save_optuna(_slices_figure, analysis, folder / "slices.png"))
    return paths


def search_markdown(analyses: Sequence[CellSearch]) -> str:
    """The analysis as Markdown: a table of trials and best value per cell, then each cell's importances."""
    lines = ["# Search analysis", "",
             f"Per cell: its search trials in start order, scored by `{SELECTION_METRIC}` (what its TPE maximises). "
             "Figures per cell in `search/<cell>/`: `history.png` (each trial marked by how it was proposed, the "
             "best so far as a line), `importance.png` (fANOVA), `slices.png` (each parameter against the value).",
             "", "| cell | complete | failed | running / killed | best % | proposals | best found by |",
             "|---|---|---|---|---|---|---|"]
    for a in analyses:
        kinds: dict[str, int] = {}
        for p in a.history:
            kinds[p.proposal or "untagged"] = kinds.get(p.proposal or "untagged", 0) + 1
        complete = [p for p in a.history if p.state == COMPLETE]
        top = max(complete, key=lambda p: (p.value, -p.index)) if complete else None  # the earliest among ties
        best = f"{100 * top.value:.1f}" if top and top.value is not None else "–"
        found = f"{top.proposal or 'untagged'} (trial {top.index})" if top else "–"
        lines.append(f"| {a.label} | {len(complete)} | {len(a.history) - len(complete)} | {a.not_ended} | {best} | "
                     f"{', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) or '–'} | {found} |")
    lines += ["", "## Hyperparameter importance", ""]
    scored = [a for a in analyses if a.importance is not None]
    if scored:  # one row per cell, so shares can be compared across sizes
        names = sorted({name for a in scored for name, _ in a.importance.shares})  # type: ignore[union-attr]
        lines += [f"| cell | {' | '.join(names)} | main effects explain |", f"|---{'|---' * (len(names) + 1)}|"]
        for a in scored:
            shares = dict(a.importance.shares)  # type: ignore[union-attr]
            cells = [f"{100 * shares[n]:.0f}%" if n in shares else "–" for n in names]
            lines.append(f"| {a.label} | {' | '.join(cells)} | {100 * a.importance.explained:.0f}% |")  # type: ignore
        lines.append("")
    for a in analyses:
        lines += [f"### {a.label}", "", f"{a.note}.", ""]
        if a.importance is not None:
            lines += ["| parameter | share |", "|---|---|"]
            lines += [f"| {name} | {100 * share:.1f}% |" for name, share in a.importance.shares]
            lines.append("")
        if a.skipped:
            lines += [f"Left out of importance and slices ({len(a.skipped)}):", ""]
            lines += [f"- `{run_id}`: {reason}" for run_id, reason in a.skipped]
            lines.append("")
    return "\n".join(lines)


def _history_figure(analysis: CellSearch) -> Figure:
    """Value per trial, marked by proposal kind (hollow: stopped early by ASHA), failures as red ✕, best so far."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"{analysis.label}: optimisation history", fontsize="medium")
    ax.set_xlabel("search trial (start order)")
    ax.set_ylabel(f"{SELECTION_METRIC} %")
    complete = [p for p in analysis.history if p.state == COMPLETE]
    if not complete and not analysis.history:
        ax.text(0.5, 0.5, "no ended search trial yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    for mark in (*PROPOSAL_MARKS.values(), OTHER_MARK):
        for stopped in (False, True):
            these = [p for p in complete if PROPOSAL_MARKS.get(p.proposal, OTHER_MARK) == mark
                     and p.stopped_early == stopped]
            if these:
                ax.scatter([p.index for p in these], [100 * p.value for p in these],  # type: ignore[operator]
                           marker=mark.marker, color=mark.color, facecolors="white" if stopped else mark.color,
                           zorder=3, label=mark.label + (" (stopped early)" if stopped else ""))
    steps = [(p.index, p.best_so_far) for p in analysis.history if p.best_so_far is not None]
    if steps:
        ax.step([i for i, _ in steps], [100 * b for _, b in steps], where="post", color="tab:green",  # type: ignore
                label="best so far", zorder=2)
    failed = [p.index for p in analysis.history if p.state == FAILED]
    if failed:  # at the foot of the axes: a failure has no value to place it by
        ax.scatter(failed, [0.03] * len(failed), marker="x", color="red", zorder=3, label="failed (no value)",
                   transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xlim(0.5, len(analysis.history) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="x-small", loc="lower right")
    return fig


def _given(importances: Mapping[str, float]) -> Any:
    """An Optuna importance evaluator that returns importances already computed: the bar chart draws the
    table's numbers rather than fitting a second forest."""
    from optuna.importance import BaseImportanceEvaluator

    class Given(BaseImportanceEvaluator):
        def evaluate(self, study: Any, params: Any = None, *, target: Any = None) -> dict[str, float]:
            return dict(importances)

    return Given()


def _importance_figure(analysis: CellSearch) -> Figure:
    """Optuna's importance bar chart of the cell's shares."""
    from optuna.visualization.matplotlib import plot_param_importances

    assert analysis.importance is not None
    with _quiet():
        study = _study(analysis.dims, analysis.points, log_values=True)
        ax = plot_param_importances(study, evaluator=_given(dict(analysis.importance.shares)),
                                    target_name=SELECTION_METRIC)
    ax.set_title("", loc="left")  # Optuna's own title, replaced by one that names the cell
    ax.set_title(f"{analysis.label}: fANOVA importance ({analysis.importance.n_trials} trials)", fontsize="medium")
    return ax.figure


def _slices_figure(analysis: CellSearch) -> Figure:
    """Optuna's slice plot: each searched parameter against the selection metric (colour: trial order)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    from optuna.visualization.matplotlib import plot_slice

    with _quiet():
        # One trial gives a parameter equal x limits; matplotlib widens them and says so.
        warnings.filterwarnings("ignore", "Attempting to set identical low and high xlims", UserWarning)
        study = _study(analysis.dims, analysis.points, log_values=False)
        axes = plot_slice(study, target_name=SELECTION_METRIC)
    fig = getattr(axes, "figure", None) or axes.flat[0].figure
    for ax in fig.axes:
        if ax.get_xscale() == "log":  # under a decade matplotlib labels every minor tick, on top of each other
            low, high = ax.get_xlim()
            decades = math.log10(high / low)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0,), numticks=int(decades) + 2) if decades > 2
                                       else LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}" if v < 1e-2 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelrotation=45)
    fig.suptitle(f"{analysis.label}: slices")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # Optuna's figures have no layout engine: labels would clip
    return path


def _save_optuna(draw: Callable[[CellSearch], Figure], analysis: CellSearch, path: Path) -> Path:
    """Draw and write one of Optuna's figures. They draw through pyplot and set the ggplot style globally:
    the style is kept to this figure (`rc_context` restores rcParams) and the figure is closed, so none
    accumulate in pyplot's registry of a long-lived process."""
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        fig = draw(analysis)
        try:
            return _save(fig, path)
        finally:
            plt.close(fig)
