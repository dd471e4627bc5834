"""Pretrained weight sources: the grid-time check, timm tags, torchvision's weights by key mapping."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from trainables import models
from trainables.models import (
    FAMILIES,
    PretrainedWeightsError,
    check_pretrained,
    create_model,
    pretrained_normalisation,
    resolve,
)
from trainables.pretrained import load_fitting

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic moved off its initial value, so that two tensors that
    start equal (LayerNorm weights all 1) cannot stand in for each other in a key mapping."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *(b for n, b in model.named_buffers() if "running" in n)]:
            tensor.add_(0.1 * torch.rand_like(tensor))
    return model.eval()


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """Empty Hugging Face and torch hub caches, no weights dir, no network (any connect fails the test)."""
    hf, torch_home = tmp_path / "hf-cache", tmp_path / "torch-home"
    hf.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv(models.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights check must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return {"hf": hf, "torch_hub": torch_home / "hub" / "checkpoints", "tmp": tmp_path}


def _plant_hub_file(hf_cache: Path, timm_name: str, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face cache layout `try_to_load_from_cache` reads: refs/main -> snapshots/<rev>/."""
    repo = hf_cache / f"models--timm--{timm_name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    path = repo / "snapshots" / "abc123" / "model.safetensors"
    safetensors.torch.save_file(state, path)
    return path


