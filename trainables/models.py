"""The model size ladder: `<family>-<size>` ids, one size table and one timm builder per family.

torch and timm are imported inside the functions that need them, so resolving and listing ids
(grid validation, `wgtune status`) does not pay their multi-second import.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping
from urllib.parse import urlparse

from trainables.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FAMILIES", "ModelFamily", "ModelSize", "PretrainedWeightsError",
    "count_parameters", "create_model", "list_models", "resolve",
]  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_IMAGE_SIZE = 224
WEIGHTS_DIR_ENV = "WGTUNE_WEIGHTS_DIR"
WEIGHTS_SUFFIXES = (".safetensors", ".pth")
HUB_PROBE_TIMEOUT_S = 3.0


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be found, read, or do not fit the architecture."""


class ModelFamily(ABC):
    """One architecture family: its grammar of sizes, its named ladder and its builder."""

    grammar: ClassVar[str]
    """The size grammar, shown in errors, e.g. ``<depth>[x<width>]``."""
    ladder: ClassVar[tuple[str, ...]]
    """Named sizes, ordered small -> large by parameter count."""

    @abstractmethod
    def parse(self, size: str) -> dict[str, Any]:
        """The architecture (plain data) of `size`; ValueError explaining what is wrong."""

    @abstractmethod
    def canonical(self, arch: Mapping[str, Any]) -> str:
        """The one size name of `arch`, so one architecture has one id."""

    @abstractmethod
    def build(self, arch: Mapping[str, Any], n_classes: int, image_size: int) -> nn.Module:
        """A freshly initialised model (on torch's current default device)."""

    @abstractmethod
    def timm_name(self, arch: Mapping[str, Any]) -> str | None:
        """timm's model of identical architecture with ImageNet weights, if any."""

    def adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Fit weights made for another input resolution to `model`; identity by default."""
        return state


FAMILIES: Registry[ModelFamily] = Registry("model family")


def _round8(channels: float) -> int:
    return max(8, int(channels / 8 + 0.5) * 8)


class ResNetFamily(ModelFamily):
    """timm's ResNet (7x7 stem, max-pool) at any depth of the table and any width multiplier."""

    grammar = "<depth>[x<width multiplier>]"
    depths: ClassVar[Mapping[int, tuple[str, tuple[int, ...]]]] = {
        10: ("basic", (1, 1, 1, 1)),
        12: ("basic", (1, 1, 2, 1)),
        14: ("basic", (1, 2, 2, 1)),
        18: ("basic", (2, 2, 2, 2)),
        26: ("basic", (2, 3, 4, 3)),
        34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)),
        101: ("bottleneck", (3, 4, 23, 3)),
        152: ("bottleneck", (3, 8, 36, 3)),
    }
    ladder = (
        "10x0.25", "18x0.25", "10x0.5", "18x0.5", "10", "12", "14", "18", "26", "34", "50", "101", "152",
    )  # fmt: skip
    base_channels: ClassVar[tuple[int, ...]] = (64, 128, 256, 512)
    _pattern = re.compile(r"(\d+)(?:x(\d+(?:\.\d*)?|\.\d+))?")

    def parse(self, size: str) -> dict[str, Any]:
        match = self._pattern.fullmatch(size)
        if match is None:
            raise ValueError(f"does not match {self.grammar}")
        depth, width = int(match[1]), float(match[2] or 1.0)
        if depth not in self.depths:
            raise ValueError(f"depth {depth} is not one of {', '.join(map(str, self.depths))}")
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {match[2]}")
        block, layers = self.depths[depth]
        channels = tuple(_round8(c * width) for c in self.base_channels)
        return {"depth": depth, "width": width, "block": block, "layers": layers,
                "channels": channels, "stem_width": _round8(64 * width)}  # fmt: skip

    def canonical(self, arch: Mapping[str, Any]) -> str:
        return f"{arch['depth']}" + ("" if arch["width"] == 1 else f"x{arch['width']:g}")

    def build(self, arch: Mapping[str, Any], n_classes: int, image_size: int) -> nn.Module:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks
        from torch import nn

        del image_size  # global average pooling makes the ResNet resolution-free
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[arch["block"]]
        stem = arch["stem_width"]
        model = ResNet(block, arch["layers"], n_classes, channels=arch["channels"], stem_width=stem)
        if model.conv1.out_channels != stem:
            # timm's plain 7x7 stem is always 64 wide (stem_width sizes only its deep stems): swap in
            # a scaled stem, and rebuild layer1 so it takes the stem's channels without a projection.
            model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            model.bn1 = nn.BatchNorm2d(stem)
            stages, _ = make_blocks((block,) * 4, arch["channels"], arch["layers"], inplanes=stem)
            model.layer1 = dict(stages)["layer1"]
            model.feature_info[0]["num_chs"] = stem
            model.init_weights()
        return model

    def timm_name(self, arch: Mapping[str, Any]) -> str | None:
        # timm's resnet10t/14t/26 differ (tiered stem, bottlenecks), so only these are equal.
        standard = arch["width"] == 1 and arch["depth"] in (18, 34, 50, 101, 152)
        return f"resnet{arch['depth']}" if standard else None


