"""Bad input to `wgtune launch`, case by case: the specification behind docs/bad_input.md.

Every case is one message naming the file (or flag) and the key and saying what would be valid,
exit code 2, and nothing created: no study folder, no MLflow store or run, no Ray instance.
Each case runs the real command line in this process (`wgtune.cli.main`), so Ray's state can be
checked afterwards. No trial is ever trained: a case takes well under a second once the libraries
are imported, the Ray handshake that times out a few seconds.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from wgtune.cli import main
from wgtune.spec.errors import UserError

GRID = """\
study: bad
study_dir: study
datasets: [spurious_digits]
models: {resnet: [10x0.25]}
objectives: [erm]
epochs: 1
final_seeds: 0
"""
DOC = Path(__file__).resolve().parents[2] / "docs" / "bad_input.md"


@dataclass(frozen=True)
class Case:
    """One row of docs/bad_input.md: a bad input and what the user must be told."""

    name: str
    grid: str
    says: tuple[str, ...]  # fragments of the message: the file, the key, what would be valid
    args: tuple[str, ...] = ()  # "{port}" is a local port where nothing listens
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None


def _wilds_folder_without_its_release_marker(folder: Path) -> None:
    data = folder / "data" / "waterbirds_v1.0"
    data.mkdir(parents=True)
    (data / "metadata.csv").write_text("img_id,img_filename,y,split,place,place_filename\n")


def _a_file_where_the_study_folder_should_go(folder: Path) -> None:
    (folder / "results").write_text("a file, not a folder\n")


def _with(line: str) -> str:
    return GRID + line + "\n"


def _replace(old: str, new: str) -> str:
    assert old in GRID
    return GRID.replace(old, new)


CASES = [
    Case("malformed YAML", "study: bad\ndatasets: [spurious_digits\n",
         ("grid.yaml (line 3): not valid YAML",)),
    Case("not a mapping", "- spurious_digits\n- resnet-18\n",
         ("grid.yaml: a grid file is a mapping with keys study, datasets",)),
    Case("wrong type", _replace("epochs: 1", "epochs: three"),
         ("grid.yaml: epochs: Input should be a valid integer", "'three'")),
    Case("missing key", _replace("epochs: 1\n", ""),
         ("grid.yaml: epochs: required: data set 'spurious_digits' has no reference training length",
          "set epochs: N, or epochs: {spurious_digits: N}")),
    Case("unknown key", _with("serch: {num_samples: 3}"),
         ("grid.yaml: serch: unknown key. Did you mean 'search'? Valid: study, study_dir",)),
    Case("unknown nested key", _with("search: {num_sample: 3}"),
         ("grid.yaml: search.num_sample: unknown key. Did you mean 'num_samples'?", "Valid: num_samples")),
    Case("compute ceiling not positive", _with("budget: {cell_device_hours: 0}"),
         ("grid.yaml: budget.cell_device_hours: Input should be greater than 0", "(got 0)")),
    Case("unknown dataset", _replace("[spurious_digits]", "[waterbird]"),
         ("grid.yaml: datasets: unknown dataset 'waterbird'. Did you mean 'waterbirds'?",
          "Valid: spurious_digits, waterbirds, celebA")),
    Case("unknown model family", _replace("{resnet: [10x0.25]}", "{resnt: [18]}"),
         ("grid.yaml: models: unknown model family 'resnt'. Did you mean 'resnet'? Valid: resnet, vit",)),
    Case("unknown model size", _replace("[10x0.25]", "[19]"),
         ("grid.yaml: models:", "resnet-19", "10, 12, 14, 18, 26, 34, 50, 101, 152")),
    Case("unknown objective", _replace("[erm]", "[erm, dro]"),
         ("grid.yaml: objectives: unknown objective 'dro'.", "Valid: erm, irm, ilc, groupdro")),
    Case("a cell name that is no objective", _replace("[erm]", "{erm_balanced: {sampler: group_balanced}}"),
         ("grid.yaml: objectives: unknown objective 'erm_balanced'.", "Valid: erm, irm, ilc, groupdro",
          "give objectives.erm_balanced.objective")),
    Case("an objective setting that freezes the classifier",
         _replace("[erm]", "{ilc: {environments: groups, sampler: shuffle}}")
         + "search_space: {ilc: {threshold: {uniform: [0.05, 0.9]}}}\n",
         ("grid.yaml: objectives.ilc: cell spurious_digits · resnet-10x0.25 · ilc (searched, at batch_size 32, "
          "threshold 0.9)", "freezes the classifier's bias", "allow_masked_head: true")),
    Case("unknown augmentation", _with("augment: flip"),
         ("grid.yaml: augment: unknown augmentation 'flip'. Valid: none, standard",)),
    Case("per-data-set setting for a data set not in the grid", _with("augment: {waterbirds: standard}"),
         ("grid.yaml: augment.waterbirds: not a data set of this grid. Valid: spurious_digits",)),
    Case("no pretrained weights for a size", _with("pretrained: true"),
         ("grid.yaml: weights: no ImageNet weights exist for resnet-10x0.25",
          "resnet sizes with published weights: resnet-18 (timm, torchvision)")),
    Case("empty grid", _with("exclude: [{objective: '*'}]"),
         ("grid.yaml: the grid has no cells (check datasets, models, objectives, include and exclude)",)),
    Case("search space: unknown hyperparameter", _with("search_space: {all: {weigth_decay: 0.01}}"),
         ("grid.yaml: search_space: 'weigth_decay': unknown hyperparameter", "Did you mean 'weight_decay'?",
          "Valid: lr, weight_decay,")),
    Case("search space: override for nothing in the grid", _with("search_space: {resnt: {lr: 0.1}}"),
         ("grid.yaml: search_space.resnt: names no data set, model family, objective or model of this grid.",
          "Did you mean 'resnet'? Valid: all, spurious_digits, resnet, erm, resnet-10x0.25")),
    Case("search space: low >= high", _with("search_space: {all: {lr: {loguniform: [0.1, 0.01]}}}"),
         ("grid.yaml: search_space: 'lr': loguniform needs low < high, got low=0.1, high=0.01",)),
    Case("search space: log scale over a bound <= 0",
         _with("search_space: {all: {weight_decay: {loguniform: [0, 0.1]}}}"),
         ("grid.yaml: search_space: 'weight_decay': loguniform is log scale and needs bounds > 0, got low=0",
          "(uniform takes 0)")),
    Case("search space: empty choice", _with("search_space: {all: {batch_size: {choice: []}}}"),
         ("grid.yaml: search_space: 'batch_size': choice takes a non-empty list of options, got []",)),
    Case("no data root", _replace("[spurious_digits]", "[waterbirds]"),
         ("grid.yaml: data_root: dataset 'waterbirds' needs a data root", "use a built-in data set: spurious_digits")),
    Case("data root does not exist", _replace("[spurious_digits]", "[waterbirds]") + "data_root: data\n",
         ("grid.yaml: data_root: dataset 'waterbirds' not found: the data root", "does not exist",
          "waterbirds_v1.0/RELEASE_v1.0.txt", "waterbirds_v1.0/metadata.csv")),
    Case("WILDS marker file missing", _replace("[spurious_digits]", "[waterbirds]") + "data_root: data\n",
         ("grid.yaml: data_root: dataset 'waterbirds' not found: missing", "waterbirds_v1.0/RELEASE_v1.0.txt",
          "Expected layout"),
         setup=_wilds_folder_without_its_release_marker),
    Case("study folder cannot be made", _replace("study_dir: study", "study_dir: results/study"),
         ("grid.yaml: study_dir: cannot create", "results is a file, not a folder",
          "set study_dir to a folder you can write"),
         setup=_a_file_where_the_study_folder_should_go),
    Case("unreachable tracking server", GRID, ("MLflow tracking server http://127.0.0.1:", "is not reachable",
                                               "connection refused", "--tracking-uri / MLFLOW_TRACKING_URI"),
         args=("--tracking-uri", "http://127.0.0.1:{port}")),
    Case("unreachable Ray address (--address)", GRID,
         ("Ray cluster 127.0.0.1:", "(--address) is not reachable: nothing answers at", "connection refused",
          "ray start --head", "or drop --address to run on a local Ray instance"),
         args=("--address", "127.0.0.1:{port}")),
    Case("unreachable Ray address ($RAY_ADDRESS)", GRID,
         ("Ray cluster 127.0.0.1:", "($RAY_ADDRESS) is not reachable", "or unset RAY_ADDRESS"),
         env={"RAY_ADDRESS": "127.0.0.1:{port}"}),
    Case("malformed Ray address", GRID,
         ("Ray address 'head-node' (--address) cannot be used: expected HOST:PORT",),
         args=("--address", "head-node")),
]


@pytest.fixture
def study_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean folder as the working directory, and an environment naming no tracking store or cluster."""
    import ray

    assert not ray.is_initialized(), "another test left Ray running: the Ray cases would not be checked"
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    # The CLI sets these for itself; through monkeypatch they are undone after the test.
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return tmp_path


