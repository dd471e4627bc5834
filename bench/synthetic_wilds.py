"""A Waterbirds-format data folder of photo-like JPEGs, for benchmarks of the image path.

`write_waterbirds(root, counts)` writes `<root>/waterbirds_v1.0/` exactly as the WILDS release
lays it out (RELEASE_v1.0.txt, metadata.csv, species folders of JPEGs), so the real loader reads
it. Images are sized like Waterbirds' (CUB birds pasted on Places scenes: about 500 px wide,
330-500 px high) and saved as PIL saves them in the Waterbirds generation script (JPEG quality
75), with multi-scale noise as content so that their files (~20 KB) and decoding cost (~5 ms
each on one core) are a photo's, not those of a flat colour.
"""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
WIDTH = 500
HEIGHTS = (330, 500)
QUALITY = 75
# (pixels per noise cell, amplitude in grey levels): coarse shapes down to pixel texture.
OCTAVES = ((64, 90.0), (16, 50.0), (4, 25.0), (1, 12.0))


def photo_like(seed: int, width: int = WIDTH, heights: tuple[int, int] = HEIGHTS) -> np.ndarray:
    """An H×W×3 uint8 image of multi-scale noise around a random base colour, H drawn from `heights`."""
    rng = np.random.default_rng(seed)
    height = int(rng.integers(*heights))
    image = np.zeros((height, width, 3), np.float32)
    for cell, amplitude in OCTAVES:
        small = rng.normal(size=(max(2, height // cell), max(2, width // cell), 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
        image += (smooth - 128.0) * amplitude / 128.0
    return np.clip(image + rng.integers(60, 200, 3), 0, 255).astype(np.uint8)


def _write(job: tuple[Path, int, int, tuple[int, int]]) -> int:
    path, seed, width, heights = job
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like(seed, width, heights)).save(path, format="JPEG", quality=QUALITY)
    return path.stat().st_size


def write_waterbirds(root: Path, counts: Mapping[str, int], seed: int = 0, workers: int = 2,
                     width: int = WIDTH, heights: tuple[int, int] = HEIGHTS) -> int:
    """Write the folder with `counts[split]` images per split (groups in turn); returns the JPEG bytes.

    `width` and `heights` (a range) give the image size: Waterbirds' by default.
    """
    data_dir = Path(root) / "waterbirds_v1.0"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "RELEASE_v1.0.txt").write_text("v1.0\n")
    jobs, rows = [], []
    img_id = 0
    for split in SPLITS:
        for k in range(counts[split]):
            img_id += 1
            place, y = divmod(k % 4, 2)  # every group in every split
            species = ("094.White_breasted_Nuthatch", "045.Northern_Fulmar")[y]
            filename = f"{species}/{species.split('.', 1)[1]}_{img_id:05d}.jpg"
            jobs.append((data_dir / filename, seed * 1_000_003 + img_id, width, heights))
            rows.append([img_id, filename, y, SPLITS.index(split), place, f"/x/place/{img_id:08d}.jpg"])
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        total = sum(pool.map(_write, jobs, chunksize=16))
    with open(data_dir / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        writer.writerows(rows)
    return total
