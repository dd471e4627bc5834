"""The grid file: strict validation with messages naming the file and key, and its cells."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wgtune.spec.grid import GridError, load_grid

VALID = """
study: wg-test
datasets: [spurious_digits]
models: {resnet: [10x0.25, 18], vit: [tiny]}
pretrained: [false, true]
objectives: [erm, groupdro]
epochs: 3
"""


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_cells_are_the_product_of_datasets_sizes_pretrained_and_objectives(tmp_path):
    grid = load_grid(write(tmp_path, VALID))

    cells = grid.cells()

    assert len(cells) == 1 * 3 * 2 * 2
    assert {c.model for c in cells} == {"resnet-10x0.25", "resnet-18", "vit-tiny"}
    assert "spurious_digits/resnet-18/groupdro/pretrained" in {c.id for c in cells}
    assert len({c.id for c in cells}) == len(cells)


def test_include_and_exclude_filter_cells_with_shell_patterns(tmp_path):
    grid = load_grid(write(tmp_path, VALID + """
exclude:
  - {family: vit, pretrained: false}
  - {model: "resnet-18", objective: erm}
"""))

    ids = {c.id for c in grid.cells()}

    assert not any("vit-tiny" in i and i.endswith("scratch") for i in ids)
    assert "spurious_digits/resnet-18/erm/scratch" not in ids
    assert "spurious_digits/resnet-18/groupdro/scratch" in ids


def test_the_same_architecture_spelled_twice_is_one_cell(tmp_path):
    grid = load_grid(write(tmp_path, VALID.replace("[10x0.25, 18]", "[18, 18x1]")))

    assert sum(c.model == "resnet-18" for c in grid.cells()) == 2 * 2  # pretrained x objectives


def test_cell_seeds_derive_from_the_cell_and_the_study_seed(tmp_path):
    cells = load_grid(write(tmp_path, VALID)).cells()

    assert cells[0].seed(0) == cells[0].seed(0)
    assert cells[0].seed(0) != cells[1].seed(0)
    assert cells[0].seed(0) != cells[0].seed(1)


def test_resources_overrides_by_model_beat_family_beat_default(tmp_path):
    grid = load_grid(write(tmp_path, VALID + """
resources:
  cpu: 2
  gpu: 0.25
  overrides:
    vit: {cpu: 4, gpu: 0.5}
    resnet-18: {cpu: 1, gpu: 1}
"""))
    by_model = {c.model: grid.resources(c) for c in grid.cells()}

    assert (by_model["resnet-10x0.25"].cpu, by_model["resnet-10x0.25"].gpu) == (2, 0.25)
    assert (by_model["vit-tiny"].cpu, by_model["vit-tiny"].gpu) == (4, 0.5)
    assert (by_model["resnet-18"].cpu, by_model["resnet-18"].gpu) == (1, 1)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t + "serch: {num_samples: 3}\n",
         r"grid.yaml: serch: unknown key. Did you mean 'search'\? Valid: study, study_dir"),
        (lambda t: t + "search: {num_sample: 3}\n",
         r"grid.yaml: search.num_sample: unknown key. Did you mean 'num_samples'\?"),
        (lambda t: t + "resources: {overrides: {vit: {gpus: 1}}}\n",
         r"resources.overrides.vit.gpus: unknown key. Did you mean 'gpu'\?"),
        (lambda t: t.replace("epochs: 3", "epochs: three"), r"grid.yaml: epochs: .*integer"),
        (lambda t: t.replace("epochs: 3\n", ""), r"grid.yaml: epochs: required: data set .spurious_digits. has no reference training length"),
        (lambda t: t.replace("[spurious_digits]", "[waterbird]"),
         r"grid.yaml: datasets: unknown dataset 'waterbird'. Did you mean 'waterbirds'\? Valid: spurious_digits"),
        (lambda t: t.replace("[erm, groupdro]", "[erm, grouppdro]"),
         r"objectives: unknown objective 'grouppdro'. Did you mean 'groupdro'\?"),
        (lambda t: t.replace("[10x0.25, 18]", "[19]"), r"grid.yaml: models: .*resnet-19"),
        (lambda t: t.replace("vit: [tiny]", "vitt: [tiny]"), r"models: unknown model family 'vitt'"),
        (lambda t: t + "resources: {gpu: 1.5}\n", r"resources.gpu: .*fraction of one GPU or a whole number"),
        (lambda t: t.replace("[spurious_digits]", "{spurious_digits: {spurious_frac: 0.9}}"),
         r"datasets.spurious_digits: dataset 'spurious_digits': unknown option 'spurious_frac'. "
         r"Did you mean 'spurious_fraction'\?"),
        (lambda t: t + "exclude: [{dataset: '*'}]\n", r"the grid has no cells"),
        (lambda t: t + "search_space: {resnt: {lr: 0.1}}\n",
         r"grid.yaml: search_space.resnt: names no data set, model family, objective or model of this grid. "
         r"Did you mean 'resnet'\? Valid: all, spurious_digits, resnet, vit, erm, groupdro, resnet-10x0.25"),
        (lambda t: t.replace("[erm, groupdro]", "{erm_balanced: {sampler: group_balanced}}"),
         r"objectives: unknown objective 'erm_balanced'.*give objectives.erm_balanced.objective"),
        (lambda t: t.replace("[erm, groupdro]", "{erm_b: {objective: emr}}"),
         r"objectives.erm_b.objective: unknown objective 'emr'. Did you mean 'erm'\?"),
        (lambda t: t.replace("[erm, groupdro]", "{'erm/b': {objective: erm}}"),
         r"objectives.erm/b: a cell name is letters, digits"),
        (lambda t: "study: [", r"grid.yaml \(line \d+\): not valid YAML"),
        (lambda t: "- just\n- a list\n", r"a grid file is a mapping"),
    ],
)
def test_bad_grids_fail_with_one_message_naming_the_file_and_key(tmp_path, change, expected):
    path = write(tmp_path, change(VALID))

    with pytest.raises(GridError, match=expected):
        load_grid(path)


def test_a_missing_grid_file_is_named(tmp_path):
    with pytest.raises(GridError, match="grid file .*nope.yaml does not exist"):
        load_grid(tmp_path / "nope.yaml")


def test_relative_paths_in_the_grid_are_relative_to_the_grid_file(tmp_path):
    (tmp_path / "sub").mkdir()
    grid = load_grid(write(tmp_path / "sub", VALID + "study_dir: out\ndata_root: ../data\n"))

    assert grid.study_dir == (tmp_path / "sub" / "out").resolve()
    assert grid.data_root == str((tmp_path / "data").resolve())


def test_space_overrides_apply_all_then_family_then_objective_then_model(tmp_path):
    grid = load_grid(write(tmp_path, VALID + """
