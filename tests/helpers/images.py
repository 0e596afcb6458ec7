"""Class folders of small PNG/JPEG images of mixed sizes whose colour is their class (a learnable image dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 20)}
SIZES = [(24, 24), (40, 18), (17, 33), (64, 48), (9, 12)]  # width x height


def make_folder(root: Path, per_class: int = 5) -> Path:
    """Class folders of plain-colour images (with noise), mixed sizes, PNG and JPEG; the colour is the class."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = SIZES[i % len(SIZES)]
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:03d}.{suffix}")
    return root
