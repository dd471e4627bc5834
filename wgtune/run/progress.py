"""A study's progress per cell, and the view of it that scales to hundreds of cells.

`CellProgress` is one cell's counts: what the plan found in MLflow, counted on by a launch's events.
`study_view` summarises them in at most a screenful, the same for the live view of a launch
(`wgtune.run.display`) and for `wgtune status`: a headline of totals, then one line per group of
cells (data set · objective [· pretrained]: one scaling curve over model sizes), busy and failing
groups first, then the failing and running cells themselves. `render` is the every-cell table
(`wgtune status --all`). `summary_lines` is the compact summary a log gets (`display.LogDisplay`).

Spend and ETA are not computed here: `CellSpend` is the hook the compute accounting fills (device-hours
spent and allowed, and the seconds left, per cell id and for the study under `STUDY`); without it the
view has no spend columns, rather than invented ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

from wgtune.search.budget import CellBudget
from wgtune.tracking.records import ERROR_TAG

if TYPE_CHECKING:
    from wgtune.spec.grid import Cell

FAILING, RUNNING, WAITING, DONE = "failing", "running", "waiting", "done"
STATES = (FAILING, RUNNING, WAITING, DONE)
"""A cell's state, in the order the view lists them: what needs a look first."""

STUDY = ""
"""The key of the study's own entry in a spend mapping (cells are keyed by their id)."""


@dataclass(frozen=True)
class CellSpend:
    """Device-hours a cell (or, under `STUDY`, the study) has spent and may spend, and the seconds its
    remaining work should take. Filled by the compute accounting and cost estimates (issue 16, items 1-2);
    a None is shown as unknown."""

    spent_h: float
    limit_h: float | None = None
    eta_s: float | None = None


@dataclass
class CellProgress:
    """One cell: how far its search and final seeds are, and the best validation worst-group accuracy so far.

    Starts from the plan's `CellBudget` (what MLflow held when the launch began) and counts on.
    """

    label: str
    budget: CellBudget
    running: int = 0
    failed: int = 0
    best: float | None = None
    failing: bool = False
    """Too many of its trials failed in the last launch that ran it, which gave up on it (see their
    `wgtune.error`); the next launch tries it again with a fresh failure cap."""
    cell_id: str = ""
    group: str = ""
    """The cells' group in the view: data set · objective [· pretrained], one curve of the study."""
    model: str = ""
    allocation: str = ""
    """Adaptive allocation's decision on the cell (`search.allocation.ACTIONS`); empty under fixed allocation."""

    finished: int = field(init=False)
    """Search trials finished: the budget's `search_done`, then counted on."""
    final: int = field(init=False)
    """Final seeds done (`records.final_seed_done`): the budget's `final_done`, then counted on."""

    def __post_init__(self) -> None:
        self.finished = self.budget.search_done
        self.final = self.budget.final_done

    @classmethod
    def of(cls, cell: Cell, budget: CellBudget, **counts: object) -> CellProgress:
        """The row of a grid cell, named and grouped after it; `counts` as the constructor takes them."""
        group = " · ".join([cell.dataset, cell.objective] + (["pretrained"] if cell.pretrained else []))
        return cls(cell.label, budget, cell_id=cell.id, group=group, model=cell.model, **counts)  # type: ignore[arg-type]

    def record(self, value: float | None) -> None:
        """Count a finished search trial and keep the best value."""
        self.finished += 1
        if value is not None and value == value and (self.best is None or value > self.best):
            self.best = value

    def record_final(self) -> None:
        """Count a final seed that gave its result (finished, or diverged for good)."""
        self.final += 1

    @property
    def state(self) -> str:
        """failing (the launch gave up on it), running (a trial of it is), done (search and seeds), else waiting."""
        if self.failing:
            return FAILING
        if self.running > 0:
            return RUNNING
        if self.finished >= self.budget.search and self.final >= self.budget.final:
            return DONE
        return WAITING

    def snapshot(self) -> tuple:
        """What a change of the row is measured on (the log's summary prints only changed rows)."""
        return self.finished, self.final, self.running, self.failed, self.best, self.failing


def _fmt_best(best: float | None) -> str:
    return f"{best:.3f}" if best is not None else "-"


