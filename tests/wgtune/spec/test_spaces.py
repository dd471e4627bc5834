"""Search spaces: packaged files, validation messages, hyperopt encoding, narrowing, overrides."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hyperopt import JOB_STATE_DONE, STATUS_OK, Trials, fmin, space_eval, tpe
from hyperopt.pyll import stochastic

from wgtune.spec.spaces import Dimension, SearchSpace, SpaceError, load_space, space_files

# What trainables.objectives.OBJECTIVES declares (checked against it below when it is importable);
# passing it keeps these tests free of torch.
DEFAULTS: dict[str, dict[str, Any]] = {
    "erm": {},
    "irm": {"penalty_weight": 100.0, "anneal_steps": 500},
    "ilc": {"threshold": 0.1, "allow_masked_head": False},
    "groupdro": {"eta": 0.01, "adjustment": 0.0},
}
BASE = "lr: {loguniform: [1.0e-4, 3.0e-1]}\nbatch_size: {choice: [32, 64, 128]}\nmomentum: 0.9\n"
# Every distribution once, integer and float quantized dims included.
EVERY_KIND = """\
lr: {loguniform: [1.0e-4, 3.0e-1]}
momentum: {uniform: [0.5, 0.99]}
weight_decay: {normal: [0.01, 0.002]}
batch_size: {qloguniform: [8, 512, 8]}
epochs: {quniform: [2, 20, 2]}
optimizer: {choice: [sgd, adamw]}
schedule: cosine
"""
IRM_EXTRA = "anneal_steps: {quniform: [0, 1000, 50]}\npenalty_weight: {quniform: [0.0, 10.0, 0.5]}\n"


def load(objective: str, **kwargs: Any) -> SearchSpace:
    return load_space(objective, objective_defaults=DEFAULTS[objective], **kwargs)


def write(folder: Path, base: str = BASE, **objective_files: str) -> Path:
    (folder / "base.yaml").write_text(base)
    for name, text in objective_files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture
def every_kind(tmp_path: Path) -> SearchSpace:
    return load("irm", directory=write(tmp_path, EVERY_KIND, irm=IRM_EXTRA))


# --- packaged files and conformance ---------------------------------------------------------


def test_every_packaged_file_loads_for_its_objective() -> None:
    names = [p.stem for p in space_files()]
    assert "base" in names and set(names) <= {"base", *DEFAULTS}
    for path in space_files():
        space = load("erm" if path.stem == "base" else path.stem)
        assert {d.source.split(":")[0] for d in space.dims} >= {str(path)}


@pytest.mark.parametrize("objective", list(DEFAULTS))
def test_conformance(objective: str) -> None:
    space = load(objective)
    objective_dims = {d.name for d in space.dims if d.target == "objective_options"}
    assert objective_dims <= set(DEFAULTS[objective])
    expr = space.to_hyperopt()
    assert set(expr) == {d.name for d in space.searched()}
    rng = np.random.default_rng(0)
    for _ in range(200):
        params = stochastic.sample(expr, rng=rng)
        assert space.contains(params) is None, params
        for d in space.searched():
            if d.integer:
                assert type(params[d.name]) is int, (d.name, params[d.name])
        config = space.to_config(params)
        assert set(config.get("objective_options", {})) == objective_dims
        assert not objective_dims & set(config)
        assert config["momentum"] == 0.9


def test_integer_quantized_dims_sample_ints_and_float_ones_floats(every_kind: SearchSpace) -> None:
    params = stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(1))
    assert type(params["batch_size"]) is int and type(params["anneal_steps"]) is int
    assert type(params["epochs"]) is int and type(params["penalty_weight"]) is float


def test_importing_spaces_pulls_in_neither_torch_nor_hyperopt() -> None:
    code = "import sys, wgtune.spec.spaces; assert not {'torch', 'hyperopt'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_describe() -> None:
    lines = load("irm").describe()
    assert "lr ~ loguniform(1e-5, 0.3)" in lines
    assert "momentum = 0.9" in lines
    assert "anneal_steps ~ quniform(0, 1000, 50)" in lines


# --- validation messages ----------------------------------------------------------------------

BAD = [
    # (file, text, expected fragments besides the file name)
    ("base", "lr: {logunifrom: [1.0e-4, 3.0e-1]}\n", ["'lr'", "unknown distribution 'logunifrom'", "Did you mean 'loguniform'"]),
    ("base", "lr: {uniform: [0.1]}\n", ["'lr'", "uniform takes [low, high]"]),
    ("base", "momentum: {quniform: [0.1, 0.9]}\n", ["'momentum'", "quniform takes [low, high, q]"]),
    ("base", "lr: {uniform: [0.3, 0.1]}\n", ["'lr'", "low < high", "low=0.3, high=0.1"]),
    ("base", "weight_decay: {loguniform: [0.0, 0.1]}\n", ["'weight_decay'", "log scale", "bounds > 0", "low=0.0"]),
    ("base", "optimizer: {choice: []}\n", ["'optimizer'", "non-empty list"]),
    ("base", "lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}\n", ["'lr'", "one distribution", "uniform, loguniform"]),
    ("base", "weight_dcay: 0.0\n", ["'weight_dcay'", "unknown hyperparameter", "Did you mean 'weight_decay'"]),
    ("base", "penalty_weight: 1.0\n", ["'penalty_weight'", "belongs in irm.yaml"]),
    ("base", "optimizer: {choice: [sgd, adam]}\n", ["'optimizer'", "'adam' is not valid", "sgd, adamw"]),
    ("base", "schedule: linear\n", ["'schedule'", "'linear'", "cosine, step, constant"]),
    ("base", "batch_size: {uniform: [16, 256]}\n", ["'batch_size'", "integer", "quniform"]),
    ("base", "momentum: {normal: [0.9, 0.0]}\n", ["'momentum'", "sigma > 0"]),
    ("base", "lr: {loguniform: [1e-4, 0.3]}\n", ["'lr'", "'1e-4' is a string", "1.0e-4"]),
    ("base", "batch_size: {qloguniform: [4, 512, 16]}\n", ["'batch_size'", "rounds to 0"]),
    ("base", "batch_size: [32, 64]\n", ["'batch_size'", "{choice: [32, 64]}"]),
    ("base", "lr: {choice: [0.1, 0.1]}\n", ["'lr'", "listed twice"]),
    ("base", "lr: 0.1\nmomentum: 0.9\nlr: 0.2\n", [":3:", "'lr' is set twice (first on line 1)"]),
    ("base", "lr: {uniform: [0.1, 0.2]}\nmomentum: [0.9\nschedule: cosine\n", [":3:", "malformed YAML", "line 2"]),
    ("irm", "penalty_wieght: 1.0\n", ["'penalty_wieght'", "objective 'irm'", "Did you mean 'penalty_weight'"]),
    ("irm", "lr: 0.1\n", ["'lr'", "base hyperparameter"]),
    ("irm", "anneal_steps: {loguniform: [1, 1000]}\n", ["'anneal_steps'", "integer"]),
]


@pytest.mark.parametrize(("file", "text", "fragments"), BAD, ids=[f"{f}:{t.split(':')[0]}-{i}" for i, (f, t, _) in enumerate(BAD)])
def test_invalid_file_is_reported_with_file_and_key(tmp_path: Path, file: str, text: str, fragments: list[str]) -> None:
    folder = write(tmp_path, text) if file == "base" else write(tmp_path, BASE, **{file: text})
    with pytest.raises(SpaceError) as info:
        load("irm", directory=folder)
    message = str(info.value)
    assert str(tmp_path / f"{file}.yaml") in message
    for fragment in fragments:
        assert fragment in message, message


def test_valid_edge_cases_load(tmp_path: Path) -> None:
    text = "lr: {loguniform: [1.0e-4, 3.0e-1]}\nbatch_size: {qloguniform: [8, 512, 8]}\nepochs: 3\n"
    space = load("erm", directory=write(tmp_path, text))
    assert space.fixed() == {"epochs": 3}
    assert load("erm", directory=write(tmp_path, "")).dims == ()


def test_missing_base_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="base.yaml: search-space file not found"):
        load("erm", directory=tmp_path)


# --- hyperopt encoding ------------------------------------------------------------------------


def run_fmin(space: SearchSpace, evals: int, trials: Trials | None = None) -> tuple[Trials, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        received.append(params)
        return {"loss": float(params["lr"]), "status": STATUS_OK}

    trials = trials if trials is not None else Trials()
    algo = partial(tpe.suggest, n_startup_jobs=5)  # so that most trials come from TPE itself
    fmin(objective, space.to_hyperopt(), algo=algo, max_evals=evals, trials=trials,
         rstate=np.random.default_rng(0), show_progressbar=False)
    return trials, received


def test_encode_decode_round_trip_matches_hyperopt_trials(every_kind: SearchSpace) -> None:
    trials, received = run_fmin(every_kind, 15)
    assert len(trials.trials) == len(received) == 15
    for trial, params in zip(trials.trials, received):
        vals = trial["misc"]["vals"]
        decoded = every_kind.decode(vals)
        assert decoded == params
        assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in params.items()}
        flat = {k: v[0] for k, v in vals.items()}
        assert every_kind.decode(flat) == params
        encoded = every_kind.encode(decoded)
        assert encoded == flat and list(encoded) == list(flat)
        assert {k: [v] for k, v in encoded.items()} == vals  # misc.vals, exactly
        assert all(float(encoded[k]) == float(flat[k]) for k in flat)  # bit-equal, not approximately
        assert space_eval(every_kind.to_hyperopt(), encoded) == params


def test_encoded_observations_feed_tpe_like_its_own(every_kind: SearchSpace) -> None:
    # How the priors code injects history: completed trial docs built from encode, then fmin goes on.
    trials = Trials()
    points = [stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(i)) for i in range(6)]
    for params in points:
        (tid,) = trials.new_trial_ids(1)
        vals = {k: [v] for k, v in every_kind.encode(params).items()}
        misc = {"tid": tid, "cmd": None, "workdir": None, "idxs": {k: [tid] for k in vals}, "vals": vals}
        (doc,) = trials.new_trial_docs([tid], [None], [{"loss": float(params["lr"]), "status": STATUS_OK}], [misc])
        doc["state"] = JOB_STATE_DONE
        trials.insert_trial_docs([doc])
    trials.refresh()
    trials, received = run_fmin(every_kind, 10, trials)
    assert len(received) == 4 and len(trials.trials) == 10
    for trial, params in zip(trials.trials, points):
        assert every_kind.decode(trial["misc"]["vals"]) == params


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"lr": 0.5}, ["lr", "outside [1e-4, 0.3]"]),
        ({"lr": float("nan")}, ["lr", "not a finite number"]),
        ({"optimizer": "adam"}, ["optimizer", "'adam' is not an option", "'sgd', 'adamw'"]),
        ({"batch_size": 12}, ["batch_size", "not a multiple of q=8"]),
        ({"epochs": 40}, ["epochs", "outside [2, 20]"]),
        ({"anneal_steps": True}, ["anneal_steps", "not a finite number"]),
        ({"schedule": "step"}, ["schedule", "differs from the fixed value 'cosine'"]),
        ({"dropout": 0.1}, ["dropout", "not hyperparameters of this space"]),
        ({"lr": None}, ["lr", "not a finite number"]),
    ],
)
def test_encode_rejects_values_outside_the_space(every_kind: SearchSpace, change: dict[str, Any], fragments: list[str]) -> None:
    params = {**stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(3)), **change}
    with pytest.raises(SpaceError) as info:
        every_kind.encode(params)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert every_kind.contains(params) is not None


def test_encode_requires_every_searched_dim_and_accepts_equal_fixed_ones(every_kind: SearchSpace) -> None:
    params = stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(4))
    assert every_kind.encode({**params, "schedule": "cosine"}) == every_kind.encode(params)
    del params["momentum"]
    with pytest.raises(SpaceError, match="momentum: missing"):
        every_kind.encode(params)


def test_decode_rejects_bad_vals(every_kind: SearchSpace) -> None:
    vals = every_kind.encode(stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(5)))
    with pytest.raises(SpaceError, match="index 7 outside 0..1"):
        every_kind.decode({**vals, "optimizer": 7})
    with pytest.raises(SpaceError, match="the space searches"):
        every_kind.decode({**vals, "dropout": 0.1})


# --- narrowing ---------------------------------------------------------------------------------


def test_narrow_is_a_box_around_the_points_in_each_dims_scale() -> None:
    space = load("irm")
    points = [
        {"lr": 1e-3, "batch_size": 32, "optimizer": "sgd", "weight_decay": 1e-4, "penalty_weight": 10.0, "anneal_steps": 100},
        {"lr": 1e-2, "batch_size": 128, "optimizer": "sgd", "weight_decay": 1e-3, "penalty_weight": 30.0, "anneal_steps": 300},
    ]
    narrow = space.narrow(points, margin=0.1)
    for p in points:
        assert narrow.contains(p) is None
    by_name = {d.name: d for d in space.dims}
    for d in narrow.searched():
        original = by_name[d.name]
        if d.kind == "choice":
            assert set(d.args) <= set(original.args)
            continue
        assert original.args[0] <= d.args[0] < d.args[1] <= original.args[1]
        assert d.args[1] - d.args[0] < original.args[1] - original.args[0]
    lr = next(d for d in narrow.dims if d.name == "lr")
    # log scale: widened by 10% of log(0.3 / 1e-5) on each side; a linear box would clip at 1e-5
    assert lr.args == pytest.approx((1e-3 * 30000**-0.1, 1e-2 * 30000**0.1))
    # A box has no sides along a choice: every option stays (issue 13, defect 2).
    assert next(d for d in narrow.dims if d.name == "batch_size").args == (32, 64, 128)
    assert next(d for d in narrow.dims if d.name == "optimizer").args == ("sgd", "adamw")
    steps = next(d for d in narrow.dims if d.name == "anneal_steps")
    assert steps.args == (0, 400, 50) and steps.integer
    assert narrow.fixed() == space.fixed()
    rng = np.random.default_rng(8)
    for _ in range(50):
        params = stochastic.sample(narrow.to_hyperopt(), rng=rng)
        assert space.contains(params) is None and narrow.contains(params) is None


def test_narrow_edge_cases(every_kind: SearchSpace) -> None:
    point = stochastic.sample(every_kind.to_hyperopt(), rng=np.random.default_rng(6))
    tight = every_kind.narrow([point], margin=0.0)
    assert tight.fixed() == every_kind.fixed() and tight.contains(point) is None
    normal = next(d for d in every_kind.narrow([point]).dims if d.name == "weight_decay")
    assert normal.kind == "uniform"
    assert normal.args == pytest.approx((point["weight_decay"] - 0.0008, point["weight_decay"] + 0.0008))
    kept = every_kind.narrow([{"lr": point["lr"]}])
    assert [d for d in kept.dims if d.name != "lr"] == [d for d in every_kind.dims if d.name != "lr"]
    with pytest.raises(SpaceError, match="point 0: lr"):
        every_kind.narrow([{"lr": 1.0}])


# --- overrides ---------------------------------------------------------------------------------


def test_override_replaces_a_dim_in_place_and_adds_base_dims() -> None:
    space = load("irm", overrides={"lr": {"uniform": [0.01, 0.1]}, "epochs": 3}, override_source="sizes.yaml: cells.irm")
    names = [d.name for d in space.dims]
    assert names.index("lr") == 0 and names[-1] == "epochs"
    lr = space.dims[0]
    assert (lr.kind, lr.args, lr.source) == ("uniform", (0.01, 0.1), "sizes.yaml: cells.irm")
    assert space.fixed()["epochs"] == 3


def test_override_adds_an_objective_dim(tmp_path: Path) -> None:
    folder = write(tmp_path, BASE, irm="penalty_weight: {loguniform: [1.0e-1, 1.0e+4]}\n")
    space = load("irm", directory=folder, overrides={"anneal_steps": {"quniform": [0, 200, 10]}})
    steps = space.dims[-1]
    assert (steps.name, steps.target, steps.integer) == ("anneal_steps", "objective_options", True)
    config = space.to_config(stochastic.sample(space.to_hyperopt(), rng=np.random.default_rng(7)))
    assert set(config["objective_options"]) == {"penalty_weight", "anneal_steps"}


def test_override_errors_name_the_override_source() -> None:
    source = "sizes.yaml: cells[2].search_space"
    with pytest.raises(SpaceError) as info:
        load("irm", overrides={"penalty_wieght": 1.0}, override_source=source)
    assert str(info.value).startswith(f"{source}: 'penalty_wieght'") and "Did you mean 'penalty_weight'" in str(info.value)
    with pytest.raises(SpaceError, match=r"sizes\.yaml: cells\[2\]\.search_space: 'lr': loguniform needs low < high"):
        load("irm", overrides={"lr": {"loguniform": [0.3, 0.1]}}, override_source=source)
    with pytest.raises(SpaceError, match="Valid: .*threshold"):
        load("ilc", overrides={"treshold": 0.8})


def test_space_rejects_duplicate_names() -> None:
    dim = Dimension("lr", "fixed", (0.1,), "config", "test")
    with pytest.raises(SpaceError, match="defined twice: lr"):
        SearchSpace((dim, dim))


# --- agreement with the trainables registry (imports torch; skipped until it exists) ------------


def test_defaults_match_the_objective_registry() -> None:
    objectives = pytest.importorskip("trainables.objectives")
    registry = getattr(objectives, "OBJECTIVES", None)
    if registry is None:
        pytest.skip("trainables.objectives.OBJECTIVES not written yet")
    for name, defaults in DEFAULTS.items():
        assert dict(registry.get(name).defaults) == defaults, name
        assert load_space(name) == load(name)  # the lazy lookup gives the same space
    with pytest.raises(SpaceError, match="Did you mean 'irm'"):
        load_space("irn")


def test_fmin_vals_are_in_real_space() -> None:
    # The finding encode relies on: log-scale vals are stored in real space, not as their logs.
    space = load("groupdro")
    trials, received = run_fmin(space, 3)
    for trial, params in zip(trials.trials, received):
        assert trial["misc"]["vals"]["eta"][0] == params["eta"]
        assert 1e-3 <= params["eta"] <= 1e-1 and not math.isnan(params["eta"])


def test_margin_zero_around_one_point_leaves_a_small_box_hyperopt_can_sample() -> None:
    """Guards issue 13, defect 6: `narrow: {margin: 0}` around one point made bounds hyperopt refuses
    (``low should be less than high``) or collapsed a dimension to fixed, which then went missing
    from every trial's params. Now every searched dim stays searched, at least MIN_BOX wide."""
    from wgtune.spec.spaces import MIN_BOX

    space = load("irm")
    point = {"lr": 1e-2, "batch_size": 64, "optimizer": "sgd", "weight_decay": 1e-4, "penalty_weight": 10.0,
             "anneal_steps": 100}
    narrow = space.narrow([point], margin=0.0)
    assert [d.name for d in narrow.searched()] == [d.name for d in space.searched()]
    lr = next(d for d in narrow.dims if d.name == "lr")
    low, high = next(d for d in space.dims if d.name == "lr").args[:2]
    assert math.log(lr.args[1] / lr.args[0]) == pytest.approx(MIN_BOX * math.log(high / low))
    assert narrow.contains(point) is None
    rng = np.random.default_rng(3)
    for _ in range(20):
        params = stochastic.sample(narrow.to_hyperopt(), rng=rng)
        assert narrow.contains(params) is None
        space.to_config(params)  # every searched key is there for the trial config


