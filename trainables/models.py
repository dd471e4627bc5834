"""The model size ladder: `<family>-<size>` ids, one size table and one timm builder per family.

torch and timm are imported inside the functions that need them, so resolving and listing ids
(grid validation, `wgtune status`) does not pay their multi-second import. Where pretrained
weights come from (timm tags, torchvision, local files) is `trainables.pretrained`.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from trainables.pretrained import (
    WEIGHTS_DIR_ENV,
    PretrainedWeightsError,
    find_weights,
    load_fitting,
    normalisation,
    read_weights,
)
from trainables.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FAMILIES", "ModelFamily", "ModelSize", "PretrainedWeightsError", "WEIGHTS_DIR_ENV",
    "check_pretrained", "count_parameters", "create_model", "list_models", "pretrained_normalisation", "resolve",
]  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_IMAGE_SIZE = 224


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
    def timm_names(self, arch: Mapping[str, Any]) -> tuple[str, ...]:
        """timm's models of identical architecture (up to input resolution) with weights; default first."""

    def torchvision_name(self, arch: Mapping[str, Any]) -> str | None:
        """torchvision's model of identical architecture, whose weights `from_torchvision` maps; None by default."""
        return None

    def from_torchvision(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's state dict in this family's (timm's) key names; identity by default."""
        return state

    def published_sizes(self) -> tuple[str, ...]:
        """Sizes whose architecture timm or torchvision publishes weights for, small -> large."""
        return ()

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
    # Depths at width 1 that are timm's resnet<depth> and torchvision's, with published weights.
    published_depths: ClassVar[tuple[int, ...]] = (18, 34, 50, 101, 152)
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

    def timm_names(self, arch: Mapping[str, Any]) -> tuple[str, ...]:
        return (f"resnet{arch['depth']}",) if self._standard(arch) else ()

    def torchvision_name(self, arch: Mapping[str, Any]) -> str | None:
        # torchvision's ResNet (v1.5: stride on the 3x3 conv) is timm's, key for key: no mapping needed.
        return f"resnet{arch['depth']}" if self._standard(arch) else None

    def published_sizes(self) -> tuple[str, ...]:
        return tuple(str(depth) for depth in self.published_depths)

    def _standard(self, arch: Mapping[str, Any]) -> bool:
        # timm's resnet10t/14t/26 differ (tiered stem, bottlenecks), so only these are equal.
        return arch["width"] == 1 and arch["depth"] in self.published_depths


class ViTFamily(ModelFamily):
    """timm's VisionTransformer: named sizes or `d<depth>w<width>` (one head per 64 dims), `-p<patch>`.

    The patch size is the side of a patch from 128 px up (default 16, as ViT-B/16); smaller images
    keep the grid they have at 128 px (16-px patches: 8x8), so `vit-base-p32` at 32 px has 8-px patches.
    """

    grammar = "(tiny|small|base|large|d<depth>w<width>)[-p<patch>] (width a multiple of 64, patch default 16)"
    named: ClassVar[Mapping[str, tuple[int, int]]] = {
        "tiny": (12, 192),
        "small": (12, 384),
        "base": (12, 768),
        "large": (24, 1024),
    }
    # (named size, patch): timm's models of that architecture, 224 px first, then the 384-px ones that
    # differ only in the position grid (resampled on loading). Tested against timm's registry.
    timm_models: ClassVar[Mapping[tuple[str, int], tuple[str, ...]]] = {
        ("tiny", 16): ("vit_tiny_patch16_224", "vit_tiny_patch16_384"),
        ("small", 16): ("vit_small_patch16_224", "vit_small_patch16_384"),
        ("small", 32): ("vit_small_patch32_224", "vit_small_patch32_384"),
        ("base", 8): ("vit_base_patch8_224",),
        ("base", 16): ("vit_base_patch16_224", "vit_base_patch16_384"),
        ("base", 32): ("vit_base_patch32_224", "vit_base_patch32_384"),
        ("large", 16): ("vit_large_patch16_224", "vit_large_patch16_384"),
        ("large", 32): ("vit_large_patch32_224", "vit_large_patch32_384"),
    }
    # torchvision's ViTs (the original study, kylrth/worst_group_scale run.py, used vit_b_32 and vit_l_32).
    torchvision_models: ClassVar[Mapping[tuple[str, int], str]] = {
        ("base", 16): "vit_b_16", ("base", 32): "vit_b_32", ("large", 16): "vit_l_16", ("large", 32): "vit_l_32",
    }  # fmt: skip
    ladder = ("tiny", "small", "base", "base-p32", "large", "large-p32")
    default_patch: ClassVar[int] = 16
    grid_from: ClassVar[int] = 128
    _pattern = re.compile(r"(?:(tiny|small|base|large)|d(\d+)w(\d+))(?:-p(\d+))?")

    def parse(self, size: str) -> dict[str, Any]:
        match = self._pattern.fullmatch(size)
        if match is None:
            raise ValueError(f"does not match {self.grammar}")
        depth, width = self.named[match[1]] if match[1] else (int(match[2]), int(match[3]))
        patch = int(match[4]) if match[4] else self.default_patch
        if depth < 1 or width < 64 or width % 64:
            raise ValueError(f"needs depth >= 1 and width divisible by 64 (heads = width / 64), got {size!r}")
        if not 2 <= patch <= self.grid_from:
            raise ValueError(f"patch size must be in 2..{self.grid_from}, got {patch} in {size!r}")
        return {"embed_dim": width, "depth": depth, "num_heads": width // 64, "patch_size": patch}

    def canonical(self, arch: Mapping[str, Any]) -> str:
        body = self._name(arch) or f"d{arch['depth']}w{arch['embed_dim']}"
        return body + ("" if arch["patch_size"] == self.default_patch else f"-p{arch['patch_size']}")

    def _name(self, arch: Mapping[str, Any]) -> str | None:
        return next((n for n, dims in self.named.items() if dims == (arch["depth"], arch["embed_dim"])), None)

    @classmethod
    def patch_size(cls, image_size: int, patch: int = 16) -> int:
        """`patch`-px patches from 128 px up; smaller images keep the 128-px grid (16 -> 8x8: 32 px -> 4-px patches)."""
        effective = patch if image_size >= cls.grid_from else max(2, image_size // max(1, cls.grid_from // patch))
        if image_size <= 0 or effective < 1 or image_size % effective:
            raise ValueError(f"ViT image_size {image_size} is not divisible by its patch size {effective}")
        return effective

    def build(self, arch: Mapping[str, Any], n_classes: int, image_size: int) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=image_size,
            patch_size=self.patch_size(image_size, arch["patch_size"]),
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=arch["num_heads"],
            num_classes=n_classes,
        )

    def timm_names(self, arch: Mapping[str, Any]) -> tuple[str, ...]:
        return self.timm_models.get((self._name(arch), arch["patch_size"]), ())  # type: ignore[arg-type]

    def torchvision_name(self, arch: Mapping[str, Any]) -> str | None:
        return self.torchvision_models.get((self._name(arch), arch["patch_size"]))  # type: ignore[arg-type]

    def published_sizes(self) -> tuple[str, ...]:
        keys = sorted(self.timm_models.keys() | self.torchvision_models.keys(),
                      key=lambda k: (list(self.named).index(k[0]), k[1]))  # fmt: skip
        return tuple(name + ("" if patch == self.default_patch else f"-p{patch}") for name, patch in keys)

    def from_torchvision(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's VisionTransformer keys -> timm's (same layers: pre-norm blocks, fused qkv, LayerNorm eps 1e-6)."""
        mapped = {}
        for key, value in state.items():
            new = key
            for pattern, replacement in self._torchvision_keys:
                new = re.sub(pattern, replacement, new)
            mapped[new] = value
        return mapped

    _torchvision_keys: ClassVar[tuple[tuple[str, str], ...]] = (
        (r"^class_token$", "cls_token"),
        (r"^conv_proj\.", "patch_embed.proj."),
        (r"^encoder\.pos_embedding$", "pos_embed"),
        (r"^encoder\.ln\.", "norm."),
        (r"^heads\.head\.", "head."),
        (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
        (r"\.ln_1\.", ".norm1."),
        (r"\.ln_2\.", ".norm2."),
        (r"\.self_attention\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
        (r"\.self_attention\.out_proj\.", ".attn.proj."),
        # torchvision >= 0.13 names the MLP's linears mlp.0 / mlp.3; older files mlp.linear_1 / linear_2.
        (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),
        (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
    )

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
    timm_names: tuple[str, ...]
    torchvision_name: str | None
    pretrained_image_size: int

    @property
    def timm_name(self) -> str | None:
        """timm's model of this architecture at 224 px, whose default tag is the default weights."""
        return self.timm_names[0] if self.timm_names else None

    @property
    def pretrained_mean(self) -> tuple[float, float, float]:
        """Input mean of the default weights: timm's pretrained cfg, else ImageNet's."""
        return _default_normalisation(self.timm_name)[0]

    @property
    def pretrained_std(self) -> tuple[float, float, float]:
        """Input std of the default weights: timm's pretrained cfg, else ImageNet's."""
        return _default_normalisation(self.timm_name)[1]


@functools.cache
def _default_normalisation(timm_name: str | None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of timm's default tag of `timm_name`, read on first use: timm imports torch, which naming,
    validating and counting a grid's sizes never need."""
    if timm_name is None:
        return IMAGENET_MEAN, IMAGENET_STD
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    return (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else (IMAGENET_MEAN, IMAGENET_STD)  # type: ignore[return-value]


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
    timm_names = family.timm_names(arch)
    canonical = family.canonical(arch)
    return ModelSize(
        id=f"{family_name}-{canonical}",
        family=family_name,
        size=canonical,
        arch=MappingProxyType(arch),
        timm_names=timm_names,
        torchvision_name=family.torchvision_name(arch),
        pretrained_image_size=PRETRAINED_IMAGE_SIZE,
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
    """Build `model_id` with an `n_classes` head; with `pretrained`, load the weights `weights` names.

    `weights` is a source (`trainables.pretrained`): unset -> ``$WGTUNE_WEIGHTS_DIR/<id>.pth`` or
    timm's default tag; ``timm:<tag>``; ``torchvision:<NAME>``; or a local file. The head is
    re-initialised when its shape differs; ViT patch and position embeddings are resampled to `image_size`.
    """
    size = resolve(model_id)
    if weights is not None and not pretrained:
        raise ValueError(f"{size.id}: weights {str(weights)!r} were given but pretrained=False; set pretrained=True")
    family = FAMILIES.get(size.family)
    model = family.build(size.arch, n_classes, image_size)
    if pretrained:
        source = find_weights(size, weights, available=functools.partial(_published, size.family), allow_download=True)
        state, where = read_weights(source, n_classes, size.id)
        if source.library == "torchvision":
            state = family.from_torchvision(state)
        load_fitting(model, family.adapt_state_dict(state, model), where, size.id)
    return model


def check_pretrained(model_id: str, weights: str | None = None) -> str:
    """The weights source `create_model(model_id, ..., pretrained=True, weights=weights)` will load, as a string.

    For grid validation: reads directory entries only (no network, no model built), so a weights file
    must already be on this machine. Returns ``timm:<arch>.<tag>``, ``torchvision:<arch>.<NAME>`` or
    ``file:<path>``; raises `PretrainedWeightsError` naming the model, the weights asked for, where it
    looked, and which sizes or tags do have weights.
    """
    size = resolve(model_id)
    return find_weights(size, weights, available=functools.partial(_published, size.family)).spec


def pretrained_normalisation(model_id: str, weights: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std of the pretrained source `weights` names (a file: the size's default tag's)."""
    return normalisation(resolve(model_id), weights)


def _published(family_name: str) -> str:
    """Which sizes of a family timm / torchvision publish weights for, as a sentence."""
    sizes = [resolve(f"{family_name}-{s}") for s in FAMILIES.get(family_name).published_sizes()]
    listed = [f"{s.id} ({', '.join(lib for lib, has in (('timm', s.timm_names), ('torchvision', s.torchvision_name)) if has)})"
              for s in sizes]  # fmt: skip
    return f"{family_name} sizes with published weights: {', '.join(listed) or 'none'}"
