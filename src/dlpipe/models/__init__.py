"""Architecture registry; importing this package registers every family, in teaching order."""

from importlib import import_module

from dlpipe.models.registry import ARCHITECTURES, Architecture, build_model, get_architecture

FAMILIES = ("dense", "cnn", "cnn1d", "recurrent", "transformer", "transfer", "autoencoder", "gan")
for _family in FAMILIES:
    import_module(f"dlpipe.models.{_family}")

__all__ = ["ARCHITECTURES", "Architecture", "build_model", "get_architecture"]
