"""Reading a launched study: the tracker of an existing study, and the report written from it.

`report` writes tables, figures, the selection rules side by side and each cell's search analysis,
and logs them on the study's report run; `log_cell_summaries` puts each cell's summary on its parent
run (what the MLflow UI shows). Nothing here starts Ray or trains.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

from wgtune.run.plan import plan_cells
from wgtune.spec.errors import UserError
from wgtune.spec.grid import Grid
from wgtune.tracking.records import CellRecord, TrialRecord
from wgtune.tracking.selection import DEFAULT_RULE, SELECTION_RULES
from wgtune.tracking.store import check_tracking, redact, resolve_tracking_uri, sqlite_path
from wgtune.tracking.tracker import StudyTracker

if TYPE_CHECKING:
    from wgtune.report.build import StudyReport


@contextmanager
def existing_study(grid: Grid, tracking_uri: str | None) -> Iterator[StudyTracker]:
    """The study's tracker for reading; looking at a study must not create its store or experiment."""
    uri = resolve_tracking_uri(grid.study_dir, tracking_uri)
    db = sqlite_path(uri)
    missing = UserError(f"study {grid.spec.study!r} has not been launched yet: no MLflow experiment of that "
                        f"name in {redact(uri)} (run `wgtune launch --grid {grid.path}`)")
    if db is not None and not db.exists():
        raise missing
    check_tracking(uri)
    from mlflow import MlflowClient

    if MlflowClient(uri).get_experiment_by_name(grid.spec.study) is None:
        raise missing
    with StudyTracker(uri, grid.spec.study) as tracker:
        yield tracker


class StudyRecords(NamedTuple):
    """What a report reads from MLflow, read once: every cell's parent-run record and every trial run."""

    cells: list[CellRecord]
    trials: list[TrialRecord]

    @classmethod
    def read(cls, tracker: StudyTracker) -> StudyRecords:
        return cls([CellRecord.from_tags(tags) for tags in tracker.cell_tags().values()], tracker.trial_runs())


def report(grid: Grid, out: Path | None = None, tracking_uri: str | None = None,
           select: str | None = None) -> list[Path]:
    """Tables and figures of the study from MLflow, written to `out` (default <study_dir>/report, or
    report-<rule> for another selection rule than the study's) with each cell's search analysis in its
    search/ folder, and logged on the study-level run "<study> · report"; under the study's rule each
    cell's summary is logged on its parent run too. A partial study marks missing cells."""
    from wgtune.report.build import build_report
    from wgtune.report.figures import write_figures
    from wgtune.report.tables import write_tables

    select = select or DEFAULT_RULE
    if select not in SELECTION_RULES:
        raise UserError(f"--select {select!r} is not a selection rule; valid: {', '.join(SELECTION_RULES)}")
    name = "report" if select == DEFAULT_RULE else f"report-{select}"
    folder = out or grid.study_dir / name
    with existing_study(grid, tracking_uri) as tracker:
        records = StudyRecords.read(tracker)
        if select == DEFAULT_RULE:
            built = log_cell_summaries(grid, tracker, records=records)
        else:  # what another rule would have chosen: read only, the cells' runs keep the study's own choice
            built = build_report(records.cells, records.trials, expected_cells=[c.id for c in grid.cells()],
                                 select=select)
        folder.mkdir(parents=True, exist_ok=True)
        files = write_tables(built, folder) + write_figures(built, folder)
        files += selection_files(grid, records, built, select, folder)
        tracker.log_study_files(f"{grid.spec.study} · report", files, name)
        searched = search_analysis(grid, records, folder)
        for sub in sorted({f.parent for f in searched}):  # MLflow's artifact folders mirror the report's
            tracker.log_study_files(f"{grid.spec.study} · report", [f for f in searched if f.parent == sub],
                                    f"{name}/{sub.relative_to(folder).as_posix()}")
    return files + searched


def search_analysis(grid: Grid, records: StudyRecords, folder: Path) -> list[Path]:
    """Each cell's search analysis (`report.search_analysis`: history, importance, slices) from MLflow,
    its logged params read against the cell's search space as the grid builds it now; under `folder`/search."""
    from wgtune.report.search_analysis import analyse_search, write_search_analysis

    plans = plan_cells(grid)
    labels = {cell.cell_id: cell.run_name for cell in records.cells}
    labels.update({p.cell.id: p.cell.label for p in plans})
    analyses = analyse_search(records.trials, {p.cell.id: p.space for p in plans}, labels)
    return write_search_analysis(analyses, folder)


def selection_files(grid: Grid, records: StudyRecords, built: StudyReport, select: str,
                    folder: Path) -> list[Path]:
    """`selection.md/.csv/.png`: the study under every selection rule side by side, from the same MLflow records
    (`built`: the report already made under `select`)."""
    from wgtune.report.selection import compare_rules, rule_reports, write_selection

    reports = rule_reports(records.cells, records.trials, [c.id for c in grid.cells()], known={select: built})
    return write_selection(compare_rules(reports), folder)


def log_cell_summaries(grid: Grid, tracker: StudyTracker, n_boot: int | None = None,
                       records: StudyRecords | None = None) -> StudyReport:
    """The study's report from MLflow (`records`, if already read); each cell's summary (`report.build.cell_metrics`)
    is logged on its parent run and the study's runs view saved on its experiment, so the MLflow UI shows them."""
    from wgtune.report.build import build_report, cell_metrics

    records = records or StudyRecords.read(tracker)
    built = build_report(records.cells, records.trials, expected_cells=[c.id for c in grid.cells()], n_boot=n_boot)
    tracker.log_cell_metrics({row.cell_id: cell_metrics(row) for row in built.rows})
    tracker.publish_view()
    return built
