"""Compute accounting: a cell's cost is the sum of its trial runs' costs, its search and failures included."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from trainables.metrics import DEVICE_SECONDS, IMAGES_SEEN, SELECTION_METRIC, best_key
from wgtune.report.build import build_report, cell_metrics
from wgtune.report.compute import CellCost, cell_cost, compute_lines, trial_cost, trial_cost_estimate
from wgtune.report.tables import markdown, to_frame
from wgtune.tracking.records import (
    CELL_DEVICE_HOURS,
    DEVICE_CPU,
    DEVICE_GPU,
    PHASE_FINAL,
    PHASE_SEARCH,
    CellRecord,
    TrialRecord,
)

_clock = itertools.count(1)
TEST_WORST = best_key("test", "worst_acc")


def run(cell: str, status: str = "FINISHED", phase: str = PHASE_SEARCH, device_s: float | None = 100.0,
        images: float | None = 1000.0, device: str = DEVICE_GPU, **metrics: float) -> TrialRecord:
    """A trial run whose last logged cost is `device_s` device-seconds and `images` training images."""
    n = next(_clock)
    logged = {**metrics, **({} if device_s is None else {DEVICE_SECONDS: device_s}),
              **({} if images is None else {IMAGES_SEEN: images})}
    return TrialRecord(run_id=f"r{n}", cell_id=cell, trial_id=f"t{n}", run_name="", status=status, proposal="tpe",
                       phase=phase, params={"seed": str(n)} if phase == PHASE_FINAL else {"lr": str(n)},
                       metrics=logged, start_time_ms=n, end_time_ms=None, error=None, device=device)


def mixed_cell(cell: str, scale: float = 1.0) -> list[TrialRecord]:
    """Search and final runs of every status, one diverged, one that logged nothing."""
    return [
        run(cell, device_s=360.0 * scale, **{SELECTION_METRIC: 0.7, TEST_WORST: 0.6}),
        run(cell, device_s=720.0 * scale, **{SELECTION_METRIC: 0.8, TEST_WORST: 0.65}),
        run(cell, "FAILED", device_s=50.0 * scale, images=300.0),  # failed for good: its last report counts
        run(cell, "KILLED", device_s=90.0 * scale, images=None),  # the driver died: what it logged was spent
        run(cell, "RUNNING", device_s=10.0 * scale),
        run(cell, "FAILED", device_s=None, images=None),  # from before costs were logged
        run(cell, "FINISHED", PHASE_FINAL, device_s=900.0 * scale, **{TEST_WORST: 0.62}),
        run(cell, "FINISHED", PHASE_FINAL, device_s=1000.0 * scale, **{TEST_WORST: 0.64}),
        run(cell, "FAILED", PHASE_FINAL, device_s=40.0 * scale),  # a diverged final seed
    ]


def test_a_cells_cost_is_the_sum_of_its_trial_runs_costs_whatever_their_status() -> None:
    trials = mixed_cell("c")
    cost = cell_cost(trials)

    logged = [trial_cost(t) for t in trials]
    assert cost.total_s == pytest.approx(sum(c.device_s or 0.0 for c in logged)) == 3170.0
    assert cost.search_s == pytest.approx(sum(t.metrics.get(DEVICE_SECONDS, 0.0) for t in trials
                                              if t.phase != PHASE_FINAL)) == 1230.0
    assert cost.final_s == pytest.approx(1940.0)
    assert cost.images == sum(t.metrics.get(IMAGES_SEEN, 0.0) for t in trials) == 6300.0
    assert (cost.trials, cost.unrecorded, cost.device) == (9, 1, DEVICE_GPU)
    assert cost.total_hours == pytest.approx(3170.0 / 3600)


def test_a_cell_with_no_logged_cost_is_unknown_not_free_and_kinds_are_never_merged_silently() -> None:
    none = cell_cost([run("c", device_s=None), run("c", device_s=None)])
    assert not none.recorded and none.device == "" and none.total_s == 0.0
    assert cell_cost([]) == CellCost()
    both = cell_cost([run("c", device=DEVICE_GPU), run("c", device=DEVICE_CPU)])
    assert both.device == "mixed" and both.total_s == 200.0


def test_the_report_carries_each_cells_cost_to_its_row_csv_markdown_and_parent_run() -> None:
    cells = [CellRecord(f"c{i}", "waterbirds", "resnet", "", f"m{i}", 10 ** (5 + i), "erm", False) for i in range(2)]
    trials = mixed_cell("c0") + mixed_cell("c1", scale=4.0)
    trials.append(run("c2", device_s=None, **{SELECTION_METRIC: 0.5, TEST_WORST: 0.4}))  # no metadata, no cost
    report = build_report(cells, trials)

    by_id = {r.cell_id: r for r in report.rows}
    frame = to_frame(report).set_index("cell_id")
    for cell_id in ("c0", "c1"):
        own = [t for t in trials if t.cell_id == cell_id]
        total_s = sum(t.metrics.get(DEVICE_SECONDS, 0.0) for t in own)
        assert by_id[cell_id].cost == cell_cost(own)
        assert cell_metrics(by_id[cell_id])[CELL_DEVICE_HOURS] == pytest.approx(total_s / 3600)
        assert frame.loc[cell_id, "total_device_hours"] == pytest.approx(total_s / 3600)
        assert frame.loc[cell_id, "search_device_hours"] + frame.loc[cell_id, "final_device_hours"] == \
            pytest.approx(frame.loc[cell_id, "total_device_hours"])
        assert frame.loc[cell_id, "device"] == DEVICE_GPU and frame.loc[cell_id, "cost_runs"] == len(own)
    assert CELL_DEVICE_HOURS not in cell_metrics(by_id["c2"]) and math.isnan(frame.loc["c2", "total_device_hours"])
    # The study's total, per unit, is the sum over cells (5 × 3170 device-seconds = 4.40 GPU-hours).
    assert "Compute in all: 4.4 GPU-hours." in markdown(report)


def test_per_trial_cost_is_the_mean_of_trials_that_ran_of_the_usual_device() -> None:
    trials = [run("c", device_s=100.0, images=1000.0), run("c", device_s=300.0, images=1000.0),
              run("c", "FAILED", device_s=5.0), run("c", device_s=9.0, device=DEVICE_CPU),
              run("c", "FINISHED", PHASE_FINAL, device_s=1000.0, images=4000.0),
              run("c", device_s=None)]

    search = trial_cost_estimate(trials, phase=PHASE_SEARCH)
    assert search is not None and search.device == DEVICE_GPU and search.n == 2
    assert search.mean_s == pytest.approx(200.0) and search.per_image_s == pytest.approx(0.2)
    final = trial_cost_estimate(trials, phase=PHASE_FINAL)
    assert final is not None and (final.mean_s, final.per_image_s, final.mean_images) == (1000.0, 0.25, 4000.0)
    assert trial_cost_estimate([run("c", "FAILED")]) is None


def test_compute_lines_are_one_per_objective_and_dataset_in_order_of_compute() -> None:
    cells, trials = [], []
    for dataset, objective, pretrained, i in itertools.product(("waterbirds", "celeba"), ("erm", "groupdro"),
                                                               (False, True), range(3)):
        cid = f"{dataset}/{objective}/{pretrained}/{i}"
        cells.append(CellRecord(cid, dataset, "resnet", "", f"m{i}", 10 ** (5 + i), objective, pretrained))
        trials += [run(cid, device_s=100.0 * (3 - i), **{SELECTION_METRIC: 0.7, TEST_WORST: 0.5 + 0.1 * i}),
                   run(cid, "FINISHED", PHASE_FINAL, device_s=50.0, **{TEST_WORST: 0.4 + 0.1 * i}),
                   run(cid, "FINISHED", PHASE_FINAL, device_s=50.0, **{TEST_WORST: 0.6 + 0.1 * i})]
    cells.append(CellRecord("nocost", "waterbirds", "resnet", "", "m9", 10 ** 9, "erm", False))
    trials.append(run("nocost", device_s=None, **{SELECTION_METRIC: 0.7, TEST_WORST: 0.9}))
    report = build_report(cells, trials)

    lines = compute_lines(report.rows)
    assert [(line.dataset, line.label) for line in lines] == [
        (d, label) for d in ("celeba", "waterbirds")
        for label in ("erm", "erm pretrained", "groupdro", "groupdro pretrained")]
    for line in lines:
        hours = [p.hours for p in line.points]
        assert hours == sorted(hours) and len(hours) == 3  # the cell with no logged cost is on no line
        for p in line.points:
            row = next(r for r in report.rows if r.cell_id == p.cell_id)
            assert p.hours == pytest.approx(row.cost.total_hours)
            assert p.error == pytest.approx(1 - row.test_worst.mean)
            assert p.error_low < p.error < p.error_high


def test_the_compute_figure_is_drawn_with_and_without_costs(tmp_path: Path) -> None:
    from wgtune.report.figures import write_figures

    cells = [CellRecord(f"c{i}", "waterbirds", "resnet", "", f"m{i}", 10 ** (5 + i), "erm", False) for i in range(2)]
    for name, trials in (("costs", mixed_cell("c0") + mixed_cell("c1", 2.0)),
                         ("none", [run("c0", device_s=None, **{SELECTION_METRIC: 0.5, TEST_WORST: 0.4})])):
        paths = write_figures(build_report(cells, trials), tmp_path / name)
        svg = next(p for p in paths if p.name == "error_vs_compute.svg")
        assert ET.fromstring(svg.read_bytes()).tag.endswith("svg")
    # matplotlib writes each text's string as a comment beside its glyphs: the axis names the unit.
    assert "GPU-hours" in (tmp_path / "costs" / "error_vs_compute.svg").read_text()