def closed_port() -> int:
    """A local port where nothing listens (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def launch(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
           port: int | None = None) -> tuple[int, str]:
    """Run `wgtune launch --grid grid.yaml` on the case in `folder`; the exit code and stderr."""
    (folder / "grid.yaml").write_text(textwrap.dedent(case.grid))
    port = str(port or closed_port())
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.replace("{port}", port))
    code = main(["launch", "--grid", "grid.yaml", *(a.replace("{port}", port) for a in case.args)])
    return code, capsys.readouterr().err


def assert_nothing_created(folder: Path, before: set[Path]) -> None:
    import ray

    created = {p.relative_to(folder) for p in folder.rglob("*")} - before
    assert not created, f"a failed launch left {sorted(map(str, created))}"  # no study folder, store or Ray results
    assert not ray.is_initialized(), "a failed launch started Ray"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_message_naming_file_and_key_exit_2_and_nothing_created(
    case: Case, study_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if case.setup is not None:
        case.setup(study_folder)
    before = {Path("grid.yaml"), *(p.relative_to(study_folder) for p in study_folder.rglob("*"))}

    code, err = launch(case, study_folder, monkeypatch, capsys)

    assert code == 2
    assert err.startswith("wgtune launch: error: ") and "Traceback" not in err
    for fragment in case.says:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert_nothing_created(study_folder, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions; as root, the case "
                    "'study folder cannot be made' checks the same step")
def test_a_study_folder_without_write_permission_is_refused(
    study_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (study_folder / "readonly").mkdir(mode=0o555)
    case = Case("study folder not writable", _replace("study_dir: study", "study_dir: readonly/study"), ())

    code, err = launch(case, study_folder, monkeypatch, capsys)

    assert code == 2
    assert "grid.yaml: study_dir: cannot write to" in err and "readonly is not writable" in err
    assert_nothing_created(study_folder, {Path("grid.yaml"), Path("readonly")})


def test_a_missing_grid_file_is_named(study_folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["launch", "--grid", "nope.yaml"]) == 2
    assert "grid file nope.yaml does not exist" in capsys.readouterr().err
    assert list(study_folder.iterdir()) == []


NOT_A_HEAD = Case("Ray address answers, but not a Ray head", GRID,
                  ("(--address) is not reachable: something answers at", "but not a Ray head (no answer within 3 s)",
                   "ray start --head"),
                  args=("--address", "127.0.0.1:{port}"))


def test_an_address_that_answers_but_is_no_ray_head_is_refused_in_seconds(
    study_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A wrong port (the dashboard's, a web server's) accepts the connection, and ray.init would
    retry it for minutes; a handshake with a deadline tells it from a Ray head."""
    with socket.socket() as silent:  # the kernel accepts connections into its backlog; nobody answers
        silent.bind(("", 0))
        silent.listen()
        start = time.monotonic()
        code, err = launch(NOT_A_HEAD, study_folder, monkeypatch, capsys, port=silent.getsockname()[1])

    assert time.monotonic() - start < 15
    assert code == 2
    for fragment in NOT_A_HEAD.says:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert_nothing_created(study_folder, {Path("grid.yaml")})