class ViTFamily(ModelFamily):
    """timm's VisionTransformer: named sizes or `d<depth>w<width>` with one head per 64 dims."""

    grammar = "tiny|small|base|large|d<depth>w<width> (width a multiple of 64)"
    named: ClassVar[Mapping[str, tuple[int, int, str]]] = {
        # name: (depth, width, timm's pretrained equivalent)
        "tiny": (12, 192, "vit_tiny_patch16_224"),
        "small": (12, 384, "vit_small_patch16_224"),
        "base": (12, 768, "vit_base_patch16_224"),
        "large": (24, 1024, "vit_large_patch16_224"),
    }
    ladder = ("tiny", "small", "base", "large")
    _pattern = re.compile(r"d(\d+)w(\d+)")

    def parse(self, size: str) -> dict[str, Any]:
        if size in self.named:
            depth, width, _ = self.named[size]
        elif match := self._pattern.fullmatch(size):
            depth, width = int(match[1]), int(match[2])
        else:
            raise ValueError(f"does not match {self.grammar}")
        if depth < 1 or width < 64 or width % 64:
            raise ValueError(f"needs depth >= 1 and width divisible by 64 (heads = width / 64), got {size!r}")
        return {"embed_dim": width, "depth": depth, "num_heads": width // 64}

    def canonical(self, arch: Mapping[str, Any]) -> str:
        for name, (depth, width, _) in self.named.items():
            if (depth, width) == (arch["depth"], arch["embed_dim"]):
                return name
        return f"d{arch['depth']}w{arch['embed_dim']}"

    @staticmethod
    def patch_size(image_size: int) -> int:
        """16-px patches from 128 px up; smaller images keep an 8x8 grid (32 px -> 4-px patches)."""
        patch = 16 if image_size >= 128 else max(2, image_size // 8)
        if image_size <= 0 or image_size % patch:
            raise ValueError(f"ViT image_size {image_size} is not divisible by its patch size {patch}")
        return patch

    def build(self, arch: Mapping[str, Any], n_classes: int, image_size: int) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=image_size,
            patch_size=self.patch_size(image_size),
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=arch["num_heads"],
            num_classes=n_classes,
        )

    def timm_name(self, arch: Mapping[str, Any]) -> str | None:
        name = self.canonical(arch)
        return self.named[name][2] if name in self.named else None

    def adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Resample the patch kernel (FlexiViT pseudo-inverse) and the position grid to `model`'s."""
        from timm.layers import resample_abs_pos_embed, resample_patch_embed

        state = dict(state)
        own = model.state_dict()
        kernel = state.get("patch_embed.proj.weight")
        target = own["patch_embed.proj.weight"]
        if kernel is not None and kernel.shape[:2] == target.shape[:2] and kernel.shape != target.shape:
            state["patch_embed.proj.weight"] = resample_patch_embed(kernel, list(target.shape[-2:]))
        posemb, grid = state.get("pos_embed"), own["pos_embed"]
        if posemb is not None and posemb.shape[-1] == grid.shape[-1] and posemb.shape != grid.shape:
            state["pos_embed"] = resample_abs_pos_embed(
                posemb, list(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens
            )
        return state


FAMILIES.add("resnet", ResNetFamily())
FAMILIES.add("vit", ViTFamily())


@dataclass(frozen=True)
class ModelSize:
    """One rung of the ladder: its canonical id, its architecture and its ImageNet counterpart."""

    id: str
    family: str
    size: str
    arch: Mapping[str, Any] = field(hash=False)
    timm_name: str | None
    pretrained_image_size: int
    pretrained_mean: tuple[float, float, float]
    pretrained_std: tuple[float, float, float]


@functools.cache
def resolve(model_id: str) -> ModelSize:
    """Parse `<family>-<size>`; unknown family -> UnknownNameError, bad size -> ValueError."""
    family_name, _, size = model_id.partition("-")
    family = FAMILIES.get(family_name)
    try:
        arch = family.parse(size)
    except ValueError as exc:
        ladder = ", ".join(f"{family_name}-{s}" for s in family.ladder)
        raise ValueError(
            f"bad {family_name} size {size!r} in {model_id!r}: {exc}. "
            f"Grammar: {family_name}-{family.grammar}. Ladder: {ladder}"
        ) from None
    timm_name = family.timm_name(arch)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if timm_name is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(timm_name)
        if cfg is not None:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
    canonical = family.canonical(arch)
    return ModelSize(
        id=f"{family_name}-{canonical}",
        family=family_name,
        size=canonical,
        arch=MappingProxyType(arch),
        timm_name=timm_name,
        pretrained_image_size=PRETRAINED_IMAGE_SIZE,
        pretrained_mean=mean,  # type: ignore[arg-type]
        pretrained_std=std,  # type: ignore[arg-type]
    )


def list_models(pattern: str | None = None) -> list[str]:
    """Ids of the named ladder (family by family, small -> large), filtered by an fnmatch pattern."""
    ids = [f"{name}-{size}" for name in FAMILIES for size in FAMILIES.get(name).ladder]
    return [i for i in ids if pattern is None or fnmatch.fnmatchcase(i, pattern)]


@functools.cache
def count_parameters(model_id: str, n_classes: int = 2, image_size: int = 224) -> int:
    """Parameter count of the model, built on the meta device (no memory, no init cost)."""
    import torch

    size = resolve(model_id)
    with torch.device("meta"):
        model = FAMILIES.get(size.family).build(size.arch, n_classes, image_size)
    return sum(p.numel() for p in model.parameters())


def create_model(
    model_id: str,
    n_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build `model_id` with an `n_classes` head; with `pretrained`, load ImageNet weights.

    Weights come from, in order: the `weights` file; ``$WGTUNE_WEIGHTS_DIR/<id>.safetensors|.pth``;
    timm's Hugging Face cache or hub (sizes with a `timm_name` only). The head is re-initialised
    when its shape differs; ViT patch and position embeddings are resampled to `image_size`.
    """
    size = resolve(model_id)
    if weights is not None and not pretrained:
        raise ValueError(f"{size.id}: a weights file was given but pretrained=False; set pretrained=True")
    family = FAMILIES.get(size.family)
    model = family.build(size.arch, n_classes, image_size)
    if pretrained:
        state, source = _pretrained_state(size, n_classes, weights)
        _load_fitting(model, family.adapt_state_dict(state, model), source, size.id)
    return model


def _pretrained_state(
    size: ModelSize, n_classes: int, weights: str | Path | None
) -> tuple[dict[str, torch.Tensor], str]:
    if weights is not None:
        return _read_state_dict(Path(weights)), str(weights)
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    for path in [Path(weights_dir, size.id + suffix) for suffix in WEIGHTS_SUFFIXES] if weights_dir else []:
        if path.is_file():
            return _read_state_dict(path), str(path)
    local = (
        f"pass a local state dict with `weights: <file.pth|.safetensors>`, or place it at "
        f"${WEIGHTS_DIR_ENV}/{size.id}.pth or .safetensors ({WEIGHTS_DIR_ENV} is "
        f"{repr(weights_dir) if weights_dir else 'unset'})"
    )
    if size.timm_name is None:
        raise PretrainedWeightsError(
            f"no ImageNet weights exist for {size.id} (no library ships it); {local}"
        )
    return _hub_state(size.timm_name, n_classes, local, size.id)


def _hub_state(
    timm_name: str, n_classes: int, local: str, model_id: str
) -> tuple[dict[str, torch.Tensor], str]:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    # Read a cached file ourselves: with the hub unreachable, hf_hub_download retries ~45 s first.
    for filename in ("model.safetensors", "pytorch_model.bin") if hub_id else ():
        cached = try_to_load_from_cache(hub_id, cfg.hf_hub_filename or filename)
        if isinstance(cached, str):
            return _read_state_dict(Path(cached)), f"{cached} (timm {timm_name!r})"
    reason = _hub_unreachable()
    if reason is None:
        try:
            hub_model = timm.create_model(timm_name, pretrained=True, num_classes=n_classes)
        except Exception as exc:  # noqa: BLE001 - network, hub and format errors all end the same way
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return hub_model.state_dict(), f"the Hugging Face hub ({hub_id or timm_name})"
    raise PretrainedWeightsError(
        f"cannot load ImageNet weights for {model_id}: timm model {timm_name!r} ({hub_id}) is not in the "
        f"local Hugging Face cache and the hub is unreachable ({reason}). Instead, {local}."
    )


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None once a TCP connection succeeds; never slow."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"cannot connect to {url.hostname}:{port}: {exc}"
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many types; one error names the file
        raise PretrainedWeightsError(f"cannot read weights file {path}: {exc}") from exc
    # Training checkpoints often wrap the weights; unwrap the common layouts.
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise PretrainedWeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _load_fitting(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_id: str) -> None:
    """Load `state` into `model`; only the classifier head may differ, anything else is an error."""
    classifier = model.get_classifier()  # type: ignore[operator]
    prefix = next(name for name, module in model.named_modules() if module is classifier)
    head = {f"{prefix}.{key}" for key in classifier.state_dict()}
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k in head and k in own and v.shape != own[k].shape)}
    # BatchNorm's step counter is absent from some published checkpoints and unused in eval.
    missing = [k for k in own if k not in state and k not in head and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)}!={tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]  # fmt: skip
    found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong}
    if problems := [f"{label} {len(keys)}: {', '.join(keys[:3])}" for label, keys in found.items() if keys]:
        raise PretrainedWeightsError(
            f"weights from {source} do not fit {model_id} (wrong architecture?): {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=False)