search_space:
  all: {lr: {loguniform: [1.0e-3, 1.0e-1]}, batch_size: 64}
  vit: {lr: {loguniform: [1.0e-5, 1.0e-3]}}
  groupdro: {eta: 0.05}
"""))
    vit_dro = next(c for c in grid.cells() if c.family == "vit" and c.objective == "groupdro")

    assert grid.space_overrides(vit_dro) == {
        "lr": {"loguniform": [1.0e-5, 1.0e-3]}, "batch_size": 64, "eta": 0.05,
    }


def test_shipped_grids_are_valid():
    root = Path(__file__).resolve().parents[3] / "grids"

    for path in sorted(root.glob("*.yaml")):
        assert load_grid(path).cells(), path


def test_the_priors_block_is_validated_key_by_key(tmp_path):
    """Issue 13's grid keys: `neighbours` (how many cells inform one), `top_k` (configs of each that
    span the box), `across_families`, `narrow: soft`; a typo or a bad value is one message naming it."""
    grid = load_grid(write(tmp_path, VALID + "priors: {narrow: soft, neighbours: 3, top_k: 2, margin: 0, across_families: true}\n"))
    assert (grid.spec.priors.narrow, grid.spec.priors.neighbours, grid.spec.priors.across_families) == ("soft", 3, True)
    with pytest.raises(GridError, match=r"priors\.across_familes: unknown key\. Did you mean 'across_families'"):
        load_grid(write(tmp_path, VALID + "priors: {across_familes: true}\n"))
    with pytest.raises(GridError, match=r"priors\.narrow: .*'box', 'soft' or 'none'"):
        load_grid(write(tmp_path, VALID + "priors: {narrow: tight}\n"))
    with pytest.raises(GridError, match=r"priors\.neighbours: .*greater than or equal to 1"):
        load_grid(write(tmp_path, VALID + "priors: {neighbours: 0}\n"))


PER_DATASET = """
study: wg-test
data_root: data
datasets: [spurious_digits, waterbirds, celebA]
models: {resnet: [10x0.25, 18], vit: [tiny]}
pretrained: [false, true]
objectives: [erm]
"""


def test_each_data_set_trains_for_its_own_length_and_augmentation(tmp_path):
    from trainables.datasets import DATASETS

    grid = load_grid(write(tmp_path, PER_DATASET + """
epochs: {spurious_digits: 4, celebA: 7}
augment: {waterbirds: standard}
"""))

    assert grid.epochs("spurious_digits") == 4 and grid.epochs("celebA") == 7
    # A data set the grid does not name trains for its own default length (the original study's).
    assert grid.epochs("waterbirds") == DATASETS.get("waterbirds").default_epochs
    assert [grid.augment(d) for d in ("spurious_digits", "waterbirds", "celebA")] == ["none", "standard", "none"]


def test_one_epochs_and_augment_hold_for_every_data_set(tmp_path):
    grid = load_grid(write(tmp_path, PER_DATASET + "epochs: 5\naugment: standard\n"))

    assert {grid.epochs(d) for d in grid.dataset_names()} == {5}
    assert {grid.augment(d) for d in grid.dataset_names()} == {"standard"}


def test_weights_are_chosen_per_family_for_pretrained_cells_only(tmp_path):
    grid = load_grid(write(tmp_path, PER_DATASET + """
