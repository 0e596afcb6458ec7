"""The architecture registry: name -> params schema, accepted input kinds, builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from pydantic import BaseModel
from torch import nn

from dlpipe.data.base import Features
from dlpipe.errors import ConfigError

# build(params, input_shape, num_classes) -> nn.Module; a family registered with `features=True` also gets
# `features=` (the tabular columns: names, categorical vocabularies; None for images)
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    params: type[BaseModel]
    kinds: frozenset[str]
    build: Builder
    description: str
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # default tune.spaces.<name>
    # The LightningModule that trains it, as "package.module:Class" (imported only when training; the default is
    # the shared classifier). A family with its own training (reconstruction, adversarial) names its module here.
    module: str = "dlpipe.training.module:Classifier"
    features: bool = False  # the builder takes `features=` (categorical columns of tabular data)

    def module_class(self) -> type:
        path, _, name = self.module.partition(":")
        return getattr(import_module(path), name)


ARCHITECTURES: dict[str, Architecture] = {}


def register(
    name: str,
    *,
    params: type[BaseModel],
    kinds: set[str],
    description: str,
    space: dict[str, dict[str, Any]] | None = None,
    module: str | None = None,
    features: bool = False,
) -> Callable[[Builder], Builder]:
    """Register `build(params, input_shape, num_classes) -> nn.Module` under `name`, with its default search space
    (`tune.spaces.<name>`: `model.<key>` / `train.<key>` -> an Optuna distribution, as in params.yaml). With
    `features`, the builder is also called with `features=` (a `data.base.Features` for tabular data, else None)."""

    def decorator(build: Builder) -> Builder:
        if name in ARCHITECTURES:
            raise RuntimeError(f"architecture {name!r} registered twice")
        extra: dict[str, Any] = {"module": module} if module else {}
        arch = Architecture(name, params, frozenset(kinds), build, description, space or {}, features=features, **extra)
        ARCHITECTURES[name] = arch
        return build

    return decorator


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}") from None


def build_model(
    name: str,
    params: BaseModel,
    input_shape: tuple[int, ...],
    num_classes: int,
    features: Features | None = None,
    vocabulary: int | None = None,
) -> nn.Module:
    """Build architecture `name` for inputs of `input_shape` (no batch dim) and `num_classes` outputs; `features`
    describes tabular columns (which hold category codes) to the families that read it. With `vocabulary` (text:
    how many token ids the tokenizer has) the input is token ids (1 x length): a token embedding of the family's
    `embedding_dim` feeds its sequence network, the same for every family that takes text."""
    arch = get_architecture(name)
    if not isinstance(params, arch.params):
        params = arch.params.model_validate(params)
    if vocabulary is not None:
        from dlpipe.models.common import TextNetwork, TokenEmbedding

        if "text" not in arch.kinds:
            raise ConfigError(f"architecture {name!r} takes {'/'.join(sorted(arch.kinds))} input, not text")
        dim = params.embedding_dim
        return TextNetwork(TokenEmbedding(vocabulary, dim), arch.build(params, (dim, input_shape[-1]), num_classes))
    if arch.features:
        return arch.build(params, tuple(input_shape), num_classes, features=features)
    return arch.build(params, tuple(input_shape), num_classes)
