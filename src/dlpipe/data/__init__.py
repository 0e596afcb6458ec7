"""Dataset registry, preparation (splits, normalisation) and in-memory data access."""

from importlib import import_module

from dlpipe.data.base import Dataset, InputKind
from dlpipe.data.registry import DATASETS, DatasetInfo, get_dataset_info, load_dataset

for _module in ("sklearn_sets", "csv_set", "torchvision_sets", "series_sets", "image_folder"):
    import_module(f"dlpipe.data.{_module}")

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "InputKind", "get_dataset_info", "load_dataset"]
