"""The dataset registry: name -> input kind, description and loader.

Kinds are known without loading anything, so params validation can reject an architecture that cannot take a
dataset's input before any data is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlpipe.data.base import Dataset, InputKind
from dlpipe.errors import ConfigError

# load(root, data_params) -> Dataset; `root` is where downloaded or user-copied files are (data/downloads),
# data_params is config.DataParams.
Loader = Callable[[Path, Any], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: InputKind
    description: str
    load: Loader
    needs_network: bool = False
    # samples per class of the whole dataset as published (None: known only once read, a CSV): the check stage
    # refuses data.* params these counts cannot split before anything is fetched
    class_counts: tuple[int, ...] | None = None
    official_split: bool = False  # the data comes with an official test set (data.split: official)


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    kind: InputKind,
    description: str,
    *,
    needs_network: bool = False,
    class_counts: tuple[int, ...] | None = None,
    official_split: bool = False,
):
    def decorator(load: Loader) -> Loader:
        DATASETS[name] = DatasetInfo(name, kind, description, load, needs_network, class_counts, official_split)
        return load

    return decorator


def get_dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"data.name: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}") from None


def load_dataset(name: str, root: Path, data_params: Any) -> Dataset:
    """Load dataset `name` (from files under `root`, downloading into it what is missing)."""
    return get_dataset_info(name).load(Path(root), data_params)
