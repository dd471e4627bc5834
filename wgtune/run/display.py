"""How a running launch shows its progress: a live view on a terminal, compact summaries in a log.

`StudyProgress` turns the launch's trial events into counts on the cells' `CellProgress` rows and into
event lines (`[3/20] waterbirds · resnet-18 · erm: trial … val worst-group 0.712`), and hands both to a
display:

- `LiveDisplay` (output is a terminal): the event lines scroll, and under them `progress.study_view`,
  at most a screenful, is redrawn in place (ANSI cursor-up and erase-below, no other dependency) at
  most every `refresh_s`;
- `LogDisplay` (a log file, CI): the event lines as they come and, at most every `every_s` and only if
  something changed, `progress.summary_lines`: the totals plus the cells that changed or fail. Its size
  grows with the trials run, not with the grid times the hours (the old table: every cell every 30 s).

Ray-free, so the views are tested with synthetic events on grids of hundreds of cells; the Tune callback
(`callbacks.ProgressCallback`) only translates Tune's trials into these calls.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from typing import Callable, Mapping, Protocol, TextIO

from wgtune.run.progress import CellProgress, CellSpend, render, study_view, summary_lines

SpendSource = Callable[[], Mapping[str, CellSpend]]
"""Where the view reads spend and ETA from at each redraw (the compute accounting's hook; none: no columns)."""

PROGRESS_MODES = ("auto", "live", "log")
"""`auto`: live on a terminal (stdout is a tty), a log otherwise."""
LOG_SUMMARY_EVERY_S = 300.0
"""The log's default least time between two summaries (`wgtune launch --progress-every`)."""
LIVE_REFRESH_S = 1.0


class Display(Protocol):
    """Where a launch's progress goes: event lines, periodic ticks, and the end."""

    def line(self, text: str) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...


class LiveDisplay:
    """Event lines scrolling above the study's view, which is redrawn in place on a terminal.

    Every frame line is cut to the terminal's width, so none wraps and cursor-up erases exactly the
    frame; the frame is at most the terminal's height less one line.
    """

    def __init__(self, rows: Mapping[str, CellProgress], study: str = "", stream: TextIO | None = None,
                 refresh_s: float = LIVE_REFRESH_S, spend: SpendSource | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 size: Callable[[], tuple[int, int]] = lambda: tuple(shutil.get_terminal_size((100, 30)))) -> None:
        self.rows, self.study, self.stream = rows, study, stream or sys.stdout
        self.refresh_s, self.spend, self.clock, self.size = refresh_s, spend, clock, size
        self._height = 0  # lines of the frame on screen, below the cursor's line of origin
        self._drawn_at: float | None = None

    def frame(self) -> list[str]:
        """The view as it fits the terminal now."""
        columns, lines = self.size()
        view = study_view(self.rows.values(), self.study, max_lines=max(lines - 1, 4),
                          spend=self.spend() if self.spend else None)
        return [_fit(line, columns - 1) for line in view]

    def _erase(self) -> str:
        return f"\r\x1b[{self._height}A\x1b[J" if self._height else ""

    def _draw(self, before: str = "") -> None:
        frame = self.frame()
        self.stream.write(self._erase() + before + "".join(f"{line}\n" for line in frame))
        self.stream.flush()
        self._height, self._drawn_at = len(frame), self.clock()

    def line(self, text: str) -> None:
        """Print `text` above the view, then redraw the view (its counts changed with the event)."""
        self._draw(before=f"{text}\n")

    def tick(self) -> None:
        if self._drawn_at is None or self.clock() - self._drawn_at >= self.refresh_s:
            self._draw()

    def close(self) -> None:
        """Leave the last view on screen, titled: the study's state when the launch's run ended."""
        self._draw(before="study finished\n")
        self._height = 0


class LogDisplay:
    """Event lines as they come; a compact summary at most every `every_s`, only when something changed."""

    def __init__(self, rows: Mapping[str, CellProgress], print_line: Callable[[str], None],
                 every_s: float = LOG_SUMMARY_EVERY_S, spend: SpendSource | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 stamp: Callable[[], str] = lambda: dt.datetime.now().strftime("%H:%M")) -> None:
        self.rows, self.print_line, self.every_s = rows, print_line, every_s
        self.spend, self.clock, self.stamp = spend, clock, stamp
        self._seen = {cell: row.snapshot() for cell, row in rows.items()}
        self._summary_at = clock()

    def line(self, text: str) -> None:
        self.print_line(text)

    def changed(self) -> list[CellProgress]:
        """The rows whose counts moved since the last summary."""
        return [row for cell, row in self.rows.items() if row.snapshot() != self._seen.get(cell)]

    def tick(self) -> None:
        if self.clock() - self._summary_at < self.every_s:
            return
        self._summary_at = self.clock()
        changed = self.changed()
        if not changed:
            return  # the last summary still holds: a stalled study does not fill its log
        self._seen = {cell: row.snapshot() for cell, row in self.rows.items()}
        spend = self.spend() if self.spend else None
        for text in summary_lines(self.rows.values(), changed, self.stamp(), spend):
            self.print_line(text)

    def close(self) -> None:
        """Every cell once, as the launch's record in its log."""
        self.print_line(render(self.rows.values(), title="study finished",
                               spend=self.spend() if self.spend else None))


def make_display(mode: str, rows: Mapping[str, CellProgress], print_line: Callable[[str], None],
                 every_s: float = LOG_SUMMARY_EVERY_S, study: str = "", spend: SpendSource | None = None,
                 stream: TextIO | None = None) -> Display:
    """The display for `mode` (`PROGRESS_MODES`): `auto` is live when `stream` (default stdout) is a terminal."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode {mode!r}: valid: {', '.join(PROGRESS_MODES)}")
    stream = stream or sys.stdout
    if mode == "live" or (mode == "auto" and stream.isatty()):
        return LiveDisplay(rows, study, stream, spend=spend)
    return LogDisplay(rows, print_line, every_s, spend=spend)


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[:max(width - 1, 0)] + "…"


class StudyProgress:
    """A launch's trial events, counted on the cells' rows and told to a display (the messages of a launch)."""

    def __init__(self, rows: dict[str, CellProgress], display: Display) -> None:
        self.rows, self.display = rows, display

    def started(self, cell: str) -> None:
        self.rows[cell].running += 1

    def finished(self, cell: str, trial_id: str, value: float | None) -> None:
        """A search trial finished with its validation worst-group accuracy (None: never reported)."""
        row = self.rows[cell]
        row.running -= 1
        row.record(value)
        shown = f"{value:.3f}" if value is not None else "n/a"
        best = f" (best {row.best:.3f})" if row.best is not None else ""
        self.display.line(f"[{row.finished}/{row.budget.search}] {row.label}: trial {trial_id} val worst-group {shown}{best}")

    def final_finished(self, cell: str, seed: object, test_worst: float) -> None:
        """A final seed's re-training finished with its test worst-group accuracy."""
        row = self.rows[cell]
        row.running -= 1
        row.record_final()
        self.display.line(f"[final {row.final}/{row.budget.final}] {row.label}: seed {seed} test worst-group {test_worst:.3f}")

    def diverged(self, cell: str, trial_id: str, error: str, final_seed: object | None = None) -> None:
        """A trial's loss diverged (`error`: the exception's line); not retried. A final seed's is done for good."""
        row = self.rows[cell]
        row.running -= 1
        row.failed += 1
        if final_seed is not None:
            row.record_final()  # done: that seed's result (records.final_seed_done)
            then = f"seed {final_seed} stays diverged (re-training it would diverge again)"
        else:
            then = "no more trials for this cell" if row.failing else "a new trial replaces it"
        self.display.line(f"[diverged] {row.label}: trial {trial_id}: {error}; "
                          f"not retried (it would diverge again from its checkpoint); {then}")

    def retrying(self, cell: str, trial_id: str, error: str, epoch: int, attempt: str) -> None:
        """An attempt failed and Tune retries it from its last checkpoint (`attempt`: `2/3`)."""
        row = self.rows[cell]
        row.running -= 1  # back in Tune's queue; `started` counts it again
        self.display.line(f"[retrying] {row.label}: trial {trial_id} failed: {error}; "
                          f"retrying from epoch {epoch} (attempt {attempt})")

    def errored(self, cell: str, trial_id: str, attempts: int, error: str) -> None:
        """A trial failed for good, after `attempts` attempts."""
        row = self.rows[cell]
        row.running -= 1
        row.failed += 1
        # The router has already decided (Tune tells it before the callbacks): replace, or give up.
        then = ("no more trials for this cell: as many of its trials failed as it had to run" if row.failing
                else "a new trial replaces it")
        self.display.line(f"[failed] {row.label}: trial {trial_id} after {attempts} attempt{'s' if attempts != 1 else ''}: "
                          f"{error}; {then}")

    def tick(self) -> None:
        self.display.tick()

    def close(self) -> None:
        self.display.close()
