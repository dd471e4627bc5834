"""Search analysis: importance finds the parameter that matters, the history follows the tags, few trials and
log-scale values are handled, and the files are written without changing matplotlib's global style."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from trainables.metrics import SELECTION_METRIC
from wgtune.report.search_analysis import (
    COMPLETE,
    FAILED,
    MIN_IMPORTANCE_TRIALS,
    PROPOSAL_MARKS,
    _distributions,
    _history_figure,
    analyse_cell,
    analyse_search,
    cell_folder,
    write_search_analysis,
)
from wgtune.spec.spaces import load_space
from wgtune.tracking.records import (
    PHASE_FINAL,
    PHASE_SEARCH,
    PROPOSAL_RANDOM,
    PROPOSAL_TPE,
    PROPOSAL_TRANSFER,
    TrialRecord,
)

SPACE = load_space("erm", objective_defaults={})  # base.yaml: lr, weight_decay (log), batch_size, optimizer (choice)
LABEL = "waterbirds · resnet-18 · erm · pretrained"


def record(n: int, params: dict[str, str], value: float | None, proposal: str = PROPOSAL_TPE,
           status: str = "FINISHED", phase: str = PHASE_SEARCH, cell: str = "c1", stopped: bool = False) -> TrialRecord:
    metrics = {} if value is None else {SELECTION_METRIC: value}
    return TrialRecord(f"run{n}", cell, f"t{n}", "", status, proposal, phase, params, metrics, 1000 + n,
                       2000 + n, None, stopped_early=stopped)


def draw(rng: np.random.Generator) -> dict[str, object]:
    """One configuration of SPACE, as TPE's start-up would draw it (log-uniform in the log dims)."""
    return {"lr": math.exp(rng.uniform(math.log(1e-5), math.log(0.3))),
            "weight_decay": math.exp(rng.uniform(math.log(1e-6), 0.0)),
            "batch_size": int(rng.choice([32, 64, 128])), "optimizer": str(rng.choice(["sgd", "adamw"]))}


def logged(config: dict[str, object]) -> dict[str, str]:
    """Params as MLflow holds them: strings."""
    return {k: str(v) for k, v in config.items()}


EFFECTS = {
    "lr": lambda c: 0.8 - 0.05 * (math.log10(c["lr"]) + 2.5) ** 2,  # an optimum inside the range, in log lr
    "weight_decay": lambda c: 0.5 + 0.05 * math.log10(c["weight_decay"]) ** 2 / 6,
    "optimizer": lambda c: 0.75 if c["optimizer"] == "adamw" else 0.55,
}


def searched_history(matters: str, n: int = 20, seed: int = 0) -> list[TrialRecord]:
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        config = draw(rng)
        trials.append(record(i, logged(config), EFFECTS[matters](config) + rng.normal(0, 0.005)))
    return trials


