"""fetch: materialise the chosen dataset under data/raw (dataset.npz + dataset.json with its sha256).

Dataset files that must be downloaded (MNIST, CIFAR-10) are read from, and downloaded into, data/downloads/: DVC
deletes data/raw, a stage output, before every fetch, so nothing a user copies or downloads is kept there."""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe.config import DataParams, Params
from dlpipe.data import load_dataset
from dlpipe.data.store import save_dataset
from dlpipe.paths import ProjectPaths

log = logging.getLogger(__name__)


def run(params: Params, paths: ProjectPaths) -> dict:
    paths.raw.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(params.data.name, paths.downloads, _rooted(params, paths))
    meta = save_dataset(ds, paths.raw)
    log.info(
        "fetched %s: %d samples, shape %s, %d classes, sha256 %s",
        ds.name,
        len(ds),
        ds.input_shape,
        ds.num_classes,
        meta["sha256"][:12],
    )
    return meta


def _rooted(params: Params, paths: ProjectPaths) -> DataParams:
    """data params with a relative data.csv.path and data.images.path resolved against the project root (not the
    working directory)."""
    update = {}
    for key in ("csv", "images"):
        section = getattr(params.data, key)
        if section.path and not Path(section.path).is_absolute():
            update[key] = section.model_copy(update={"path": str(paths.root / section.path)})
    return params.data.model_copy(update=update)