TOKEN_REFUSED = Case("Ray head with token authentication refuses this driver", GRID,
                     ("Ray cluster 127.0.0.1:", "(--address) refused this driver: RPC error: InvalidAuthToken: "
                      "Authentication token is missing or incorrect", "`RAY_AUTH_TOKEN` environment variable",
                      "ray get-auth-token --generate"),
                     args=("--address", "127.0.0.1:{port}"))


@contextlib.contextmanager
def ray_head_with_token(token: str) -> Iterator[int]:
    """A real `ray start --head` (no CPUs: nothing runs on it) that asks every client for `token`; its port."""
    port = closed_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's unix socket paths must fit in 107 bytes
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                             "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_ray_head_that_wants_a_token_refuses_a_driver_without_it_before_anything_is_made(
    study_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Token authentication (RAY_AUTH_MODE=token, as docker/ runs the cluster): Ray's own explanation,
    in seconds; with the cluster's token the same check lets the launch through."""
    from wgtune.run.cluster import check_ray

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    token = secrets.token_hex(32)
    with ray_head_with_token(token) as port:
        code, err = launch(TOKEN_REFUSED, study_folder, monkeypatch, capsys, port=port)

        assert code == 2
        for fragment in TOKEN_REFUSED.says:
            assert fragment in err, f"{fragment!r} not in:\n{err}"
        assert_nothing_created(study_folder, {Path("grid.yaml")})

        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        with pytest.raises(UserError, match="refused this driver"):
            check_ray(f"127.0.0.1:{port}")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        check_ray(f"127.0.0.1:{port}")  # the cluster's token: no error


def doc_rows() -> dict[str, str]:
    """Case -> message, from the table of docs/bad_input.md (cells are HTML-escaped, lines joined by <br>)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4:
            rows[cells[0]] = html.unescape(re.sub(r"</?code>", "", cells[2]).replace("<br>", "\n"))
    return rows


def test_every_case_is_a_row_of_the_docs_with_its_message() -> None:
    rows = doc_rows()
    for case in [*CASES, NOT_A_HEAD, TOKEN_REFUSED]:
        assert case.name in rows, f"docs/bad_input.md has no row {case.name!r}"
        for fragment in case.says:
            assert fragment in rows[case.name], f"docs/bad_input.md, row {case.name!r}: {fragment!r} not in the message"
