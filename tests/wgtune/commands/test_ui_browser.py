"""The MLflow UI as a person meets it: a small real study, `mlflow ui` on its store, headless Chromium.

Chromium is Debian's (`make browser`, a step of `make test`, installs it); Playwright drives it through
`executable_path`, so nothing is downloaded. Screenshots go to `test-artifacts/` at the top of the repo.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from wgtune.commands.ui import study_address, ui_command
from wgtune.run.study import LaunchOptions, launch
from wgtune.spec.grid import load_grid
from wgtune.tracking.records import CELL_METRICS, CELL_TEST_WORST_MEAN, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Playwright adds --headless and a fresh --user-data-dir (the profile folder given below). Without the
# background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
UI_START_S = 90.0  # ~10 s on an idle machine, ~25 s on a loaded one
STEP_MS = 30_000   # any one page load, click or check in the browser

GRID = """
study: e2e-browser
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm, groupdro]
epochs: 1
final_seeds: 2
search: {num_samples: 2, max_concurrent: 2, n_startup: 2}
resources: {cpu: 1}
train: {image_size: 16}
"""
# The names a person looks for: one parent run per cell, one child run per trial.
CELLS = ["sd/r10x0.25/erm", "sd/r10x0.25/dro"]  # short run names (`spec.grid.cell_short_label`)
TRIALS = {cell: [f"{cell} · {n}" for n in ("t01", "t02", "seed 1", "seed 2")] for cell in CELLS}  # 2 search, 2 final


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def page(tmp_path):
    """A page in a fresh headless Chromium; fails (never skips) when Chromium is missing."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 900})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(STEP_MS)
            yield page
        finally:
            context.close()


@pytest.fixture
def study(tmp_path) -> tuple[Path, str]:
    """The grid file and its SQLite store, with MLflow's tables already made (so the UI and the study never
    race to create them)."""
    from mlflow import MlflowClient

    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    uri = f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}"
    (tmp_path / "study").mkdir()
    MlflowClient(uri).search_experiments()
    return path, uri


class UI:
    """A running `mlflow ui` subprocess."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def wait_until_up(self, timeout_s: float = UI_START_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert self.process.poll() is None, f"mlflow ui exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (f"mlflow ui did not answer within {timeout_s:.0f} s:\n"
                                                 f"{self.log.read_text()[-3000:]}")
            time.sleep(0.25)


@pytest.fixture
def mlflow_ui(tmp_path, study):
    """`mlflow ui`, as `wgtune ui` builds it, on a free loopback port; started, not yet waited for, so that it
    boots while the study runs. Stopped (its whole process group) however the test ends."""
    _, uri = study
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no reaching out for a telemetry config from a closed network
    log_path = tmp_path / "mlflow_ui.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(ui_command(uri, "127.0.0.1", port), env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield UI(process, f"http://127.0.0.1:{port}", log_path)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_the_printed_address_opens_the_study_with_its_trials_and_cell_summaries(page: Page, study, mlflow_ui: UI,
                                                                                 ray_local):
    """A person follows the address `wgtune launch` and `wgtune ui` print, and sees without a click: every cell,
    every trial under it, and each cell's summary metrics as columns."""
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    path, uri = study
    grid = load_grid(path)
    printed: list[str] = []
    launch(grid, LaunchOptions(tracking_uri=uri, progress_every_s=3600), printed.append)  # real (tiny) trials
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e-browser")
    assert experiment is not None and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    view = f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=wgtune"
    assert any(f"browse the study: http://127.0.0.1:5000{view}" in line for line in printed), printed
    parents = client.search_runs([experiment.experiment_id], "tags.`wgtune.kind` = 'cell'")
    assert len(parents) == 2 and all(set(CELL_METRICS) <= set(run.data.metrics) for run in parents)
    port = int(mlflow_ui.url.rsplit(":", 1)[1])
    address = study_address(grid, uri, "127.0.0.1", port)  # what `wgtune ui --port <port>` prints
    assert address == mlflow_ui.url + view
    mlflow_ui.wait_until_up()
    ARTIFACTS.mkdir(exist_ok=True)

    try:
        page.goto(address)
        for cell in CELLS:
            expect(page.get_by_role("link", name=cell, exact=True)).to_be_visible(timeout=STEP_MS)
            for trial in TRIALS[cell]:  # unfolded by the study's view: no click on [+]
                expect(page.get_by_role("link", name=trial, exact=True)).to_be_visible(timeout=STEP_MS)
        for metric in CELL_METRICS[:3]:  # test worst-group mean and interval
            expect(page.locator(".ag-header-cell").filter(has_text=metric).first).to_be_visible(timeout=STEP_MS)
        for run in parents:  # each cell's row shows its test worst-group mean
            # The grid draws a row twice, its pinned part (the name) and its scrolling part (the metrics).
            named = page.locator(".ag-row").filter(has=page.get_by_role("link", name=run.info.run_name, exact=True))
            index = named.first.get_attribute("row-index")
            cell = page.locator(f".ag-center-cols-container .ag-row[row-index='{index}'] "
                                f"[col-id='metrics.`{CELL_TEST_WORST_MEAN}`']")
            expect(cell).to_have_text(re.compile(r"^\d"))
            assert float(cell.inner_text()) == pytest.approx(run.data.metrics[CELL_TEST_WORST_MEAN], abs=1e-3)
        expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()  # the training views, not GenAI's
        assert "workflowType=machine_learning" in page.url
        tidy_for_screenshot(page)
        shot = screenshot(page, "runs")
    except BaseException:
        with contextlib.suppress(Exception):  # the test's own error is the one to see
            screenshot(page, "failure")
        raise
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def tidy_for_screenshot(page: Page) -> None:
    """Close the assistant panel and widen the Run Name column so the names read in full. Cosmetic only."""
    close_assistant = page.get_by_role("button", name="Close", exact=True)
    if close_assistant.count() == 1 and close_assistant.is_visible():
        close_assistant.click()
    grip = page.locator(".ag-header-cell").filter(has_text="Run Name").locator(".ag-header-cell-resize")
    if grip.count() == 1:
        grip.hover()
        box = grip.bounding_box()
        page.mouse.down()
        for dx in range(10, 310, 10):  # 10 px at a time, as a hand drags (40 px moves left it as it was)
            page.mouse.move(box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2)
        page.mouse.up()


def screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"mlflow_ui_{name}.png"
    page.screenshot(path=path)
    return path