@pytest.mark.parametrize("matters", sorted(EFFECTS))
def test_importance_names_the_one_parameter_the_value_depends_on(matters: str) -> None:
    analysis = analyse_cell("c1", LABEL, searched_history(matters), SPACE)
    assert analysis.importance is not None, analysis.note
    shares = dict(analysis.importance.shares)
    assert set(shares) == {d.name for d in SPACE.searched()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert analysis.importance.shares[0][0] == matters and shares[matters] > 0.6, shares
    assert 0 < analysis.importance.explained <= 1 + 1e-9


def test_importance_is_reproducible_and_seeded_by_the_cell() -> None:
    trials = searched_history("lr", seed=3)
    first, again = (analyse_cell("c1", LABEL, trials, SPACE).importance for _ in range(2))
    assert first == again
    other = analyse_cell("c2", LABEL, [t._replace(cell_id="c2") if hasattr(t, "_replace") else t for t in trials],
                         SPACE).importance
    assert first is not None and other is not None and other.seed != first.seed


def test_history_is_in_start_order_with_a_monotone_best_and_each_trial_marked_by_its_tag() -> None:
    rng = np.random.default_rng(1)
    proposals = [PROPOSAL_TRANSFER, PROPOSAL_RANDOM, PROPOSAL_RANDOM, PROPOSAL_TPE, PROPOSAL_TPE, PROPOSAL_TPE, "",
                 PROPOSAL_TPE]
    values = [0.5, 0.7, None, 0.6, 0.9, 0.8, 0.95, 0.85]
    trials = [record(i, logged(draw(rng)), v, proposal=p, status="FAILED" if v is None else "FINISHED",
                     stopped=i == 5) for i, (p, v) in enumerate(zip(proposals, values))]
    trials.reverse()  # MLflow returns runs in any order: the history is by start time
    trials += [record(20, logged(draw(rng)), 0.99, proposal=PHASE_FINAL, phase=PHASE_FINAL),  # a final seed
               record(21, logged(draw(rng)), None, status="RUNNING")]
    analysis = analyse_cell("c1", LABEL, trials, SPACE)
    history = analysis.history
    assert [p.index for p in history] == list(range(1, 9)) and [p.run_id for p in history] == [
        f"run{i}" for i in range(8)]
    assert [p.proposal for p in history] == proposals
    assert [p.value for p in history] == values
    assert [p.state for p in history] == [FAILED if v is None else COMPLETE for v in values]
    bests = [p.best_so_far for p in history]
    assert bests == [0.5, 0.7, 0.7, 0.7, 0.9, 0.9, 0.95, 0.95]
    assert all(a <= b for a, b in zip(bests, bests[1:]))
    assert analysis.not_ended == 1 and history[5].stopped_early

    # The drawing: each proposal kind's mark holds exactly the trials that carry its tag.
    ax = _history_figure(analysis).axes[0]
    drawn = {c.get_label(): sorted(int(x) for x, _ in c.get_offsets()) for c in ax.collections}
    for kind, mark in PROPOSAL_MARKS.items():
        expected = sorted(p.index for p in history if p.proposal == kind and p.state == COMPLETE
                          and not p.stopped_early)
        assert drawn.get(mark.label, []) == expected, kind
    assert drawn[PROPOSAL_MARKS[PROPOSAL_TPE].label + " (stopped early)"] == [6]
    assert drawn["other / untagged"] == [7] and drawn["failed (no value)"] == [3]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_a_cell_with_few_trials_says_so_instead_of_failing(n: int, tmp_path) -> None:
    analysis = analyse_cell("c1", LABEL, searched_history("lr", n=n), SPACE)
    assert analysis.importance is None
    assert analysis.note.startswith("not enough trials") and f"{n} complete" in analysis.note
    assert str(MIN_IMPORTANCE_TRIALS) in analysis.note
    paths = write_search_analysis([analysis], tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    folder = f"search/{cell_folder(analysis)}"
    assert {"search/search.md", f"{folder}/history.png"} <= names and f"{folder}/importance.png" not in names
    assert (f"{folder}/slices.png" in names) == (n > 0)
    assert analysis.note in (tmp_path / "search" / "search.md").read_text()


def test_one_searched_parameter_and_an_unknown_space_give_reasons() -> None:
    one = load_space("erm", {"weight_decay": 1.0e-4, "batch_size": 64, "optimizer": "sgd"}, objective_defaults={})
    trials = searched_history("lr")
    analysis = analyse_cell("c1", LABEL, trials, one)
    assert analysis.importance is None and "1 searched parameter" in analysis.note
    unknown = analyse_cell("c1", LABEL, trials, None)
    assert unknown.importance is None and "not in the grid" in unknown.note and len(unknown.history) == len(trials)


def test_log_scale_values_at_the_bounds_are_kept_inside_the_distributions_and_outsiders_are_listed() -> None:
    trials = searched_history("lr", n=12)
    low, high = 1e-5, 0.3
    edge = [
        # hyperopt's log-scale draws are exp(log(x)): a bound can come back an ulp outside it
        {"lr": repr(math.exp(math.log(low)) * (1 - 1e-15)), "weight_decay": "1.0", "batch_size": "32",
         "optimizer": "sgd"},
        {"lr": repr(high * (1 + 1e-15)), "weight_decay": "1e-06", "batch_size": "128", "optimizer": "adamw"},
    ]
    trials += [record(100 + i, params, 0.5) for i, params in enumerate(edge)]
    trials.append(record(200, {"lr": "1.5", "weight_decay": "0.01", "batch_size": "64", "optimizer": "sgd"}, 0.4))
    analysis = analyse_cell("c1", LABEL, trials, SPACE)
    assert [run for run, _ in analysis.skipped] == ["run200"] and "lr" in analysis.skipped[0][1]
    assert len(analysis.points) == 14 and len(analysis.history) == 15
    for scale in (True, False):
        dists = _distributions(analysis.dims, analysis.points, log_values=scale)
        lr = dists["lr"]
        assert lr.log is not scale  # log10 values on a linear range, or real values on a log range
        for _, params, _ in analysis.points:
            value = math.log10(params["lr"]) if scale else params["lr"]
            assert lr.low <= value <= lr.high
        assert lr.low <= (math.log10(low) if scale else low) and (math.log10(high) if scale else high) <= lr.high
    assert analysis.importance is not None  # the study accepted every point (create_trial checks containment)


def test_files_for_a_study_and_matplotlib_style_left_as_it_was(tmp_path) -> None:
    import matplotlib

    before = dict(matplotlib.rcParams)
    trials = searched_history("optimizer", n=MIN_IMPORTANCE_TRIALS)
    trials += [replace(t, cell_id="c2", run_id=f"c2-{t.run_id}") for t in searched_history("lr", n=3)]
    analyses = analyse_search(trials, {"c1": SPACE, "c2": SPACE},
                              {"c1": LABEL, "c2": "waterbirds · resnet-50 · erm", "c3": "celeba · vit-s · erm"})
    assert [a.label for a in analyses] == ["celeba · vit-s · erm", LABEL, "waterbirds · resnet-50 · erm"]
    assert analyses[0].history == () and "not in the grid" in analyses[0].note
    paths = write_search_analysis(analyses, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert sum(p.name == "importance.png" for p in paths) == 1 and sum(p.name == "history.png" for p in paths) == 3
    text = (tmp_path / "search" / "search.md").read_text()
    assert "| optimizer |" in text and "not enough trials" in text
    header = next(line for line in text.splitlines() if line.startswith("| cell | batch_size"))
    row = next(line for line in text.splitlines() if line.startswith(f"| {LABEL} | ") and "%" in line)
    share = dict(analyses[1].importance.shares)["optimizer"]
    assert row.split(" | ")[header.split(" | ").index("optimizer")] == f"{100 * share:.0f}%"
    assert dict(matplotlib.rcParams) == before  # Optuna's ggplot style stays in its own figures


GRID = """
study: searched
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm]
epochs: 1
final_seeds: 0
"""


@pytest.mark.slow  # a real MLflow store and the whole report: ~15 s
def test_the_report_writes_and_logs_each_cells_search_analysis_from_mlflow(tmp_path, monkeypatch) -> None:
    """Trials written to a real MLflow store by the study's tracker; `wgtune report` reads them back as strings,
    parses them against the grid's space and logs the analysis next to the other report files."""
    monkeypatch.chdir(tmp_path)  # a sqlite store named alone keeps its artifacts in ./mlruns
    from mlflow import MlflowClient

    from wgtune.run.reporting import report
    from wgtune.spec.grid import load_grid
    from wgtune.tracking.records import CellRecord
    from wgtune.tracking.tracker import StudyTracker

    (tmp_path / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "grid.yaml")
    [cell] = grid.cells()
    uri = f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}"
    rng = np.random.default_rng(5)
    with StudyTracker(uri, "searched") as tracker:
        tracker.cell_run(CellRecord.of(cell, 1_000))
        for i in range(MIN_IMPORTANCE_TRIALS):
            config = draw(rng)
            handle = tracker.start_trial(cell.id, f"t{i}", config, PROPOSAL_RANDOM if i < 3 else PROPOSAL_TPE)
            tracker.end_trial(handle, "FINISHED", summary={SELECTION_METRIC: EFFECTS["lr"](config)})

    files = report(grid, tracking_uri=uri)
    folder = tmp_path / "study" / "report" / "search"
    [cell_dir] = [p for p in folder.iterdir() if p.is_dir()]
    assert {folder / "search.md", cell_dir / "history.png", cell_dir / "importance.png",
            cell_dir / "slices.png"} <= set(files)
    text = (folder / "search.md").read_text()
    assert "random 3, tpe 7" in text and "| lr |" in text and "Left out" not in text  # every logged value parsed

    client = MlflowClient(uri)
    [study_run] = client.search_runs([client.get_experiment_by_name("searched").experiment_id],
                                     "tags.`wgtune.kind` = 'study'")
    logged = {a.path for a in client.list_artifacts(study_run.info.run_id, "report/search")}
    assert "report/search/search.md" in logged and f"report/search/{cell_dir.name}" in logged
    inside = {a.path for a in client.list_artifacts(study_run.info.run_id, f"report/search/{cell_dir.name}")}
    figures = ("history.png", "importance.png", "slices.png")
    assert {f"report/search/{cell_dir.name}/{name}" for name in figures} <= inside


def test_importing_the_analysis_pays_for_no_torch_optuna_or_matplotlib() -> None:
    import subprocess
    import sys

    code = ("import sys, wgtune.report.search_analysis\n"
            "print(sorted(m for m in ('torch', 'ray', 'optuna', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
