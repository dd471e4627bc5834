"""The report's data: model selection, seed statistics, partial studies, power-law fits, tables, figures."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from wgtune.report.build import (
    FINAL,
    MISSING,
    SEARCH_ONLY,
    SELECTION_RULE,
    Estimate,
    StudyReport,
    build_report,
    estimate,
    select_trial,
)
from wgtune.report.tables import COLUMNS, format_config, format_count, format_estimate, to_frame, write_tables
from wgtune.tracking.records import CellRecord, TrialRecord

_clock = itertools.count(1_000)


def trial(cell: str, status: str = "FINISHED", phase: str = "search", params: dict[str, str] | None = None,
          start: int | None = None, **metrics: float) -> TrialRecord:
    """A trial record; metric keyword `val_worst` means `best/val_worst_acc`, and so on."""
    n = next(_clock)
    return TrialRecord(run_id=f"run{n}", cell_id=cell, trial_id=f"t{n}", run_name="", status=status,
                       proposal="tpe", phase=phase, params=params or {},
                       metrics={f"best/{k}_acc": v for k, v in metrics.items()},
                       start_time_ms=n if start is None else start, end_time_ms=None, error=None)


def final(cell: str, seed: int, worst: float, avg: float, weighted: float, status: str = "FINISHED",
          params: dict[str, str] | None = None) -> TrialRecord:
    return trial(cell, status, "final", {**(params or {}), "seed": str(seed)},
                 test_worst=worst, test_avg=avg, test_weighted=weighted)


SIZES = {"waterbirds": [100_000, 400_000, 1_600_000, 6_400_000, 25_600_000], "celeba": [200_000, 800_000, 3_200_000]}
OBJECTIVES = ["erm", "groupdro"]
# Three final seeds per cell: test worst-group, test average, test train-weighted average.
SEEDS = [(0.70, 0.90, 0.93), (0.74, 0.92, 0.94), (0.75, 0.88, 0.92)]


def worst_at(n_params: int) -> float:
    """A known law for the synthetic curve: error = 0.2·(N/1e6)^-0.35 + 0.1."""
    return 1 - (0.2 * (n_params / 1e6) ** -0.35 + 0.1)


def synthetic_study() -> tuple[list[CellRecord], list[TrialRecord]]:
    cells, trials = [], []
    for dataset, sizes in SIZES.items():
        for objective, n in itertools.product(OBJECTIVES, sizes):
            cid = f"{dataset}/m{n}/{objective}"
            cells.append(CellRecord(cid, dataset, "resnet", "", f"m{n}", n, objective, False))
            trials += [
                trial(cid, params={"lr": "0.1", "batch_size": "32"}, val_worst=0.60, test_worst=0.5, test_avg=0.9),
                trial(cid, params={"lr": "0.012", "batch_size": "64"}, val_worst=0.81, test_worst=0.6, test_avg=0.9),
                trial(cid, params={"lr": "0.3", "batch_size": "16"}, val_worst=0.70, test_worst=0.7, test_avg=0.9),
                trial(cid, "FAILED", params={"lr": "9"}),
                trial(cid, "KILLED", params={"lr": "7"}, val_worst=0.99),
                trial(cid, "RUNNING", params={"lr": "8"}, val_worst=0.98),
            ]
            shift = worst_at(n) - 0.73  # seeds keep their spread, the mean follows the law
            trials += [final(cid, s, w + shift, a, g, params={"lr": "0.012", "batch_size": "64"})
                       for s, (w, a, g) in enumerate(SEEDS)]
            trials += [final(cid, 7, 0.1, 0.1, 0.1, "FAILED"), final(cid, 8, 0.1, 0.1, 0.1, "KILLED")]
    return cells, trials


@pytest.fixture(scope="module")
def study() -> StudyReport:
    return build_report(*synthetic_study())


def test_selection_takes_the_best_finished_search_trial_earliest_on_ties() -> None:
    a = trial("c", params={"lr": "1"}, val_worst=0.8, start=5)
    b = trial("c", params={"lr": "2"}, val_worst=0.8, start=3)
    c = trial("c", "KILLED", val_worst=0.9)
    d = trial("c", phase="final", val_worst=0.95)
    e = trial("c", val_worst=math.nan)
    assert select_trial([a, b, c, d, e]) is b
    assert select_trial([c, d]) is None


def test_chosen_config_is_the_argmax_trial(study: StudyReport) -> None:
    assert study.rule == SELECTION_RULE
    assert len(study.rows) == 2 * 5 + 2 * 3 and not study.missing
    for row in study.rows:
        assert row.status == FINAL
        assert row.chosen_config == {"lr": "0.012", "batch_size": "64"}
        assert row.chosen_val_worst == 0.81
        assert row.trials_spent == 4  # 3 finished + 1 failed search; killed, running and final ones are not
        assert row.n_seeds == 3 and not row.notes


def test_seed_statistics_equal_hand_computation(study: StudyReport) -> None:
    row = next(r for r in study.rows if r.cell_id == "celeba/m800000/erm")
    shift = worst_at(800_000) - 0.73
    worst = row.test_worst
    assert worst is not None and worst.n == 3
    assert worst.mean == pytest.approx(0.73 + shift, abs=1e-12)
    std = math.sqrt((0.03**2 + 0.01**2 + 0.02**2) / 2)  # deviations -0.03, +0.01, +0.02; ddof = 1
    assert worst.std == pytest.approx(std, rel=1e-9)
    half = student_t.ppf(0.975, 2) * std / math.sqrt(3)
    assert (worst.low, worst.high) == pytest.approx((worst.mean - half, worst.mean + half), rel=1e-9)
    assert row.test_avg is not None and row.test_avg.mean == pytest.approx(0.90)
    assert row.test_avg.std == pytest.approx(0.02)  # 0.90, 0.92, 0.88
    assert row.test_weighted is not None and row.test_weighted.mean == pytest.approx(0.93)
    ratios = [(w + shift) / a for w, a, _ in SEEDS]
    assert row.disparity is not None
    assert row.disparity.mean == pytest.approx(sum(ratios) / 3, rel=1e-12)
    assert row.disparity.std == pytest.approx(float(np.std(ratios, ddof=1)), rel=1e-9)
    assert row.disparity.mean != pytest.approx(worst.mean / row.test_avg.mean, rel=1e-6)  # not a ratio of means


def test_a_final_seed_that_diverged_is_a_failure_of_the_cell_shown_everywhere(tmp_path: Path) -> None:
    cell = CellRecord("d/m1/erm", "d", "resnet", "", "m1", 1_000_000, "erm", False)
    params = {"lr": "0.012", "batch_size": "64"}
    trials = [trial(cell.cell_id, params=params, val_worst=0.8),
              final(cell.cell_id, 0, 0.70, 0.90, 0.93, params=params),
              final(cell.cell_id, 1, 0.74, 0.92, 0.94, params=params),
              dataclasses.replace(final(cell.cell_id, 2, 0.0, 0.0, 0.0, "FAILED", params=params), diverged=True)]

    [row] = build_report([cell], trials).rows

    assert row.n_seeds == 2 and row.test_worst is not None and row.test_worst.mean == pytest.approx(0.72)
    assert row.n_failed == 1
    assert row.test_worst_all is not None and row.test_worst_all.n == 3
    assert row.test_worst_all.mean == pytest.approx((0.70 + 0.74 + 0.0) / 3)  # the diverged seed scores 0
    [note] = row.notes
    assert note.startswith("FAILED: the chosen config diverged on 1 of 3 final seed(s) (2)") and "48.0%" in note
    csv, md, _ = write_tables(build_report([cell], trials), tmp_path)
    back = pd.read_csv(csv)
    assert back["n_failed"].tolist() == [1] and back["test_worst_all_mean"][0] == pytest.approx(0.48)
    assert "| 2 | 1 |" in md.read_text()  # seeds 2, failed seeds 1


def test_estimate_of_one_value_has_no_interval_and_confidence_is_used() -> None:
    assert estimate([0.5]) == Estimate(0.5, 1)
    assert estimate([None, math.nan]) is None
    wide, narrow = estimate([0.1, 0.2, 0.4], 0.99), estimate([0.1, 0.2, 0.4], 0.5)
    assert wide is not None and narrow is not None and wide.std == narrow.std
    half = student_t.ppf(0.995, 2) * wide.std / math.sqrt(3)  # type: ignore[operator]
    assert wide.high - wide.mean == pytest.approx(half)  # type: ignore[operator]
    assert narrow.high - narrow.mean < wide.high - wide.mean  # type: ignore[operator]


def test_curves_per_dataset_and_series_sorted_by_size(study: StudyReport) -> None:
    assert [(s.dataset, s.label) for s in study.series] == [
        ("celeba", "erm"), ("celeba", "groupdro"), ("waterbirds", "erm"), ("waterbirds", "groupdro")]
    wb = study.series[2]
    assert [p.n_params for p in wb.points] == SIZES["waterbirds"]
    assert [p.worst.mean for p in wb.points] == pytest.approx([worst_at(n) for n in SIZES["waterbirds"]])
    # The dashed "average" is the train-proportion weighted one where the cells logged it (0.93, not 0.90).
    assert all(p.avg is not None and p.avg.mean == pytest.approx(0.93) for p in wb.points)


def test_fit_recovers_the_exponent_end_to_end_and_flags_three_sizes(study: StudyReport) -> None:
    fits = {(f.dataset, f.label): f for f in study.fits}
    for label in OBJECTIVES:
        fit = fits[("waterbirds", label)]
        assert fit.law is not None and fit.weighted and fit.n_sizes == 5 and fit.reason is None
        assert fit.law.beta == pytest.approx(0.35, abs=1e-3) and fit.law.C == pytest.approx(0.1, abs=1e-3)
        assert fit.law.A == pytest.approx(0.2, abs=1e-3) and fit.law.trend == "falling" and not fit.law.flagged
        assert 1 - fit.law(1_600_000) == pytest.approx(worst_at(1_600_000), abs=1e-4)
        assert fit.beta_interval is not None and fit.beta_interval[0] <= 0.35 <= fit.beta_interval[1]
        assert fit.slope is not None and fit.slope.slope < 0 and fit.p_falling == 1.0
        small = fits[("celeba", label)]
        # Three sizes: a slope, flagged (1 residual degree of freedom), and no power law.
        assert small.law is None and small.slope is not None and small.slope.flagged and small.reason is None
        assert any("1 residual degree(s) of freedom" in n for n in small.notes)
        assert any("power law needs ≥ 4 sizes" in n for n in small.notes)


def partial_study() -> StudyReport:
    cells = [CellRecord("wb/a", "waterbirds", "resnet", "", "resnet-10", 1_200_000, "erm", True),
             CellRecord("wb/b", "waterbirds", "resnet", "", "resnet-18", 11_200_000, "erm", True),
             CellRecord("wb/d", "waterbirds", "resnet", "", "resnet-34", 21_300_000, "erm", True)]
    trials = [trial("wb/a", params={"lr": "0.01"}, val_worst=0.7),
              final("wb/a", 0, 0.71, 0.90, 0.95, params={"lr": "0.02"}),
              final("wb/a", 0, 0.72, 0.91, 0.96, params={"lr": "0.02"}),  # the same seed again
              trial("wb/b", params={"lr": "0.05"}, val_worst=0.6, test_worst=0.55, test_avg=0.85, test_weighted=0.9),
              trial("wb/b", params={"lr": "0.07"}, val_worst=0.5, test_worst=0.65, test_avg=0.88),
              trial("wb/d", "FAILED"), trial("wb/d", "FAILED", "final"),
              trial("wb/orphan", val_worst=0.4)]
    return build_report(cells, trials, expected_cells=["wb/a", "wb/c", "wb/d"])


def test_partial_study_marks_search_only_and_missing_cells(tmp_path: Path) -> None:
    report = partial_study()
    rows = {r.cell_id: r for r in report.rows}
    a, b, c, d = rows["wb/a"], rows["wb/b"], rows["wb/c"], rows["wb/d"]
    assert a.status == FINAL and a.n_seeds == 1 and a.test_worst == Estimate(0.72, 1)
    assert any("seed=0 ran more than once" in n for n in a.notes)
    assert any("another config" in n and "lr" in n for n in a.notes)
    assert b.status == SEARCH_ONLY and b.n_seeds == 0 and b.chosen_config == {"lr": "0.05"}
    assert b.test_worst == Estimate(0.55, 1) and b.test_weighted == Estimate(0.9, 1)
    assert b.disparity is not None and b.disparity.mean == pytest.approx(0.55 / 0.85)
    assert any("chosen search trial" in n for n in b.notes)
    assert c.status == MISSING and c.trials_spent == 0 and c.chosen_config == {}
    assert d.status == MISSING and d.trials_spent == 1 and d.notes == ("no finished trial (2 failed)",)
    assert report.missing == ("wb/d", "wb/c")  # known cells by size, then cells with no metadata
    assert rows["wb/orphan"].status == SEARCH_ONLY and any("wb/orphan" in n for n in report.notes)
    assert [p.cell_id for s in report.series for p in s.points] == ["wb/a", "wb/b"]
    assert report.series[0].label == "erm+pt"
    assert report.fits[0].reason == "needs ≥ 3 sizes with final seeds (has 1; 1 more search only)"
    md = next(p for p in write_tables(report, tmp_path) if p.suffix == ".md").read_text()
    assert "55.0 (search trial)" in md and "72.0 (1 seed)" in md and "| missing |" in md


def test_write_tables_round_trips_through_pandas(study: StudyReport, tmp_path: Path) -> None:
    paths = write_tables(study, tmp_path / "tables")
    assert [p.name for p in paths] == ["cells.csv", "cells.md", "fits.csv"]
    frame, back = to_frame(study), pd.read_csv(paths[0])
    assert list(back.columns) == list(frame.columns) and len(back) == len(study.rows)
    numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    expected = {"test_worst_mean", "test_worst_std", "test_worst_low", "disparity_high", "val_worst_chosen"}
    assert expected <= set(numeric)
    np.testing.assert_allclose(back[numeric].to_numpy(), frame[numeric].to_numpy(), rtol=1e-12)
    assert back["n_params"].tolist() == [r.n_params for r in study.rows]
    assert json.loads(back["chosen_config"][0]) == {"batch_size": "64", "lr": "0.012"}
    fits = pd.read_csv(paths[2])
    assert fits.loc[fits["dataset"] == "waterbirds", "beta"].to_numpy() == pytest.approx([0.35, 0.35], abs=1e-3)
    assert fits.loc[fits["dataset"] == "celeba", "flagged"].tolist() == [True, True]
    md = paths[1].read_text()
    assert SELECTION_RULE in md and "t_{0.975, n-1}·std/√n" in md and "ddof = 1" in md
    assert "test worst-group % (mean ± std, 95% CI)" in md and "| 1.6M |" in md
    assert "lr=0.012, batch_size=64" in md


def test_formatting_helpers() -> None:
    assert [format_count(n) for n in (512, 850_000, 1_234_567, 11_689_512, 125_000_000, 1.3e9)] == [
        "512", "850K", "1.23M", "11.7M", "125M", "1.3B"]
    assert format_config({"lr": "0.0123456", "batch_size": "64", "opt": "sgd"}) == "lr=0.0123, batch_size=64, opt=sgd"
    assert format_config({str(i): "1" for i in range(8)}, limit=2) == "0=1, 1=1, …"
    assert format_estimate(Estimate(0.5, 3, 0.01, 0.48, 0.52)) == "50.0 ± 1.0 [48.0, 52.0]"
    assert format_estimate(None) == "—"


def test_a_cell_record_reads_back_from_its_parent_run_tags() -> None:
    record = CellRecord("wb/r18", "waterbirds", "resnet", "18", "resnet-18", 11_200_000, "groupdro", True)
    assert CellRecord.from_tags(record.tags()) == record
    assert "wgtune.weights" not in record.tags(), "nothing loaded, nothing tagged"
    loaded = dataclasses.replace(record, weights="torchvision:resnet18.IMAGENET1K_V1")
    assert CellRecord.from_tags(loaded.tags()) == loaded
    assert CellRecord.from_tags({}) == CellRecord.unknown("")
    balanced = dataclasses.replace(record, objective="erm_balanced", registered_objective="erm",
                                   environments="groups", sampler="group_balanced")
    assert CellRecord.from_tags(balanced.tags()) == balanced
    assert balanced.tags()["wgtune.sampler"] == "group_balanced"


def test_figures_are_written_for_full_partial_and_empty_studies(study: StudyReport, tmp_path: Path) -> None:
    from wgtune.report.figures import write_figures

    for name, report in (("full", study), ("partial", partial_study()), ("empty", build_report([], []))):
        assert list(pd.read_csv(write_tables(report, tmp_path / name)[0]).columns) == list(COLUMNS)
        paths = write_figures(report, tmp_path / name)
        assert sorted(p.name for p in paths) == ["accuracy_vs_size.png", "accuracy_vs_size.svg",
                                                 "error_vs_compute.png", "error_vs_compute.svg",
                                                 "search_curves.png", "search_curves.svg",
                                                 "worst_group_error_fit.png", "worst_group_error_fit.svg"]
        for path in paths:
            data = path.read_bytes()
            if path.suffix == ".png":
                assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
            else:
                assert ET.fromstring(data).tag.endswith("svg")
    # Same data, same SVG bytes: reports can be diffed.
    again = write_figures(study, tmp_path / "again")
    assert (tmp_path / "again/worst_group_error_fit.svg").read_bytes() == (
        tmp_path / "full/worst_group_error_fit.svg").read_bytes() and again


def test_report_imports_no_torch_ray_or_matplotlib(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import wgtune.report.build as r, wgtune.report.tables as tables, wgtune.tracking.records as rec\n"
        "heavy = ('torch', 'ray', 'matplotlib', 'mlflow', 'scipy', 'pandas')\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "rep = r.build_report([rec.CellRecord('c', 'd', 'f', '', 'm', 10, 'erm', False)], [])\n"
        f"tables.write_tables(rep, {str(tmp_path)!r})\n"
        "assert not [m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules]\n"
        "import wgtune.report.figures as f\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"f.write_figures(rep, {str(tmp_path)!r})\n"
        "assert not [m for m in ('torch', 'ray') if m in sys.modules]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_chosen_config_shows_what_was_searched_not_the_logged_trial_config() -> None:
    from wgtune.tracking.records import CONFIG_PREFIX

    cell = CellRecord("d/m1/erm", "d", "resnet", "", "m1", 1_000_000, "erm", False)
    trial = TrialRecord("r1", "d/m1/erm", "t1", "t1", "FINISHED", "tpe", "search",
                        {"lr": "0.01", f"{CONFIG_PREFIX}optimizer": "sgd"}, {"best/val_worst_acc": 0.5}, 1, 2, None)
    [row] = build_report([cell], [trial]).rows
    assert row.chosen_config == {"lr": "0.01"}