def _fmt_hours(spend: CellSpend | None) -> str:
    if spend is None:
        return ""
    limit = f"/{spend.limit_h:.1f}" if spend.limit_h is not None else ""
    return f"{spend.spent_h:.1f}{limit} h"


def fmt_duration(seconds: float | None) -> str:
    """`3d04h`, `2h05m`, `7m` or `45s`: an ETA at a glance; `?` when unknown."""
    if seconds is None or seconds != seconds:
        return "?"
    s = max(int(round(seconds)), 0)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def headline(rows: Iterable[CellProgress], study: str = "", spend: Mapping[str, CellSpend] | None = None) -> str:
    """One line of totals: cells by state, search and final trials done of their budgets, failed trials,
    and, when the accounting gives it, the study's spend against its ceiling and its ETA."""
    rows = list(rows)
    states = {s: 0 for s in STATES}
    for r in rows:
        states[r.state] += 1
    parts = [f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in states.items() if n) if rows else "0 cells",
             f"search {sum(r.finished for r in rows)}/{sum(r.budget.search for r in rows)}",
             f"final {sum(r.final for r in rows)}/{sum(r.budget.final for r in rows)}",
             f"{sum(r.failed for r in rows)} failed trials"]
    total = _study_spend(rows, spend)
    if total is not None:
        parts.append(f"spend {_fmt_hours(total)}" + (f", ETA {fmt_duration(total.eta_s)}" if total.eta_s is not None
                                                     else ""))
    return (f"study {study} · " if study else "") + " · ".join(parts)


def _study_spend(rows: list[CellProgress], spend: Mapping[str, CellSpend] | None) -> CellSpend | None:
    """The study's entry, else the sum of its cells' spend (no ceiling, no ETA: those are the accounting's)."""
    if not spend:
        return None
    if STUDY in spend:
        return spend[STUDY]
    known = [spend[r.cell_id] for r in rows if r.cell_id in spend]
    return CellSpend(sum(s.spent_h for s in known)) if known else None


@dataclass
class _Group:
    name: str
    rows: list[CellProgress]

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.rows)

    @property
    def order(self) -> tuple:
        return (-self.count(FAILING), -self.count(RUNNING), self.count(WAITING) == 0, self.name)


def group_lines(rows: Iterable[CellProgress], spend: Mapping[str, CellSpend] | None = None) -> list[str]:
    """A header and one line per group: its cells by state, trials done of budget, failed trials, its best
    cell; groups with failing, then running cells first, finished groups last."""
    groups: dict[str, _Group] = {}
    for r in rows:
        name = r.group or r.label
        groups.setdefault(name, _Group(name, [])).rows.append(r)
    ordered = sorted(groups.values(), key=lambda g: g.order)
    width = max([len(g.name) for g in ordered] + [5])
    spent = bool(spend)
    lines = [f"{'group':<{width}}  cells  fail  run  wait  done     search     final  failed  best"
             + ("  spend" if spent else "")]
    for g in ordered:
        best = max((r for r in g.rows if r.best is not None), key=lambda r: r.best, default=None)
        shown = f"{_fmt_best(best.best)} {best.model}" if best is not None else "-"
        search = f"{sum(r.finished for r in g.rows)}/{sum(r.budget.search for r in g.rows)}"
        final = f"{sum(r.final for r in g.rows)}/{sum(r.budget.final for r in g.rows)}"
        line = (f"{g.name:<{width}}  {len(g.rows):>5}  {g.count(FAILING):>4}  {g.count(RUNNING):>3}  "
                f"{g.count(WAITING):>4}  {g.count(DONE):>4}  {search:>9}  {final:>8}  {sum(r.failed for r in g.rows):>6}  "
                f"{shown}")
        if spent:
            known = [spend[r.cell_id] for r in g.rows if r.cell_id in spend]  # type: ignore[index]
            line += f"  {sum(s.spent_h for s in known):.1f} h" if known else "  -"
        lines.append(line)
    return lines


def cell_line(r: CellProgress, width: int, spend: Mapping[str, CellSpend] | None = None) -> str:
    """One cell's row: trials done of budget, running, failed, best, [spend, ETA], and FAILING with why."""
    done, final = f"{r.finished}/{r.budget.search}", f"{r.final}/{r.budget.final}"
    line = f"{r.label:<{width}}  {done:>9}  {final:>7}  {r.running:>3}  {r.failed:>4}  {_fmt_best(r.best):>5}"
    if spend:
        s = spend.get(r.cell_id)
        line += f"  {_fmt_hours(s) or '-':>12}  {fmt_duration(s.eta_s) if s and s.eta_s is not None else '-':>6}"
    if r.failing:
        line += f"  FAILING: too many failed trials, see their {ERROR_TAG} in MLflow"
    return line