epochs: 3
weights: {resnet: "torchvision:IMAGENET1K_V1"}
"""))
    by_id = {c.id: c for c in grid.cells()}

    assert grid.weights(by_id["waterbirds/resnet-18/erm/pretrained"]) == "torchvision:IMAGENET1K_V1"
    assert grid.weights(by_id["waterbirds/resnet-18/erm/scratch"]) is None
    assert grid.weights(by_id["waterbirds/vit-tiny/erm/pretrained"]) is None  # the family's default source


def test_a_search_space_can_target_a_data_set_between_all_and_the_family(tmp_path):
    grid = load_grid(write(tmp_path, PER_DATASET + """
epochs: 3
search_space:
  all: {lr: {loguniform: [1.0e-3, 1.0e-1]}, batch_size: 64}
  waterbirds: {lr: {loguniform: [1.0e-5, 1.0e-3]}, weight_decay: 1.0}
  resnet: {weight_decay: 0.1}
"""))
    by_id = {c.id: c for c in grid.cells()}

    assert grid.space_overrides(by_id["waterbirds/resnet-18/erm/scratch"]) == {
        "lr": {"loguniform": [1.0e-5, 1.0e-3]}, "batch_size": 64, "weight_decay": 0.1}
    assert grid.space_overrides(by_id["celebA/vit-tiny/erm/scratch"]) == {
        "lr": {"loguniform": [1.0e-3, 1.0e-1]}, "batch_size": 64}


@pytest.mark.parametrize(("extra", "expected"), [
    ("epochs: {waterbird: 3}", r"grid.yaml: epochs.waterbird: not a data set of this grid. Did you mean 'waterbirds'?"),
    ("epochs: {waterbirds: 0}", r"grid.yaml: epochs: every data set's training length must be >= 1"),
    ("epochs: 0", r"grid.yaml: epochs: must be >= 1"),
    ("epochs: 3\naugment: {celebA: crop}", r"grid.yaml: augment: unknown augmentation 'crop'"),
    ("epochs: 3\nweights: {resnt: timm}", r"grid.yaml: weights.resnt: not a model family of this grid. Did you mean"),
])
def test_per_data_set_settings_are_checked(tmp_path, extra, expected):
    with pytest.raises(GridError, match=expected):
        load_grid(write(tmp_path, PER_DATASET + extra + "\n"))


def test_one_objective_runs_as_two_cells_under_two_names(tmp_path):
    # ERM on group-balanced batches is a baseline of its own (Idrissi et al. 2022): a cell beside plain ERM.
    grid = load_grid(write(tmp_path, VALID.replace("[erm, groupdro]", """
  erm: {}
  erm_balanced: {objective: erm, sampler: group_balanced}
""") + "search_space: {erm: {lr: 0.1}, erm_balanced: {batch_size: 128}}\n"))
    cells = [c for c in grid.cells() if c.model == "resnet-10x0.25" and not c.pretrained]

    assert [c.objective for c in cells] == ["erm", "erm_balanced"]
    assert len({c.id for c in cells}) == 2
    assert [grid.registered_objective(c.objective) for c in cells] == ["erm", "erm"]
    # Overrides for the registered objective hold for both; the cells' own name comes after it.
    assert grid.space_overrides(cells[0]) == {"lr": 0.1}
    assert grid.space_overrides(cells[1]) == {"lr": 0.1, "batch_size": 128}


def test_short_cell_labels_are_unique_over_every_registered_dataset_model_family_and_objective() -> None:
    import itertools

    from trainables.datasets import DATASETS
    from trainables.objectives import OBJECTIVES
    from wgtune.spec.grid import cell_short_label

    models = ["resnet-18", "resnet-50", "resnet-18x0.5", "resnet-10x0.25", "vit-d6w256", "vit-base-p32"]
    combos = list(itertools.product(DATASETS, models, OBJECTIVES, (False, True)))
    labels = {cell_short_label(*c) for c in combos}
    assert len(labels) == len(combos)
    assert cell_short_label("waterbirds", "resnet-50", "groupdro", True) == "wb/r50/dro/pt"
    assert all(len(label) <= 24 for label in labels)


def test_a_grids_cells_have_short_labels_unique_within_the_grid(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(textwrap.dedent("""
        study: s
        study_dir: out
        datasets: [spurious_digits]
        models: {resnet: [10x0.25, 10x0.5, 18x0.25], vit: [d2w64]}
        objectives: [erm, groupdro, irm, ilc]
        epochs: 1
    """))
    cells = load_grid(tmp_path / "grid.yaml").cells()
    assert len({c.short_label for c in cells}) == len(cells) > 1
    assert {c.short_label for c in cells if c.model == "resnet-10x0.25"} == {
        "sd/r10x0.25/erm", "sd/r10x0.25/dro", "sd/r10x0.25/irm", "sd/r10x0.25/ilc"}
