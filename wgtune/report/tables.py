"""The report as tables: `cells.csv` (every number), `cells.md` (for people, with the rules), `fits.csv`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from wgtune.report.build import FINAL, FIT_SCALE, SEARCH_ONLY, SEARCH_ONLY_NOTE, Estimate, StudyReport

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "format_config", "format_count", "format_estimate", "markdown", "to_frame", "write_tables"]

_ESTIMATES = (("test_worst", "test worst-group %"), ("test_avg", "test average %"),
              ("test_weighted", "test train-weighted average %"), ("disparity", "disparity worst/average"))
COLUMNS = ("cell_id", "dataset", "model", "family", "n_params", "objective", "pretrained", "status", "n_seeds",
           *(f"{name}_{part}" for name, _ in _ESTIMATES for part in ("mean", "std", "low", "high")),
           "val_worst_chosen", "trials_spent", "chosen_run_id", "chosen_config", "notes")
"""The columns of `cells.csv`, in order; an empty study still gets them as a header."""


def to_frame(report: StudyReport) -> pd.DataFrame:
    """The report's rows as a DataFrame: one column per number (NaN where absent), the config as JSON."""
    import pandas as pd

    records = []
    for row in report.rows:
        record: dict[str, Any] = dict(
            cell_id=row.cell_id, dataset=row.dataset, model=row.model, family=row.family,
            n_params=row.n_params, objective=row.objective, pretrained=row.pretrained, status=row.status,
            n_seeds=row.n_seeds)
        for name, _ in _ESTIMATES:
            value: Estimate | None = getattr(row, name)
            for part in ("mean", "std", "low", "high"):
                got = None if value is None else getattr(value, part)
                record[f"{name}_{part}"] = math.nan if got is None else got
        record.update(val_worst_chosen=math.nan if row.chosen_val_worst is None else row.chosen_val_worst,
                      trials_spent=row.trials_spent, chosen_run_id=row.chosen_run_id or "",
                      chosen_config=json.dumps(row.chosen_config, sort_keys=True), notes="; ".join(row.notes))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def write_tables(report: StudyReport, out_dir: str | Path) -> list[Path]:
    """Write `cells.csv` (every number), `cells.md` (readable, with the rules) and `fits.csv`."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cells.csv", out / "cells.md", out / "fits.csv"]
    to_frame(report).to_csv(paths[0], index=False)
    paths[1].write_text(markdown(report), encoding="utf-8")
    fits = [dict(dataset=f.dataset, series=f.label, n_sizes=f.n_sizes, weighted=f.weighted,
                 **{k: getattr(f.law, k) if f.law else None for k in ("A", "A_se", "beta", "beta_se", "C", "C_se")},
                 scale=FIT_SCALE, reason=f.reason or "", notes="; ".join(f.notes)) for f in report.fits]
    pd.DataFrame(fits, columns=["dataset", "series", "n_sizes", "weighted", "A", "A_se", "beta", "beta_se",
                                "C", "C_se", "scale", "reason", "notes"]).to_csv(paths[2], index=False)
    return paths


def markdown(report: StudyReport) -> str:
    """The report as Markdown: the selection rule and interval definition, a cell table, a fit table."""
    ci = f"{100 * report.confidence:g}% CI"
    head = ["dataset", "model", "params", "objective", "pretrained", "status", "seeds",
            *(f"{title} (mean ± std, {ci})" for _, title in _ESTIMATES),
            "val worst-group % (chosen)", "trials spent", "chosen config", "notes"]
    lines = ["# wgtune report", "", f"- Model selection: {report.rule}.", f"- Intervals: {report.interval}.",
             f"- \"{SEARCH_ONLY}\": {SEARCH_ONLY_NOTE.split(': ', 1)[1]}.",
             f"- Missing cells: {', '.join(report.missing) or 'none'}.", *(f"- {n}" for n in report.notes), "",
             _md_row(head), _md_row(["---"] * len(head))]
    for row in report.rows:
        cells = [row.dataset or "?", row.model or row.cell_id, format_count(row.n_params) if row.n_params else "?",
                 row.objective or "?", ("yes" if row.pretrained else "no") if row.dataset else "?", row.status,
                 str(row.n_seeds)]
        cells += [format_estimate(getattr(row, name), 1.0 if name == "disparity" else 100.0, row.status)
                  for name, _ in _ESTIMATES]
        cells += ["—" if row.chosen_val_worst is None else f"{100 * row.chosen_val_worst:.1f}",
                  str(row.trials_spent), format_config(row.chosen_config) or "—", "; ".join(row.notes)]
        lines.append(_md_row(cells))
    lines += ["", f"## Power-law fits of test worst-group error: L(N) = A·(N/{format_count(FIT_SCALE)})^(-β) + C",
              "", "Over the cells with final seeds (≥ 4 sizes); weighted by each mean's standard error when every "
              "point has ≥ 2 seeds; ± is the fit's standard error.", "",
              _md_row(["dataset", "series", "sizes", "A", "β", "C", "weighted", "notes"]), _md_row(["---"] * 8)]
    for fit in report.fits:
        law = fit.law
        nums = (["—"] * 3 if law is None
                else [_pm(law.A, law.A_se), _pm(law.beta, law.beta_se), _pm(law.C, law.C_se)])
        lines.append(_md_row([fit.dataset, fit.label, str(fit.n_sizes), *nums, "yes" if fit.weighted else "no",
                              "; ".join(filter(None, (fit.reason, *fit.notes)))]))
    return "\n".join(lines) + "\n"


def format_count(n: float) -> str:
    """A parameter count for people: 512, 850K, 1.2M, 11.7M, 1.3B."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}" if n / size < 100 else f"{n / size:.0f}{suffix}"
    return f"{n:g}"


def format_config(config: Mapping[str, str], limit: int = 6) -> str:
    """`lr=0.012, batch_size=64, …`: numbers to 3 significant digits, at most `limit` entries."""
    parts = [f"{k}={_short(v)}" for k, v in list(config.items())[:limit]]
    return ", ".join(parts + (["…"] if len(config) > limit else []))


def format_estimate(value: Estimate | None, factor: float = 100.0, status: str = FINAL) -> str:
    """`78.3 ± 1.2 [75.1, 81.5]` (× factor); one run: `78.3 (1 seed)`, or `(search trial)` for search only."""
    if value is None:
        return "—"
    digits = 1 if factor >= 10 else 3
    text = f"{factor * value.mean:.{digits}f}"
    if value.std is None:
        return f"{text} ({'search trial' if status == SEARCH_ONLY else '1 seed'})"
    assert value.low is not None and value.high is not None
    return (f"{text} ± {factor * value.std:.{digits}f} "
            f"[{factor * value.low:.{digits}f}, {factor * value.high:.{digits}f}]")


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.lstrip("-").isdigit() else f"{number:.3g}"


def _pm(value: float, se: float | None) -> str:
    return f"{value:.3g} ± {se:.2g}" if se is not None else f"{value:.3g} (se undetermined)"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
