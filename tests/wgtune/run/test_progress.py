"""The progress of a launch on a grid of 130 cells, in both displays, from stand-in trials.

A seeded simulation plays one hour of a study (8 trials at a time, 1 to 10 minutes each, some failing,
retried or diverging, one cell given up on) through `display.StudyProgress`, the seam the Tune callback
feeds, with a fake clock: what a terminal would show (the ANSI stream replayed on a virtual screen) and
what a log gets (its bytes per hour) are checked against the rows' true counts.
"""

from __future__ import annotations

import io
import random
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgtune.run.display import LiveDisplay, LogDisplay, StudyProgress
from wgtune.run.plan import plan_cells
from wgtune.run.progress import DONE, FAILING, RUNNING, STATES, STUDY, WAITING, CellProgress, CellSpend, study_view
from wgtune.spec.grid import load_grid

GRID = """\
study: progress
study_dir: study
data_root: data
datasets: [waterbirds, celebA]
models: {resnet: [10x0.25, 10x0.5, 18x0.5, 18, 34, 50, 101], vit: [d6w128, tiny, small, base, large, base-p32]}
objectives: {erm: {}, erm_balanced: {objective: erm, sampler: group_balanced}, irm: {}, ilc: {}, groupdro: {}}
search: {num_samples: 20}
final_seeds: 5
"""
HOUR = 3600
COLUMNS, LINES = 120, 40


def grid_rows(tmp_path: Path) -> dict[str, CellProgress]:
    (tmp_path / "grid.yaml").write_text(GRID)
    rows = {c.cell.id: CellProgress.of(c.cell, c.budget) for c in plan_cells(load_grid(tmp_path / "grid.yaml"))}
    assert len(rows) == 130
    return rows


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Simulation:
    """One hour of a study: 8 trials at a time over the cells in plan order, events at their times."""

    progress: StudyProgress
    clock: Clock
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    trials: int = 0

    def run(self, seconds: int = HOUR) -> None:
        rows = self.progress.rows
        queue = [cell for _ in range(20) for cell in rows]  # round robin, as the router spreads trials
        running: list[tuple[float, str, str]] = []
        given_up = list(rows)[17]
        for t in range(int(self.clock.now), int(self.clock.now) + seconds):
            self.clock.now = float(t)
            for end, cell, trial in [r for r in running if r[0] <= t]:
                running.remove((end, cell, trial))
                self.finish(cell, trial)
            while len(running) < 8 and queue:
                cell = queue.pop(0)
                if rows[cell].failing:
                    continue
                self.trials += 1
                trial = f"{self.trials:05d}"
                self.progress.started(cell)
                running.append((t + self.rng.uniform(60, 600), cell, trial))
            if t == 1800:
                rows[given_up].failing = True  # what `callbacks.cell_failing` does when the router gives up
            self.progress.tick()

    def finish(self, cell: str, trial: str) -> None:
        draw = self.rng.random()
        if draw < 0.05:
            self.progress.errored(cell, trial, 2, "RuntimeError: CUDA out of memory")
        elif draw < 0.07:
            self.progress.diverged(cell, trial, "DivergedError: loss is nan at epoch 3")
        elif draw < 0.10:
            self.progress.retrying(cell, trial, "ActorDiedError: worker died", 4, "2/3")
            self.progress.started(cell)
            self.progress.finished(cell, trial, self.rng.uniform(0.3, 0.9))
        else:
            self.progress.finished(cell, trial, self.rng.uniform(0.3, 0.9))


class Terminal:
    """A virtual screen replaying what LiveDisplay writes: text, newline, carriage return, cursor up (CSI n A),
    erase below (CSI J). Anything else is an error: the view must use nothing a terminal might not have."""

    TOKEN = re.compile(r"\x1b\[(\d*)([AJ])|\r|\n|[^\x1b\r\n]+|\x1b")

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0

    def feed(self, text: str) -> None:
        for m in self.TOKEN.finditer(text):
            token = m.group(0)
            if m.group(2) == "A":
                self.row -= int(m.group(1) or 1)
                assert self.row >= 0, "the cursor went above what the view wrote"
            elif m.group(2) == "J":
                self.lines[self.row:] = [""]
            elif token == "\r":
                self.lines[self.row] = ""  # followed by a rewrite of the whole line in this display
            elif token == "\n":
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append("")
            elif token == "\x1b":
                raise AssertionError(f"unexpected escape sequence in {text[m.start():m.start() + 10]!r}")
            else:
                self.lines[self.row] += token


