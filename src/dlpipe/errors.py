"""The dlpipe exception hierarchy.

Stages and the CLI turn these into one-line messages: `BadInputError` (and subclasses) exit 2, any other
`DlpipeError` exits 1. A traceback is only ever shown for a bug.
"""


class DlpipeError(Exception):
    """Base class of every error dlpipe raises on purpose."""

    exit_code = 1


class BadInputError(DlpipeError):
    """The user gave something dlpipe cannot use: a params key, a file, a shape."""

    exit_code = 2


class ConfigError(BadInputError):
    """params.yaml (or an override) is invalid. The message names the dotted key and what is allowed."""


class DataError(BadInputError):
    """A dataset file is missing, malformed or inconsistent."""


class OutputNotWritable(BadInputError):
    """An output folder cannot be written (permissions, read-only file system, no space)."""


class DatasetUnavailableError(DlpipeError):
    """A dataset could not be downloaded (no network, server down)."""


class ModelError(DlpipeError):
    """A model could not be built (missing weights file, no network for pretrained weights)."""


class RegistryError(DlpipeError):
    """The MLflow model registry is not in the state an operation needs."""
