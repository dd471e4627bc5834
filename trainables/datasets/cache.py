"""A decoded-image cache: a split's images, resized and cropped once, in one memory-mapped file.

Decoding JPEGs with PIL every epoch cannot keep a GPU busy, and every trial on a node would
decode the same images again. Instead, the first trial that needs a split decodes it once with
the data set's own deterministic eval transform (resize, crop; no normalisation) and writes the
pixels as uint8 NHWC into `<cache dir>/<name>.u8`. Every later trial maps that file: the page
cache then serves all trials on the node from one copy, and normalisation happens on the device
(`trainables.feed`).

File layout: a header of `HEADER_BYTES` (a magic line, then JSON: the key, shape, dtype, and a
CRC-32 per `CHUNK_BYTES` of pixels, padded with NULs), then the pixels. Building is locked
(`fcntl.flock` on a lock file beside it, so concurrent trials build once and the others wait) and
atomic (written under a temporary name, fsynced, renamed), so a file under the final name is
complete unless something damaged it later: opening checks the header, the key, the file size
(a truncated file) and the CRCs of the first and last chunks, and rebuilds on any mismatch.
`verify_cache` checks every chunk.

Deliberate choice: the cache holds the eval transform's output for every split, the training
split included. Random training augmentation therefore starts from the centre-cropped image
(applied on the device), not from the full JPEG as torchvision's RandomResizedCrop would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from trainables.datasets.base import GroupData, GroupSplit

CACHE_DIR_ENV = "WGTUNE_CACHE_DIR"
"""The cache folder; default `$XDG_CACHE_HOME/wgtune` (`~/.cache/wgtune`)."""
MAGIC = b"wgtune decoded-image cache v1\n"
HEADER_BYTES = 1 << 16  # page-aligned, so the pixels map at an aligned offset
CHUNK_BYTES = 64 << 20
BUILD_BATCH = 64
SUFFIX = ".u8"

_log = logging.getLogger(__name__)


class CacheUnsupported(ValueError):
    """A split whose transform cannot be split into a uint8 geometric part and a normalisation."""


class _Invalid(Exception):
    """A cache file that must be rebuilt; the message says why."""


@dataclass(frozen=True)
class CacheSource:
    """What a lazily decoded split offers to be cached.

    `key` identifies the pixels (data set, version, data folder, which examples, preprocessing);
    `images[i]` is example i after the geometric transform, as a uint8 HWC tensor (a map-style
    dataset, so DataLoader workers can decode in parallel); `mean` and `std` are the
    normalisation the transform would apply afterwards.
    """

    key: Mapping[str, Any]
    images: Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def name(self) -> str:
        """The file name: readable parts, then a digest of the whole key."""
        digest = hashlib.sha256(_canonical(self.key).encode()).hexdigest()[:16]
        parts = [str(self.key[k]) for k in ("dataset", "version", "split", "count") if k in self.key]
        return "-".join([*parts, digest]) + SUFFIX


class DecodedCache(Dataset):
    """An opened cache: `images` is a uint8 N×H×W×C tensor mapped from the file (read-only data;
    the mapping is private copy-on-write, so nothing can write back to the file).

    Also a map-style dataset yielding normalised float C×H×W tensors, like the split it replaces.
    The normalisation is the opener's (`mean`, `std`): the file holds pixels only, so trials with
    the same geometry and different normalisations (pretrained or not) share it.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], built_here: bool,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.path = path
        self.header = dict(header)
        self.built_here = built_here
        shape = tuple(header["shape"])
        self._array = np.memmap(path, dtype=np.uint8, mode="c", offset=HEADER_BYTES, shape=shape)
        self.images = torch.from_numpy(self._array)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index].permute(2, 0, 1).to(torch.float32).div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


def cache_dir() -> Path:
    """`$WGTUNE_CACHE_DIR`, else the user cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wgtune"


def open_cache(source: CacheSource, workers: int = 0, folder: Path | None = None) -> DecodedCache:
    """The cache of `source`, built first if missing or damaged (once per node: others wait).

    `workers`: DataLoader processes decoding during a build (0: in this process).
    """
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / source.name
    key = json.loads(_canonical(source.key))
    with contextlib.suppress(_Invalid):
        return DecodedCache(path, _checked_header(path, key), False, source.mean, source.std)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_suffix(".lock")):
        try:  # built by another process while this one waited for the lock
            return DecodedCache(path, _checked_header(path, key), False, source.mean, source.std)
        except _Invalid as why:
            if path.exists():
                _log.warning("decoded cache %s is unusable (%s): rebuilding it", path, why)
        _remove_stale(path)
        _build(source, path, key, workers)
    return DecodedCache(path, _checked_header(path, key), True, source.mean, source.std)


def verify_cache(path: Path) -> None:
    """Check every chunk's CRC of a cache file; raises ValueError naming the first bad one."""
    header = _read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=(_nbytes(header),))
    for k, expected in enumerate(header["crc32"]):
        if zlib.crc32(data[k * CHUNK_BYTES:(k + 1) * CHUNK_BYTES]) != expected:
            raise ValueError(f"decoded cache {path}: chunk {k} does not match its checksum")