class Stream(io.StringIO):
    """What a terminal receives, fed to the virtual screen, with the height of every frame drawn."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__()
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.terminal.feed(text)
        return super().write(text)


def test_the_live_view_redraws_one_screenful_in_place_under_the_event_lines(tmp_path):
    rows, clock, terminal = grid_rows(tmp_path), Clock(), Terminal()
    display = LiveDisplay(rows, "progress", Stream(terminal), refresh_s=1.0, clock=clock, size=lambda: (COLUMNS, LINES))
    sim = Simulation(StudyProgress(rows, display), clock)
    events = 0
    original_line = display.line

    def line(text: str) -> None:
        nonlocal events
        events += 1
        original_line(text)
        check_screen(terminal, rows, events)

    display.line = line  # type: ignore[method-assign]
    sim.run(HOUR)
    display.close()

    screen = terminal.lines[:-1]  # the cursor rests on an empty line below the last frame
    frame_start = screen.index("study finished") + 1
    assert frame_start == events + 1, "every event line stays on screen, in order, above one frame"
    frame = screen[frame_start:]
    assert 4 <= len(frame) <= LINES - 1 and all(len(line) < COLUMNS for line in frame)
    assert frame == [line if len(line) < COLUMNS else line[:COLUMNS - 2] + "…"
                     for line in study_view(rows.values(), "progress", max_lines=LINES - 1)]


def check_screen(terminal: Terminal, rows: dict[str, CellProgress], events: int) -> None:
    """After each event: the event lines, then exactly one frame whose headline has the rows' true counts."""
    screen = terminal.lines[:-1]
    frame = screen[events:]
    assert len(frame) <= LINES - 1 and all(len(line) < COLUMNS for line in frame)
    counts = {s: sum(r.state == s for r in rows.values()) for s in STATES}
    expected = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    assert frame[0].startswith(f"study progress · 130 cells: {expected} · search "
                               f"{sum(r.finished for r in rows.values())}/2600"), frame[0]
    assert not any(line.startswith("study progress") for line in screen[:events]), "an old frame was left behind"


