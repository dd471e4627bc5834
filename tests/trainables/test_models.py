"""The model size ladder: every named size, parity with timm, widths and depths, pretrained loading."""

from __future__ import annotations

import re
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.resnet import BasicBlock, Bottleneck

from trainables import models, pretrained
from trainables.models import (
    FAMILIES,
    PretrainedWeightsError,
    count_parameters,
    create_model,
    list_models,
    resolve,
)
from trainables.registry import UnknownNameError

SMALL = 15_000_000  # models below this many parameters are built for real and run forward
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub, no weights dir, and an empty Hugging Face cache (returned, to plant files in)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(models.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_loaded(model: torch.nn.Module, source: dict[str, torch.Tensor], n_classes: int) -> None:
    """Every non-head tensor equals the source's; the head has `n_classes` outputs."""
    head = model.get_classifier()
    own = model.state_dict()
    body = [k for k in source if not k.startswith(("fc.", "head."))]
    assert body and all(torch.equal(own[k], source[k]) for k in body)
    assert head.weight.shape[0] == n_classes


# Every ladder size: adding one to a family's table needs no new test code.
@pytest.mark.parametrize("model_id", list_models())
def test_every_ladder_size_resolves_grows_and_runs(model_id: str) -> None:
    size = resolve(model_id)
    assert size.id == model_id and f"{size.family}-{size.size}" == model_id
    n = count_parameters(model_id)
    assert n > 0
    ladder = list_models(f"{size.family}-*")
    position = ladder.index(model_id)
    if position > 0:
        assert count_parameters(ladder[position - 1]) < n, "the ladder must be ordered small -> large"
    if n < SMALL:
        torch.manual_seed(0)
        model = create_model(model_id, n_classes=3, image_size=32).eval()
        assert _params(model) == count_parameters(model_id, 3, 32)
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_list_models_filters_and_orders_by_family() -> None:
    assert list_models("vit-*") == ["vit-tiny", "vit-small", "vit-base", "vit-base-p32", "vit-large", "vit-large-p32"]
    assert list_models("resnet-1?") == ["resnet-10", "resnet-12", "resnet-14", "resnet-18"]
    assert list_models("*x0.25") == ["resnet-10x0.25", "resnet-18x0.25"]
    assert list_models("convnext-*") == []
    assert set(list_models()) >= {"resnet-18x0.5", "resnet-152", "vit-large", "vit-base-p32", "vit-large-p32"}


@pytest.mark.parametrize(
    "model_id, timm_name",
    [
        ("resnet-18", "resnet18"),
        ("resnet-34", "resnet34"),
        ("resnet-50", "resnet50"),
        ("resnet-152", "resnet152"),
        ("vit-tiny", "vit_tiny_patch16_224"),
        ("vit-base", "vit_base_patch16_224"),
        ("vit-small-p32", "vit_small_patch32_224"),
        ("vit-base-p8", "vit_base_patch8_224"),
        ("vit-base-p32", "vit_base_patch32_224"),
        ("vit-large", "vit_large_patch16_224"),
        ("vit-large-p32", "vit_large_patch32_224"),
    ],
)
def test_standard_sizes_are_timms_models(model_id: str, timm_name: str) -> None:
    with torch.device("meta"):
        # num_classes explicit: the default weights of some (vit_large_patch32_224: in21k) come without a head.
        reference = timm.create_model(timm_name, pretrained=False, num_classes=1000).state_dict()
        ours = create_model(model_id, n_classes=1000, image_size=224).state_dict()
    assert resolve(model_id).timm_name == timm_name
    assert count_parameters(model_id, 1000, 224) == _params_of(timm_name)
    # Same keys and shapes, so timm's ImageNet checkpoints load without conversion.
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def _params_of(timm_name: str) -> int:
    with torch.device("meta"):
        return _params(timm.create_model(timm_name, pretrained=False, num_classes=1000))


def test_normalisation_comes_from_the_pretrained_cfg() -> None:
    def normalisation(model_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return resolve(model_id).pretrained_mean, resolve(model_id).pretrained_std

    assert normalisation("vit-tiny") == ((0.5,) * 3, (0.5,) * 3)
    assert normalisation("resnet-50") == normalisation("vit-d6w256") == IMAGENET
    assert all(resolve(m).pretrained_image_size == 224 for m in ("resnet-18", "vit-d6w256"))


@pytest.mark.parametrize(
    "depth, block, layers",
    [(10, BasicBlock, (1, 1, 1, 1)), (12, BasicBlock, (1, 1, 2, 1)), (14, BasicBlock, (1, 2, 2, 1)),
     (26, BasicBlock, (2, 3, 4, 3)), (101, Bottleneck, (3, 4, 23, 3))],
)  # fmt: skip
def test_custom_depths_have_their_block_layout(depth: int, block: type, layers: tuple[int, ...]) -> None:
    size = resolve(f"resnet-{depth}")
    assert size.arch["layers"] == layers
    assert (size.timm_name is None) == (depth != 101)
    with torch.device("meta"):
        model = create_model(size.id, n_classes=2, image_size=224)
    stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
    assert tuple(len(stage) for stage in stages) == layers
    assert all(type(b) is block for stage in stages for b in stage)


def test_depth_and_width_move_the_parameter_count() -> None:
    depths = [count_parameters(f"resnet-{d}") for d in (10, 12, 14, 18, 26, 34)]
    assert depths == sorted(set(depths))
    for depth in (10, 18, 50):
        widths = [count_parameters(f"resnet-{depth}x{w}") for w in (0.25, 0.5, 1, 2)]
        assert widths == sorted(set(widths))
    # Parameters grow ~quadratically with width: half width is well under half the count.
    assert count_parameters("resnet-18x0.5") < 0.3 * count_parameters("resnet-18")
    vits = [count_parameters(f"vit-{s}") for s in ("d6w128", "d6w256", "d12w256", "d12w512")]
    assert vits == sorted(set(vits))


def test_width_scales_channels_in_multiples_of_eight() -> None:
    half = resolve("resnet-18x0.5").arch
    assert (half["channels"], half["stem_width"]) == ((32, 64, 128, 256), 32)
    tenth = resolve("resnet-10x0.1").arch
    assert (tenth["channels"], tenth["stem_width"]) == ((8, 16, 24, 48), 8)
    with torch.device("meta"):
        wide = create_model("resnet-50x2", n_classes=2, image_size=224)
        narrow = create_model("resnet-18x0.5", n_classes=2, image_size=224)
    assert (wide.conv1.out_channels, wide.bn1.num_features, wide.fc.in_features) == (128, 128, 4 * 1024)
    assert wide.layer1[0].conv1.in_channels == 128
    # The stem is scaled with the stages, so layer1 of a basic-block ResNet needs no projection.
    assert (narrow.conv1.out_channels, narrow.layer1[0].conv1.in_channels) == (32, 32)
    assert narrow.layer1[0].downsample is None
    assert [layer[-1].conv2.out_channels for layer in (narrow.layer1, narrow.layer4)] == [32, 256]


def test_ids_are_canonical() -> None:
    assert resolve("resnet-18x1.0").id == "resnet-18" and resolve("resnet-18x1").timm_name == "resnet18"
    assert resolve("resnet-18x0.50").id == "resnet-18x0.5"
    assert resolve("vit-d12w192").id == "vit-tiny"
    custom = resolve("vit-d6w256")
    assert (custom.id, custom.timm_name) == ("vit-d6w256", None)
    assert dict(custom.arch) == {"embed_dim": 256, "depth": 6, "num_heads": 4, "patch_size": 16}
    assert hash(custom) == hash(resolve("vit-d6w256"))
    with pytest.raises(TypeError):
        custom.arch["depth"] = 7  # type: ignore[index]


@pytest.mark.parametrize("image_size, patch", [(32, 4), (64, 8), (96, 12), (16, 2), (128, 16), (224, 16)])
def test_vit_patch_size_follows_the_image_size(image_size: int, patch: int) -> None:
    with torch.device("meta"):
        model = create_model("vit-d2w64", n_classes=2, image_size=image_size)
    assert model.patch_embed.patch_size == (patch, patch)
    assert model.patch_embed.grid_size == (image_size // patch,) * 2


@pytest.mark.parametrize(
    "model_id, canonical, patch",
    [("vit-base-p32", "vit-base-p32", 32), ("vit-base-p16", "vit-base", 16), ("vit-d12w768-p32", "vit-base-p32", 32),
     ("vit-d6w256-p16", "vit-d6w256", 16), ("vit-d6w256-p8", "vit-d6w256-p8", 8), ("vit-d24w1024-p32", "vit-large-p32", 32)],
)  # fmt: skip
def test_the_vit_patch_size_is_part_of_the_id(model_id: str, canonical: str, patch: int) -> None:
    size = resolve(model_id)
    assert size.id == canonical and size.arch["patch_size"] == patch
    assert resolve(size.id) == size  # the canonical id parses back to the same architecture
    with torch.device("meta"):
        model = create_model(model_id, n_classes=2, image_size=224)
    assert model.patch_embed.patch_size == (patch, patch)
    assert model.patch_embed.grid_size == (224 // patch,) * 2


@pytest.mark.parametrize("model_id, image_size, patch", [("vit-base-p32", 32, 8), ("vit-base-p32", 64, 16),
                                                         ("vit-d2w64-p8", 32, 2), ("vit-base-p32", 128, 32)])  # fmt: skip
def test_small_images_keep_the_grid_a_patch_size_has_at_128_px(model_id: str, image_size: int, patch: int) -> None:
    with torch.device("meta"):
        model = create_model(model_id, n_classes=2, image_size=image_size)
    assert model.patch_embed.patch_size == (patch, patch)
    assert model.patch_embed.grid_size == (128 // resolve(model_id).arch["patch_size"],) * 2


@pytest.mark.parametrize("key", list(FAMILIES.get("vit").timm_models))
def test_every_timm_vit_in_the_table_is_that_architecture_with_weights(key: tuple[str, int]) -> None:
    """The table names only timm models of the same layers, differing at most in the position grid."""
    name, patch = key
    model_id = f"vit-{name}" + ("" if patch == 16 else f"-p{patch}")
    size = resolve(model_id)
    assert size.timm_names == FAMILIES.get("vit").timm_models[key] and size.timm_names[0].endswith("_224")
    with torch.device("meta"):
        ours = create_model(model_id, n_classes=1000, image_size=224).state_dict()
        for timm_name in size.timm_names:
            assert timm.models.list_pretrained(f"{timm_name}.*"), f"{timm_name} has no published weights"
            theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000).state_dict()
            shapes = {k: v.shape for k, v in theirs.items() if k != "pos_embed"}
            assert shapes == {k: v.shape for k, v in ours.items() if k != "pos_embed"}


def test_published_sizes_are_those_with_timm_or_torchvision_weights() -> None:
    for family_name in FAMILIES:
        for size_name in FAMILIES.get(family_name).published_sizes():
            size = resolve(f"{family_name}-{size_name}")
            assert size.size == size_name and (size.timm_names or size.torchvision_name)
    assert FAMILIES.get("vit").published_sizes()[:3] == ("tiny", "small", "small-p32")
    assert resolve("resnet-152").torchvision_name == "resnet152" and resolve("resnet-18x0.5").torchvision_name is None
    assert resolve("vit-large-p32").torchvision_name == "vit_l_32" and resolve("vit-tiny").torchvision_name is None


@pytest.mark.parametrize("image_size", [100, 200])
def test_vit_rejects_an_image_size_its_patches_do_not_tile(image_size: int) -> None:
    with pytest.raises(ValueError, match=f"image_size {image_size} is not divisible"):
        create_model("vit-tiny", n_classes=2, image_size=image_size)


@pytest.mark.parametrize(
    "model_id, fragments",
    [
        ("resnet-19", ["depth 19", "resnet-<depth>[x<width multiplier>]", "resnet-10x0.25", "resnet-152"]),
        ("resnet-18x0", ["width multiplier must be positive", "resnet-18x0.5"]),
        ("resnet-big", ["does not match", "resnet-<depth>"]),
        ("resnet", ["bad resnet size ''", "resnet-18"]),
        ("vit-d6w100", ["divisible by 64", "d<depth>w<width>", "vit-tiny", "vit-large"]),
        ("vit-huge", ["does not match", "vit-base"]),
        ("vit-base-p1", ["patch size must be in 2..128", "-p<patch>", "vit-large-p32"]),
        ("vit-base-32", ["does not match", "[-p<patch>]"]),
        ("vit-p32", ["does not match"]),
    ],
)
def test_bad_sizes_name_the_grammar_and_the_ladder(model_id: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        resolve(model_id)
    assert not isinstance(err.value, UnknownNameError)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_an_unknown_family_lists_the_families() -> None:
    with pytest.raises(UnknownNameError, match="unknown model family 'convnext'.*Valid: resnet, vit"):
        resolve("convnext-tiny")
    assert FAMILIES.names() == ["resnet", "vit"]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_from_a_weights_file_keeps_the_body_and_resets_the_head(
    offline: Path, tmp_path: Path, suffix: str
) -> None:
    torch.manual_seed(1)
    source = create_model("resnet-10x0.25", n_classes=1000, image_size=32).state_dict()
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source}, path)  # wrapped, as training checkpoints often are
    else:
        safetensors.torch.save_file(source, path)
    torch.manual_seed(2)
    model = create_model("resnet-10x0.25", n_classes=2, image_size=32, pretrained=True, weights=path)
    _assert_loaded(model, source, n_classes=2)


def test_pretrained_from_the_weights_dir(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    source = create_model("resnet-10x0.25", n_classes=1000, image_size=32).state_dict()
    torch.save(source, tmp_path / "resnet-10x0.25.pth")
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, str(tmp_path))
    model = create_model("resnet-10x0.25", n_classes=2, image_size=32, pretrained=True)
    _assert_loaded(model, source, n_classes=2)


def test_pretrained_from_timms_hub_cache_without_network(offline: Path) -> None:
    torch.manual_seed(1)
    source = create_model("resnet-18", n_classes=1000, image_size=224).state_dict()
    repo = offline / "models--timm--resnet18.a1_in1k"  # the hub id of timm's default resnet18 weights
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    safetensors.torch.save_file(source, repo / "snapshots" / "abc123" / "model.safetensors")
    model = create_model("resnet-18", n_classes=2, image_size=32, pretrained=True)
    _assert_loaded(model, source, n_classes=2)


def test_pretrained_vit_weights_are_resampled_to_a_small_image(offline: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_model("vit-d2w64", n_classes=1000, image_size=224).state_dict()  # 16-px patches, 14x14
    path = tmp_path / "vit.pth"
    torch.save(source, path)
    same = create_model("vit-d2w64", n_classes=2, image_size=224, pretrained=True, weights=path)
    _assert_loaded(same, source, n_classes=2)

    small = create_model("vit-d2w64", n_classes=2, image_size=32, pretrained=True, weights=path)
    got = small.state_dict()
    assert got["patch_embed.proj.weight"].shape == (64, 3, 4, 4)
    assert got["pos_embed"].shape == (1, 1 + 8 * 8, 64)
    assert torch.equal(got["pos_embed"][:, 0], source["pos_embed"][:, 0])  # the class token's stays
    assert torch.equal(got["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"])
    # timm's resamplers: FlexiViT's pseudo-inverse for the kernel, bicubic for the 14x14 -> 8x8 grid.
    kernel = resample_patch_embed(source["patch_embed.proj.weight"], [4, 4])
    assert torch.equal(got["patch_embed.proj.weight"], kernel)
    assert torch.equal(got["pos_embed"], resample_abs_pos_embed(source["pos_embed"], [8, 8]))


@pytest.mark.parametrize(
    "file_id, target_id, problem",
    [
        ("resnet-10x0.25", "resnet-12x0.25", r"missing 10: layer3\.1\.conv1\.weight"),
        ("resnet-12x0.25", "resnet-10x0.25", r"unexpected 12: layer3\.1\.conv1\.weight"),
        ("resnet-10x0.5", "resnet-10x0.25", r"wrong shape \d+: conv1\.weight \(32, 3, 7, 7\)!=\(16, 3, 7"),
        ("vit-d2w64", "resnet-10x0.25", r"missing \d+: conv1\.weight.*unexpected \d+: cls_token"),
    ],
)
def test_a_wrong_architecture_file_is_refused(
    offline: Path, tmp_path: Path, file_id: str, target_id: str, problem: str
) -> None:
    path = tmp_path / f"{file_id}.pth"
    torch.save(create_model(file_id, n_classes=1000, image_size=32).state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as err:
        create_model(target_id, n_classes=2, image_size=32, pretrained=True, weights=path)
    assert str(path) in str(err.value) and target_id in str(err.value)
    assert re.search(problem, str(err.value)), str(err.value)


def test_offline_without_a_file_fails_fast_naming_the_alternatives(offline: Path) -> None:
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("resnet-18", n_classes=2, image_size=32, pretrained=True)
    assert time.monotonic() - start < 10
    message = str(err.value)
    alternatives = ("weights:", "$WGTUNE_WEIGHTS_DIR/resnet-18.pth")
    for fragment in ("'resnet18.a1_in1k'", "unreachable", "HF_HUB_OFFLINE", *alternatives):
        assert fragment in message


def test_an_unreachable_hub_fails_fast_without_the_offline_flag(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    for proxy in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match=r"unreachable \(cannot connect to 127\.0\.0\.1:9"):
        create_model("vit-tiny", n_classes=2, image_size=32, pretrained=True)
    assert time.monotonic() - start < 10


def test_a_reachable_hub_goes_through_timm(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    hub_model = create_model("resnet-18", n_classes=2, image_size=224)
    calls = []

    def fake_create_model(name: str, **kwargs: object) -> torch.nn.Module:
        calls.append((name, kwargs))
        return hub_model

    monkeypatch.setattr(pretrained, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = create_model("resnet-18", n_classes=2, image_size=32, pretrained=True)
    assert calls == [("resnet18.a1_in1k", {"pretrained": True, "num_classes": 2})]  # timm's default tag, by name
    _assert_loaded(model, hub_model.state_dict(), n_classes=2)


def test_a_custom_size_has_no_imagenet_weights(offline: Path) -> None:
    no_weights = r"no ImageNet weights exist for resnet-18x0\.5.*WGTUNE_WEIGHTS_DIR"
    with pytest.raises(PretrainedWeightsError, match=no_weights):
        create_model("resnet-18x0.5", n_classes=2, image_size=32, pretrained=True)


def test_weights_file_problems_are_named(offline: Path, tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="nowhere.pth does not exist"):
        create_model("resnet-10x0.25", 2, 32, pretrained=True, weights=tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read weights file .*garbage.pth"):
        create_model("resnet-10x0.25", 2, 32, pretrained=True, weights=garbage)
    with pytest.raises(ValueError, match="pretrained=False"):
        create_model("resnet-10x0.25", 2, 32, pretrained=False, weights=garbage)