def test_a_box_rebuilt_around_its_own_trials_does_not_creep_outward() -> None:
    """Guards issue 13, defect 5: the box was rebuilt each launch from the neighbours plus the cell's
    own trials, each widened by the margin, so trials at the edge of launch 1's box widened launch 2's
    (1.00 -> 1.32 -> 1.52 decades over three launches). Own trials (`keep`) now widen it by no margin."""
    space = load("erm")
    neighbours = [{"lr": 1e-2}, {"lr": 3e-2}]
    box = space.narrow(neighbours, margin=0.1)
    for _ in range(3):  # each launch's trials sit on the box's edges; the next launch rebuilds it
        lr = next(d for d in box.dims if d.name == "lr")
        own = [{"lr": lr.args[0]}, {"lr": lr.args[1]}]
        again = space.narrow(neighbours, margin=0.1, keep=own)
        assert next(d for d in again.dims if d.name == "lr").args == pytest.approx(lr.args)
        box = again


def test_a_sampler_is_searchable_and_a_misspelt_one_is_refused_before_anything_runs() -> None:
    space = load_space("erm", {"sampler": {"choice": ["shuffle", "group_balanced"]}}, override_source="grid.yaml: search_space")
    assert "sampler" in [d.name for d in space.searched()]
    with pytest.raises(SpaceError, match=r"grid.yaml: search_space: 'sampler': unknown sampler 'balanced'. "
                                         r"Did you mean 'group_balanced'\? Valid: shuffle, group_balanced"):
        load_space("erm", {"sampler": {"choice": ["shuffle", "balanced"]}}, override_source="grid.yaml: search_space")