def test_the_view_lists_failing_then_running_cells_first_and_counts_what_does_not_fit(tmp_path):
    rows, clock = grid_rows(tmp_path), Clock()
    Simulation(StudyProgress(rows, LogDisplay(rows, lambda _: None, clock=clock)), clock).run(HOUR // 2 + 1)
    states = [r.state for r in rows.values()]
    assert states.count(FAILING) == 1 and states.count(RUNNING) == 8 and WAITING in states

    for height in (4, 8, 20, 40, 200):
        view = study_view(rows.values(), max_lines=height)
        assert len(view) <= max(height, 4)
        cells = [line for line in view if line.split("  ")[0] in {r.label for r in rows.values()}]
        listed = [next(r for r in rows.values() if r.label == line.split("  ")[0]) for line in cells]
        assert [STATES.index(r.state) for r in listed] == sorted(STATES.index(r.state) for r in listed)
        hidden = re.search(r"(\d+) more cells", view[-1])
        assert len(listed) + (int(hidden.group(1)) if hidden else 0) == 130, "every cell is shown or counted"
        if height >= 20:
            assert "FAILING" in view[view.index(next(line for line in view if line.startswith("cell"))) + 1]
    groups = study_view(rows.values(), max_lines=40)[2:12]
    failing_group = next(r for r in rows.values() if r.failing).group
    assert groups[0].startswith(failing_group), "the group of the failing cell comes first"


def test_the_log_keeps_every_trial_line_and_its_summaries_stay_small_on_130_cells(tmp_path):
    rows, clock, lines = grid_rows(tmp_path), Clock(), []
    states = [{r.label: r.snapshot() for r in rows.values()}]  # the rows when each summary was printed

    def print_line(text: str) -> None:
        if text.startswith("[progress "):
            states.append({r.label: r.snapshot() for r in rows.values()})
        lines.append(text)

    display = LogDisplay(rows, print_line, every_s=300, clock=clock, stamp=lambda: f"{clock.now:.0f}")
    sim = Simulation(StudyProgress(rows, display), clock)
    sim.run(HOUR)

    summaries = [i for i, line in enumerate(lines) if line.startswith("[progress ")]
    events = [line for line in lines if re.match(r"\[(\d+/\d+|failed|diverged|retrying)\] ", line)]
    finished = sum(r.finished for r in rows.values())
    assert sum(bool(re.match(r"\[\d+/\d+\]", line)) for line in events) == finished, "one line per finished trial"
    assert 10 <= len(summaries) <= HOUR // 300
    total = sum(len(line) + 1 for line in lines)
    summary_bytes = total - sum(len(line) + 1 for line in events)
    # The table this replaced printed every cell every 30 s: 120 tables of 130+ lines an hour, ~1 MB.
    assert total < 48 * 1024 and summary_bytes < 24 * 1024, (total, summary_bytes)

    # Each summary lists exactly the cells that changed since the one before, and the failing ones.
    failing = {r.label for r in rows.values() if r.failing}
    for k, at in enumerate(summaries):
        listed = set()
        for line in lines[at + 2:]:  # after the header
            if not line.startswith("  "):
                break
            listed.add(line[2:].split("  ")[0])
        changed = {label for label, snap in states[k + 1].items() if snap != states[k][label]}
        was_failing = {label for label in failing if states[k + 1][label][-1]}
        assert listed == changed | was_failing, (k, listed ^ (changed | was_failing))
        assert lines[at].startswith(f"[progress {300 * (k + 1)}] 130 cells: ")


def test_a_stalled_study_adds_nothing_to_its_log(tmp_path):
    rows, clock, lines = grid_rows(tmp_path), Clock(), []
    display = LogDisplay(rows, lines.append, every_s=300, clock=clock)
    progress = StudyProgress(rows, display)
    for cell in list(rows)[:8]:
        progress.started(cell)
    for t in range(0, 4 * HOUR, 5):
        clock.now = float(t)
        progress.tick()

    assert len([line for line in lines if line.startswith("[progress ")]) == 1, "one summary: when 8 trials started"


def test_spend_and_eta_are_shown_only_when_the_accounting_gives_them(tmp_path):
    rows = grid_rows(tmp_path)
    some = list(rows)[0]
    plain = "\n".join(study_view(rows.values(), max_lines=40))
    assert "spend" not in plain and "ETA" not in plain, "no invented cost numbers"

    spend = {STUDY: CellSpend(12.0, 50.0, 7500.0), some: CellSpend(1.5, 4.0, 600.0)}
    view = study_view(rows.values(), max_lines=200, spend=spend)

    assert "spend 12.0/50.0 h, ETA 2h05m" in view[0]
    [row] = [line for line in view if line.startswith(rows[some].label + " ")]
    assert "1.5/4.0 h" in row and "10m" in row


@pytest.mark.parametrize("mode, kind", [("live", LiveDisplay), ("log", LogDisplay)])
def test_the_mode_picks_the_display(tmp_path, mode, kind):
    from wgtune.run.display import make_display

    assert isinstance(make_display(mode, grid_rows(tmp_path), print, stream=io.StringIO()), kind)
    assert isinstance(make_display("auto", {}, print, stream=io.StringIO()), LogDisplay), "a file is not a terminal"
    with pytest.raises(ValueError, match="valid: auto, live, log"):
        make_display("fancy", {}, print)


def test_states_of_a_cell():
    from wgtune.search.budget import CellBudget

    row = CellProgress("c", CellBudget(search=2, final=1))
    assert row.state == WAITING
    row.running = 1
    assert row.state == RUNNING
    row.running = 0
    row.record(0.5)
    row.record(None)
    row.record_final()
    assert row.state == DONE and row.best == 0.5
    row.failing = True
    assert row.state == FAILING


def standin_trial(config: dict, cells: dict) -> None:
    """No training: one epoch whose value depends on the learning rate (the router's stand-in trial)."""
    from ray import tune

    value = 0.5 + 0.1 * float(config["params"]["lr"])
    tune.report({"epoch": 1.0, "val/worst_acc": value, "best/val_worst_acc": value, "best/epoch": 1.0})


@pytest.mark.slow
def test_a_launch_of_100_cells_logs_one_line_per_trial_summaries_and_every_cell_at_the_end(tmp_path):
    """The real driver, router, tracker and Tune callbacks, with a stand-in trial, in log mode."""
    import ray

    from tests.wgtune.studies import planned_study
    from wgtune.run.driver import RunSettings, run_experiment

    names = {f"o{k}": ["erm", "groupdro"][k % 2] for k in range(10)}
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(f"""\
        study: progress-launch
        study_dir: study
        datasets: [spurious_digits]
        models: {{resnet: [10x0.25, 10x0.5, 12x0.25, 12x0.5, 14x0.25, 14x0.5, 18x0.25, 18x0.5, 26x0.25, 26x0.5]}}
        objectives: {{{", ".join(f"{k}: {{objective: {v}}}" for k, v in names.items())}}}
        epochs: 1
        final_seeds: 0
        search: {{num_samples: 1, max_concurrent: 2, n_startup: 1, max_failures: 0}}
        resources: {{cpu: 1}}
        """))
    grid = load_grid(tmp_path / "grid.yaml")
    tracker, cells = planned_study(grid)
    assert len(cells) == 100
    lines: list[str] = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Summaries at most every 0.2 s: on a quiet machine the 100 stand-in trials take ~4 s in all.
        settings = RunSettings.for_grid(grid, "progress", progress="log", progress_every_s=0.2)
        rows = run_experiment(cells, tracker, settings, lines.append, trial_fn=standin_trial)
    finally:
        ray.shutdown()
        tracker.close()

    trial_lines = [line for line in lines if re.match(r"\[1/1\] spurious_digits · ", line)]
    assert len(trial_lines) == 100 and all(r.finished == 1 and r.state == DONE for r in rows.values())
    summaries = [line for line in lines if line.startswith("[progress ")]
    assert summaries and all(" · search " in line for line in summaries)
    [table] = [line for line in lines if line.startswith("study finished")]
    assert len(table.splitlines()) == 1 + 1 + 100 + 1 and table.splitlines()[-1].split()[1] == "100/100"
