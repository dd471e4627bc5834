"""Where pretrained weights come from: the `weights` trial setting, resolved to one local file.

The setting names a source:

  (unset)                        ``$WGTUNE_WEIGHTS_DIR/<model id>.safetensors|.pth``, else timm's default tag
  ``timm`` | ``timm:<tag>``      timm's published weights of the size's architecture, e.g. ``timm:a1_in1k``,
  ``timm:<arch>.<tag>``          ``timm:augreg_in21k_ft_in1k`` or ``timm:vit_large_patch32_384.orig_in21k_ft_in1k``
  ``torchvision`` | ``torchvision:<NAME>``   torchvision's weights (bare: its ``DEFAULT``), e.g.
  ``torchvision:<arch>.<NAME>``  ``torchvision:IMAGENET1K_V1``, loaded into the timm model by key mapping
  ``<file>.pth|.safetensors``    a local state dict (also written ``file:<path>``)

Every source is read from disk: timm's from the Hugging Face cache, torchvision's from the torch hub
cache (``$TORCH_HOME/hub/checkpoints``), either also from ``$WGTUNE_WEIGHTS_DIR`` under the file name
the library uses (``<arch>.<tag>.safetensors|.pth`` for timm, the download's file name for
torchvision). Only a timm source may fall back to the hub at trial time, and only when the hub
answers (`create_model`); `find_weights(..., allow_download=False)` is the check a grid runs first.

A resolved source is recorded as a plain string (`WeightsSource.spec`): ``timm:resnet18.a1_in1k``,
``torchvision:resnet18.IMAGENET1K_V1`` or ``file:/abs/path.pth``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trainables.models import ModelSize

__all__ = [
    "PretrainedWeightsError", "WEIGHTS_DIR_ENV", "WeightsSource",
    "find_weights", "load_fitting", "normalisation", "read_weights",
]  # fmt: skip

WEIGHTS_DIR_ENV = "WGTUNE_WEIGHTS_DIR"
WEIGHTS_SUFFIXES = (".safetensors", ".pth")
HUB_PROBE_TIMEOUT_S = 3.0
LIBRARIES = ("timm", "torchvision")
GRAMMAR = "timm[:<tag>], torchvision[:<NAME>] or a .pth/.safetensors file"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be found, read, or do not fit the architecture."""


@dataclass(frozen=True)
class WeightsSource:
    """One resolved source of weights: what it is (`spec`) and where it is."""

    spec: str
    """The source as recorded on a cell: ``timm:<arch>.<tag>``, ``torchvision:<arch>.<NAME>``, ``file:<path>``."""
    library: str
    """``timm``, ``torchvision`` or ``file``: torchvision's keys are mapped onto timm's model."""
    path: Path | None
    """The local file; None only for a timm source not cached, which the hub may serve at trial time."""
    hub_id: str | None = None
    timm_name: str | None = None


def find_weights(
    size: ModelSize,
    weights: str | Path | None,
    *,
    available: Callable[[], str],
    allow_download: bool = False,
) -> WeightsSource:
    """Resolve `weights` for `size` to a source, reading only directory entries (no network, no model).

    `available()` says which sizes of the family have published weights (for the error message).
    With `allow_download`, a timm source that is not cached resolves to the hub (path None).
    Raises `PretrainedWeightsError` naming the model, the weights asked for, where it looked, and
    what exists instead.
    """
    library, name = _parse(weights)
    asked = f"weights: {weights}" if weights not in (None, "") else "the default weights"
    if library == "file":
        return _file_source(Path(name).expanduser())
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if library == "default":
        for path in [Path(weights_dir, size.id + suffix) for suffix in WEIGHTS_SUFFIXES] if weights_dir else []:
            if path.is_file():
                return _file_source(path)
    if (library == "torchvision" and not size.torchvision_name) or (library != "torchvision" and not size.timm_names):
        who = "no library publishes weights" if library == "default" else f"{library} publishes none"
        raise PretrainedWeightsError(
            f"no ImageNet weights exist for {size.id} ({asked}): {who} for this architecture. "
            f"{available()}. Otherwise {_local_hint(size.id, weights_dir)}"
        )
    if library == "torchvision":
        return _torchvision_source(size, name, asked, weights_dir)
    return _timm_source(size, name, asked, weights_dir, allow_download, default=library == "default")