def cache_splits(data: GroupData, workers: int = 0, folder: Path | None = None) -> GroupData:
    """`data` with every lazily decoded split that can be cached replaced by its opened cache.

    In-memory splits are kept; so is a split whose inputs offer no `cache_source(split)`.
    """
    splits = {}
    for name in ("train", "val", "test"):
        split: GroupSplit = getattr(data, name)
        offer: Callable[[str], CacheSource] | None = getattr(split.inputs, "cache_source", None)
        if split.in_memory or offer is None:
            splits[name] = split
            continue
        splits[name] = dataclasses.replace(split, inputs=open_cache(offer(name), workers, folder))
    return dataclasses.replace(data, **splits)


def decompose(transform: Any) -> tuple[Callable[[Any], Any], tuple[float, ...], tuple[float, ...]]:
    """Split a torchvision `Compose([geometric..., ToTensor(), Normalize(mean, std)])` into the
    geometric part (PIL -> PIL, deterministic) and the normalisation; `CacheUnsupported` otherwise."""
    from torchvision import transforms

    steps = list(getattr(transform, "transforms", ()))
    kinds = [type(t) for t in steps]
    if transforms.ToTensor not in kinds:
        raise CacheUnsupported(f"the transform has no ToTensor step to cache before: {transform!r}")
    at = kinds.index(transforms.ToTensor)
    tail = steps[at + 1:]
    if len(tail) > 1 or (tail and not isinstance(tail[0], transforms.Normalize)):
        raise CacheUnsupported(f"only a Normalize may follow ToTensor in a cached transform: {transform!r}")
    random = [t for t in steps[:at] if type(t).__name__.startswith("Random")]
    if random:
        raise CacheUnsupported(f"a cached transform must be deterministic; it has {random!r}")
    mean, std = (tuple(float(v) for v in tail[0].mean), tuple(float(v) for v in tail[0].std)) if tail else (
        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return transforms.Compose(steps[:at]), mean, std


class GeometricImages(Dataset):
    """`images[i]`: `decode(i)` through a PIL -> PIL transform, as a uint8 H×W×C tensor."""

    def __init__(self, decode: Callable[[int], Any], count: int, geometric: Callable[[Any], Any]) -> None:
        self.decode = decode
        self.count = count
        self.geometric = geometric

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        image = np.asarray(self.geometric(self.decode(index)), dtype=np.uint8)
        return torch.from_numpy(image.copy())


def _build(source: CacheSource, path: Path, key: Mapping[str, Any], workers: int) -> None:
    count = len(source.images)  # type: ignore[arg-type]
    first = source.images[0]
    shape = (count, *first.shape)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _log.info("building decoded cache %s: %d images of %s", path, count, tuple(first.shape))
    try:
        with open(tmp, "wb") as f:
            f.truncate(HEADER_BYTES + int(np.prod(shape)))
        data = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=HEADER_BYTES, shape=shape)
        at = 0
        # Its own generator: the loader's worker seed must not be drawn from the global RNG, which
        # would change the model's initialisation with whether this trial built the cache.
        loader = DataLoader(source.images, batch_size=BUILD_BATCH, num_workers=workers, generator=torch.Generator())
        for batch in loader:
            if tuple(batch.shape[1:]) != tuple(first.shape):
                raise ValueError(f"decoded cache {path}: images {at}.. have shape {tuple(batch.shape[1:])}, "
                                 f"not {tuple(first.shape)}: the transform must give one size")
            data[at:at + len(batch)] = batch.numpy()
            at += len(batch)
        if at != count:
            raise ValueError(f"decoded cache {path}: {at} images decoded, {count} expected")
        data.flush()
        flat = data.reshape(-1)
        header = {"key": key, "shape": list(shape), "dtype": "uint8", "layout": "NHWC", "chunk_bytes": CHUNK_BYTES,
                  "crc32": [zlib.crc32(flat[k:k + CHUNK_BYTES]) for k in range(0, flat.size, CHUNK_BYTES)]}
        del data, flat
        encoded = MAGIC + json.dumps(header).encode()
        if len(encoded) >= HEADER_BYTES:
            raise ValueError(f"decoded cache {path}: header of {len(encoded)} bytes does not fit")
        with open(tmp, "r+b") as f:
            f.write(encoded.ljust(HEADER_BYTES, b"\0"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: the final name only ever holds a complete file
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise _Invalid("missing") from None
    if len(raw) < HEADER_BYTES or not raw.startswith(MAGIC):
        raise _Invalid("no valid header")
    try:
        header = json.loads(raw[len(MAGIC):].rstrip(b"\0"))
    except ValueError:
        raise _Invalid("unreadable header") from None
    if size != HEADER_BYTES + _nbytes(header):
        raise _Invalid(f"{size} bytes where the header says {HEADER_BYTES + _nbytes(header)} (truncated?)")
    return header


def _checked_header(path: Path, key: Mapping[str, Any]) -> dict[str, Any]:
    """The header, once the key, size and first and last chunk checksums match."""
    header = _read_header(path)
    if header.get("key") != key:
        raise _Invalid("made for other data or preprocessing")
    crcs = header["crc32"]
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=(_nbytes(header),))
    for k in sorted({0, len(crcs) - 1}):
        if zlib.crc32(data[k * CHUNK_BYTES:(k + 1) * CHUNK_BYTES]) != crcs[k]:
            raise _Invalid(f"chunk {k} does not match its checksum")
    return header


def _nbytes(header: Mapping[str, Any]) -> int:
    return int(np.prod(header["shape"]))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("waiting for another process to build %s", lock_path.with_suffix(SUFFIX))
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale(path: Path) -> None:
    """Temporary files of builders that died (the lock is held: nobody else is building)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))