@pytest.fixture
def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a model fails the test: the check must answer from names and directory entries."""
    for name in FAMILIES:

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the weights check must not build the model")

        monkeypatch.setattr(FAMILIES.get(name), "build", refuse)


# --- the check a grid runs ------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, "timm", "timm:augreg_in21k_ft_in1k"])
def test_a_size_without_weights_is_refused_naming_the_model_and_what_exists(
    machine: dict, no_building: None, weights: str | None
) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        check_pretrained("vit-d6w256", weights)
    message = str(err.value)
    for fragment in ("no ImageNet weights exist for vit-d6w256", "vit sizes with published weights",
                     "vit-base-p32 (timm, torchvision)", "vit-tiny (timm)", "$WGTUNE_WEIGHTS_DIR/vit-d6w256.pth"):  # fmt: skip
        assert fragment in message, message
    assert ("default weights" if weights is None else f"weights: {weights}") in message


def test_torchvision_weights_of_a_size_torchvision_lacks_are_refused(machine: dict, no_building: None) -> None:
    with pytest.raises(PretrainedWeightsError, match=r"resnet-18x0\.5 \(weights: torchvision:IMAGENET1K_V1\).*"
                                                     r"torchvision publishes none.*resnet-18 \(timm, torchvision\)"):
        check_pretrained("resnet-18x0.5", "torchvision:IMAGENET1K_V1")
    with pytest.raises(PretrainedWeightsError, match=r"vit-tiny.*torchvision publishes none"):
        check_pretrained("vit-tiny", "torchvision")


def test_an_unknown_tag_lists_the_tags_that_exist(machine: dict, no_building: None) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        check_pretrained("resnet-50", "timm:a1_in21k")
    assert "resnet-50 (weights: timm:a1_in21k)" in str(err.value)
    assert "resnet50.a1_in1k" in str(err.value) and "resnet50.tv_in1k" in str(err.value)
    with pytest.raises(PretrainedWeightsError, match=r"vit-base-p32.*no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        check_pretrained("vit-base-p32", "torchvision:IMAGENET1K_V9")
    with pytest.raises(PretrainedWeightsError, match=r"timm architecture 'resnet50' is not resnet-18's"):
        check_pretrained("resnet-18", "timm:resnet50.a1_in1k")


def test_weights_not_on_this_machine_name_where_they_were_looked_for(machine: dict, no_building: None) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        check_pretrained("resnet-18", "timm:a1_in1k")
    message = str(err.value)
    assert "resnet-18 (weights: timm:a1_in1k)" in message and "'resnet18.a1_in1k' are not on this machine" in message
    assert str(machine["hf"] / "models--timm--resnet18.a1_in1k") in message
    assert "timm.create_model('resnet18.a1_in1k', pretrained=True)" in message
    with pytest.raises(PretrainedWeightsError) as err:
        check_pretrained("vit-large-p32", "torchvision:IMAGENET1K_V1")
    assert str(machine["torch_hub"] / "vit_l_32-c7638314.pth") in str(err.value)
    assert "get_weight('ViT_L_32_Weights.IMAGENET1K_V1')" in str(err.value)


def test_a_timm_tag_in_the_cache_is_accepted_and_recorded_by_name(machine: dict, no_building: None) -> None:
    _plant_hub_file(machine["hf"], "resnet18.tv_in1k", {"w": torch.zeros(1)})
    assert check_pretrained("resnet-18", "timm:tv_in1k") == "timm:resnet18.tv_in1k"
    assert check_pretrained("resnet-18", "timm:resnet18.tv_in1k") == "timm:resnet18.tv_in1k"
    with pytest.raises(PretrainedWeightsError):
        check_pretrained("resnet-18")  # the default tag, a1_in1k, is not the one cached
    _plant_hub_file(machine["hf"], "resnet18.a1_in1k", {"w": torch.zeros(1)})
    assert check_pretrained("resnet-18") == check_pretrained("resnet-18", "timm") == "timm:resnet18.a1_in1k"


def test_a_tag_is_found_on_the_384_px_model_of_the_same_architecture(machine: dict, no_building: None) -> None:
    # timm publishes ViT-L/32's ImageNet-1k fine-tune only as vit_large_patch32_384.
    _plant_hub_file(machine["hf"], "vit_large_patch32_384.orig_in21k_ft_in1k", {"w": torch.zeros(1)})
    assert check_pretrained("vit-large-p32", "timm:orig_in21k_ft_in1k") == "timm:vit_large_patch32_384.orig_in21k_ft_in1k"


def test_files_and_the_weights_dir(machine: dict, no_building: None, monkeypatch: pytest.MonkeyPatch) -> None:
    weights_dir = machine["tmp"] / "weights"
    weights_dir.mkdir()
    monkeypatch.setenv(models.WEIGHTS_DIR_ENV, str(weights_dir))
    for name in ("vit-d6w256.pth", "resnet50.a1h_in1k.safetensors", "resnet50-11ad3fa6.pth"):
        (weights_dir / name).write_bytes(b"")
    assert check_pretrained("vit-d6w256") == f"file:{weights_dir / 'vit-d6w256.pth'}"
    assert check_pretrained("resnet-50", "timm:a1h_in1k") == "timm:resnet50.a1h_in1k"
    assert check_pretrained("resnet-50", "torchvision:IMAGENET1K_V2") == "torchvision:resnet50.IMAGENET1K_V2"
    assert check_pretrained("resnet-50", "torchvision") == "torchvision:resnet50.IMAGENET1K_V2"  # its DEFAULT
    own = machine["tmp"] / "mine.pth"
    own.write_bytes(b"")
    assert check_pretrained("resnet-10x0.25", str(own)) == check_pretrained("resnet-10x0.25", f"file:{own}") == f"file:{own}"
    # A recorded source, given back as the setting, resolves to itself: a cell can pin what it checked.
    for model_id, weights in (("vit-d6w256", None), ("resnet-50", "timm:a1h_in1k"), ("resnet-50", "torchvision")):
        spec = check_pretrained(model_id, weights)
        assert check_pretrained(model_id, spec) == spec
    with pytest.raises(PretrainedWeightsError, match=r"nowhere\.pth does not exist \(weights takes timm\[:<tag>\]"):
        check_pretrained("resnet-18", str(machine["tmp"] / "nowhere.pth"))


def test_inputs_are_normalised_as_the_chosen_weights_were_trained() -> None:
    half = ((0.5,) * 3, (0.5,) * 3)
    assert pretrained_normalisation("vit-base-p32") == half  # timm's default tag: augreg
    assert pretrained_normalisation("vit-base-p32", "timm:augreg_in21k_ft_in1k") == half
    assert pretrained_normalisation("vit-base-p32", "torchvision:IMAGENET1K_V1") == IMAGENET
    assert pretrained_normalisation("resnet-50", "timm:a1_in1k") == IMAGENET
    assert pretrained_normalisation("vit-d6w256", "some/file.pth") == IMAGENET


# --- torchvision's weights in timm's models ---------------------------------------------------

TORCHVISION_IDS = [f"resnet-{d}" for d in FAMILIES.get("resnet").published_depths] + [
    f"vit-{name}" + ("" if patch == 16 else f"-p{patch}") for name, patch in FAMILIES.get("vit").torchvision_models
]


@pytest.mark.parametrize("model_id", TORCHVISION_IDS)
def test_every_torchvision_model_maps_key_for_key(model_id: str) -> None:
    size = resolve(model_id)
    with torch.device("meta"):
        theirs = getattr(torchvision.models, size.torchvision_name)().state_dict()
        ours = create_model(model_id, n_classes=1000, image_size=224).state_dict()
    mapped = FAMILIES.get(size.family).from_torchvision(theirs)
    assert len(mapped) == len(theirs), "two torchvision keys mapped onto one"
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.items()}


def test_torchvision_resnet18_from_its_cache_computes_what_torchvision_computes(machine: dict) -> None:
    torch.manual_seed(0)
    reference = _perturbed(torchvision.models.resnet18())
    machine["torch_hub"].mkdir(parents=True)
    torch.save(reference.state_dict(), machine["torch_hub"] / "resnet18-f37072fd.pth")  # IMAGENET1K_V1's file name

    assert check_pretrained("resnet-18", "torchvision:IMAGENET1K_V1") == "torchvision:resnet18.IMAGENET1K_V1"
    model = create_model("resnet-18", n_classes=1000, image_size=64, pretrained=True, weights="torchvision:IMAGENET1K_V1")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
    two = create_model("resnet-18", n_classes=2, image_size=64, pretrained=True, weights="torchvision")
    assert torch.equal(two.layer4[1].conv2.weight, reference.layer4[1].conv2.weight) and two.fc.out_features == 2


@pytest.mark.parametrize("old_names", [False, True])
def test_a_torchvision_vit_computes_the_same_in_timm(old_names: bool) -> None:
    torch.manual_seed(0)
    reference = _perturbed(VisionTransformer(image_size=128, patch_size=32, num_layers=2, num_heads=2, hidden_dim=128,
                                             mlp_dim=512, num_classes=10))  # fmt: skip
    state = reference.state_dict()
    if old_names:  # files saved before torchvision 0.13 name the MLP's linears linear_1 / linear_2
        state = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in state.items()}
        assert any("linear_1" in k for k in state)
    model = create_model("vit-d2w128-p32", n_classes=10, image_size=128).eval()
    load_fitting(model, FAMILIES.get("vit").from_torchvision(state), "torchvision", "vit-d2w128-p32")
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