def normalisation(size: ModelSize, weights: str | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std the weights were trained with; reads no file (files: the size's default)."""
    library, name = _parse(weights)
    if library == "timm" and size.timm_names:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(_timm_arch_tag(size, name, f"{size.id} (weights: {weights})"))
        return tuple(cfg.mean), tuple(cfg.std)
    if library == "torchvision" and size.torchvision_name:
        transform = _torchvision_weights(size, name, f"{size.id} (weights: {weights})").transforms()
        return tuple(transform.mean), tuple(transform.std)
    return size.pretrained_mean, size.pretrained_std


def read_weights(source: WeightsSource, n_classes: int, model_id: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of `source` and a description of where it came from (for messages).

    A timm source that is not cached is fetched through timm when the hub answers within seconds.
    """
    if source.path is not None:
        return _read_state_dict(source.path), f"{source.path} ({source.spec})"
    return _hub_state(source, n_classes, model_id)


def _parse(weights: str | Path | None) -> tuple[str, str | None]:
    """(library, name): ('default', None), ('timm'|'torchvision', name or None) or ('file', path)."""
    if weights is None or weights == "":
        return "default", None
    text = str(weights)
    for library in LIBRARIES:
        if text == library or text.startswith(library + ":"):
            return library, text[len(library) + 1 :] or None
    return "file", text.removeprefix("file:")


def _local_hint(model_id: str, weights_dir: str | None) -> str:
    return (
        f"pass a local state dict with `weights: <file.pth|.safetensors>`, or place it at "
        f"${WEIGHTS_DIR_ENV}/{model_id}.pth or .safetensors ({WEIGHTS_DIR_ENV} is "
        f"{repr(weights_dir) if weights_dir else 'unset'})"
    )


def _file_source(path: Path) -> WeightsSource:
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file {path} does not exist (weights takes {GRAMMAR})")
    return WeightsSource(f"file:{path.resolve()}", "file", path)


def _in_weights_dir(weights_dir: str | None, *names: str) -> Path | None:
    for name in names if weights_dir else ():
        if Path(weights_dir, name).is_file():  # type: ignore[arg-type]
            return Path(weights_dir, name)  # type: ignore[arg-type]
    return None


def _timm_arch_tag(size: ModelSize, name: str | None, where: str) -> str:
    """``<arch>.<tag>`` of a timm setting: the tag looked up across the size's timm architectures."""
    from timm.models import get_pretrained_cfg, list_pretrained, split_model_name_tag

    arch, tag = split_model_name_tag(name) if name and "." in name else (None, name)
    archs = size.timm_names if arch is None else (arch,)
    if arch is not None and arch not in size.timm_names:
        raise PretrainedWeightsError(
            f"{where}: timm architecture {arch!r} is not {size.id}'s; its timm architectures: {', '.join(size.timm_names)}"
        )
    if tag is None:
        return f"{archs[0]}.{get_pretrained_cfg(archs[0]).tag}"
    for candidate in archs:
        if f"{candidate}.{tag}" in list_pretrained(f"{candidate}.*"):
            return f"{candidate}.{tag}"
    tags = [name for a in size.timm_names for name in list_pretrained(f"{a}.*")]
    raise PretrainedWeightsError(
        f"{where}: timm has no tag {tag!r} for {', '.join(archs)}. Tags that exist: {', '.join(tags)}"
    )


def _timm_source(
    size: ModelSize, name: str | None, asked: str, weights_dir: str | None, allow_download: bool, default: bool
) -> WeightsSource:
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    full = _timm_arch_tag(size, name, f"{size.id} ({asked})")
    cfg = get_pretrained_cfg(full)
    hub_id = cfg.hf_hub_id
    found = _in_weights_dir(weights_dir, *(full + suffix for suffix in WEIGHTS_SUFFIXES))
    # Read a cached file ourselves: with the hub unreachable, hf_hub_download retries ~45 s first.
    for filename in (cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin") if hub_id and not found else ():
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str):
            found = Path(cached)
            break
    source = WeightsSource(f"timm:{full}", "timm", found, hub_id, full)
    if found is not None or allow_download and hub_id:
        return source
    cache = Path(constants.HF_HUB_CACHE, f"models--{hub_id.replace('/', '--')}") if hub_id else None
    places = [str(cache)] if cache else []
    names = [size.id, full] if default else [full]
    places.append(f"{' and '.join(f'${WEIGHTS_DIR_ENV}/{n}.pth|.safetensors' for n in names)} "
                  f"({WEIGHTS_DIR_ENV} is {weights_dir or 'unset'})")
    raise PretrainedWeightsError(
        f"{size.id} ({asked}): timm weights {full!r} are not on this machine; looked in {' and '.join(places)}. "
        f"Fetch them where there is internet with  python -c \"import timm; timm.create_model('{full}', "
        f"pretrained=True)\"  and copy {cache or 'the file'} into the Hugging Face cache here "
        f"(or the file into ${WEIGHTS_DIR_ENV})."
    )


def _torchvision_weights(size: ModelSize, name: str | None, where: str) -> Any:
    from torchvision.models import get_model_weights

    arch, _, tag = (name or "DEFAULT").rpartition(".")
    if arch and arch != size.torchvision_name:
        raise PretrainedWeightsError(
            f"{where}: torchvision architecture {arch!r} is not {size.id}'s; its torchvision model is {size.torchvision_name!r}"
        )
    enum = get_model_weights(size.torchvision_name)
    try:
        return enum[tag]
    except KeyError:
        names = [n for n, member in enum.__members__.items() if n == member.name]
        raise PretrainedWeightsError(
            f"{where}: torchvision has no weights {tag!r} for {size.torchvision_name}. "
            f"Weights that exist: {', '.join(names)} (or DEFAULT)"
        ) from None


def _torchvision_source(size: ModelSize, name: str | None, asked: str, weights_dir: str | None) -> WeightsSource:
    import torch

    weights = _torchvision_weights(size, name, f"{size.id} ({asked})")
    filename = Path(urlparse(weights.url).path).name
    cache = Path(torch.hub.get_dir(), "checkpoints", filename)
    found = cache if cache.is_file() else _in_weights_dir(weights_dir, filename)
    spec = f"torchvision:{size.torchvision_name}.{weights.name}"
    if found is None:
        raise PretrainedWeightsError(
            f"{size.id} ({asked}): torchvision weights {spec.split(':')[1]!r} are not on this machine; looked for "
            f"{cache} and ${WEIGHTS_DIR_ENV}/{filename} ({WEIGHTS_DIR_ENV} is {weights_dir or 'unset'}). Fetch "
            f"them where there is internet with  python -c \"import torchvision; torchvision.models.get_weight("
            f"'{type(weights).__name__}.{weights.name}').get_state_dict()\"  and copy {filename} to either place."
        )
    return WeightsSource(spec, "torchvision", found)


def _hub_state(source: WeightsSource, n_classes: int, model_id: str) -> tuple[dict[str, torch.Tensor], str]:
    import timm

    reason = _hub_unreachable()
    if reason is None:
        try:
            hub_model = timm.create_model(source.timm_name, pretrained=True, num_classes=n_classes)
        except Exception as exc:  # noqa: BLE001 - network, hub and format errors all end the same way
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return hub_model.state_dict(), f"the Hugging Face hub ({source.hub_id})"
    raise PretrainedWeightsError(
        f"cannot load ImageNet weights for {model_id}: timm model {source.timm_name!r} ({source.hub_id}) is not in "
        f"the local Hugging Face cache and the hub is unreachable ({reason}). "
        f"Instead, {_local_hint(model_id, os.environ.get(WEIGHTS_DIR_ENV))}."
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


def load_fitting(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_id: str) -> None:
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
