"""Series are one parameterisation each: a ResNet depth ladder and a width ladder are two curves."""

from __future__ import annotations

from wgtune.report.build import build_report
from wgtune.report.scaling import size_axes
from wgtune.tracking.records import CellRecord, TrialRecord

# size: test worst-group accuracy, parameters
ACC = {"10": (0.60, 4_900_000), "18": (0.66, 11_200_000), "34": (0.70, 21_300_000), "18x0.5": (0.62, 2_800_000),
       "18x0.25": (0.58, 700_000)}


def _cells_and_trials(sizes: dict[str, tuple[float, int]], family: str = "resnet"
                      ) -> tuple[list[CellRecord], list[TrialRecord]]:
    cells, trials = [], []
    for size, (acc, n_params) in sizes.items():
        cid = f"wb/{family}-{size}/erm"
        cells.append(CellRecord(cid, "waterbirds", family, size, f"{family}-{size}", n_params, "erm", False))
        for seed, d in enumerate((-0.01, 0.0, 0.01)):
            trials.append(TrialRecord(f"{cid}/{seed}", cid, f"t{seed}", "", "FINISHED", "final", "final",
                                      {"seed": str(seed)}, {"best/test_worst_acc": acc + d}, seed, None, None))
    return cells, trials


def test_the_family_says_which_axis_a_size_varies() -> None:
    assert size_axes("resnet", "18x0.5") == {"depth": 18.0, "width": 0.5}
    assert size_axes("vit", "d6w256") == {"depth": 6.0, "embed_dim": 256.0}
    assert size_axes("resnet", "") is None and size_axes("nosuchfamily", "18") is None


def test_depth_and_width_ladders_are_separate_series_sharing_resnet_18() -> None:
    report = build_report(*_cells_and_trials(ACC), n_boot=20)
    series = {(s.axis, s.fixed): [p.model for p in s.points] for s in report.series}
    assert series == {("depth", "width 1"): ["resnet-10", "resnet-18", "resnet-34"],
                      ("width", "depth 18"): ["resnet-18x0.25", "resnet-18x0.5", "resnet-18"]}
    assert {s.label for s in report.series} == {"erm · depth (width 1)", "erm · width (depth 18)"}
    assert all(f.slope is not None and f.n_sizes == 3 for f in report.fits)


def test_sizes_that_share_no_axis_are_drawn_but_not_fitted() -> None:
    report = build_report(*_cells_and_trials({"10x0.25": (0.5, 1), "18x0.5": (0.6, 2), "34": (0.7, 3)}), n_boot=20)
    [series] = report.series
    [fit] = report.fits
    assert series.axis == "mixed" and len(series.points) == 3 and series.label == "erm"
    assert fit.slope is None and fit.reason is not None and "more than one axis" in fit.reason