def cell_header(width: int, spend: Mapping[str, CellSpend] | None = None) -> str:
    """The header over `cell_line`s."""
    return (f"{'cell':<{width}}  {'search':>9}  {'final':>7}  {'run':>3}  {'fail':>4}  {'best':>5}"
            + (f"  {'spend':>12}  {'ETA':>6}" if spend else ""))


def render(rows: Iterable[CellProgress], title: str = "", spend: Mapping[str, CellSpend] | None = None) -> str:
    """Every cell, one line each, with a total line (`wgtune status --all`; best is validation worst-group)."""
    rows = list(rows)
    width = max([len(r.label) for r in rows] + [5])
    lines = [title] if title else []
    lines.append(cell_header(width, spend))
    lines.extend(cell_line(r, width, spend) for r in rows)
    total = f"{sum(r.finished for r in rows)}/{sum(r.budget.search for r in rows)}"
    finals = f"{sum(r.final for r in rows)}/{sum(r.budget.final for r in rows)}"
    running, failed = sum(r.running for r in rows), sum(r.failed for r in rows)
    lines.append(f"{'total':<{width}}  {total:>9}  {finals:>7}  {running:>3}  {failed:>4}")
    return "\n".join(lines)


def study_view(rows: Iterable[CellProgress], study: str = "", max_lines: int = 40,
               spend: Mapping[str, CellSpend] | None = None) -> list[str]:
    """The view in at most `max_lines` lines (>= 4): the headline; the groups (busy and failing first);
    then the cells, failing, running, waiting, done, as many as fit (a small study shows every cell).
    What does not fit is counted in a last line, never dropped silently."""
    rows = list(rows)
    max_lines = max(max_lines, 4)
    lines = [headline(rows, study, spend)]
    groups = group_lines(rows, spend)
    busy = sorted(rows, key=lambda r: (STATES.index(r.state), r.label))
    # Room for the groups first (one line each is the study at a glance), the cells below them.
    room = max_lines - 1
    shown_groups = groups[:room] if len(groups) <= room else groups[:room - 1]
    lines += shown_groups
    hidden_groups = len(groups) - len(shown_groups)
    room = max_lines - len(lines) - (1 if hidden_groups else 0)
    if busy and room >= 3:
        width = max(len(r.label) for r in busy)
        fit = busy if len(busy) <= room - 2 else busy[:room - 3]
        lines += ["", cell_header(width, spend)] + [cell_line(r, width, spend) for r in fit]
        hidden_cells = len(busy) - len(fit)
    else:
        hidden_cells = len(busy)
    if hidden_groups or hidden_cells:
        more = [f"{hidden_groups} more groups" if hidden_groups else "",
                f"{hidden_cells} more cells" if hidden_cells else ""]
        lines.append(f"… {' and '.join(m for m in more if m)} (wgtune status --all lists every cell)")
    return lines


def summary_lines(rows: Iterable[CellProgress], changed: Iterable[CellProgress], stamp: str,
                  spend: Mapping[str, CellSpend] | None = None, max_cells: int = 30) -> list[str]:
    """The log's compact summary: the headline, then only the cells that changed since the last summary
    or are failing (failing first), at most `max_cells` of them plus a count of the rest."""
    rows = list(rows)
    chosen = {r.label: r for r in changed}
    chosen.update({r.label: r for r in rows if r.failing})
    listed = sorted(chosen.values(), key=lambda r: (STATES.index(r.state), r.label))
    lines = [f"[progress {stamp}] {headline(rows, spend=spend)}"]
    if not listed:
        return lines
    width = max(len(r.label) for r in listed[:max_cells])
    lines.append(f"  {cell_header(width, spend)}")
    lines += [f"  {cell_line(r, width, spend)}" for r in listed[:max_cells]]
    if len(listed) > max_cells:
        lines.append(f"  … and {len(listed) - max_cells} more changed or failing cells")
    return lines
