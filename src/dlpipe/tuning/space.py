"""Search spaces: `tune.space` (shared) and `tune.spaces.<arch>` as Optuna suggestions, and back to real values.

The space of an architecture is the shared space without the keys that architecture lacks (e.g. `model.dropout`
for the perceptron), updated with its own `tune.spaces.<arch>` entries. Keys are `train.<field>` or
`model.<field>` and name the Optuna parameters as they are.

Optuna's categorical choices must be None, bool, int, float or str. A choice that is a list or a mapping (e.g.
`model.hidden: [[64], [128, 64]]`) is offered to Optuna as its JSON text (`"[128, 64]"`) and decoded back to the
real value before training; `decode` turns a trial's Optuna params into the real `train.*` / `model.*` values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from dlpipe.config import Params, SearchDim, apply_overrides, tunable_keys
from dlpipe.errors import ConfigError

PRIMITIVE = (str, int, float, bool, type(None))


def encode_choice(value: Any) -> Any:
    """An Optuna-compatible categorical choice: primitives as they are, anything else as its JSON text."""
    return value if isinstance(value, PRIMITIVE) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: its dotted key, its range and where in params it was defined."""

    key: str
    dim: SearchDim
    where: str  # e.g. tune.spaces.mlp.model.hidden (for error messages)
    _decode: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def make(cls, key: str, dim: SearchDim, where: str) -> Dimension:
        decode: dict[Any, Any] = {}
        if dim.type == "categorical":
            for choice in dim.choices or []:
                enc = encode_choice(choice)
                if enc in decode:
                    raise ConfigError(f"{where}.choices: {choice!r} appears more than once")
                decode[enc] = choice
        elif dim.type == "int":
            assert dim.low is not None and dim.high is not None
            for name, value in (("low", dim.low), ("high", dim.high), ("step", dim.step)):
                if value is not None and float(value) != int(value):
                    raise ConfigError(f"{where}.{name}: int dimensions need whole numbers (got {value!r})")
            if dim.log and dim.step not in (None, 1):
                raise ConfigError(f"{where}: log scale and step cannot be combined (Optuna); drop one of them")
        elif dim.log and dim.step is not None:
            raise ConfigError(f"{where}: log scale and step cannot be combined (Optuna); drop one of them")
        if dim.step is not None and dim.step <= 0:
            raise ConfigError(f"{where}.step: must be > 0 (got {dim.step!r})")
        return cls(key, dim, where, decode)

    @property
    def choices(self) -> list[Any]:
        """The Optuna-side (encoded) categorical choices."""
        return list(self._decode)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask `trial` for this dimension; returns the Optuna-side value (decode it with `decode`)."""
        d = self.dim
        if d.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        assert d.low is not None and d.high is not None
        if d.type == "int":
            return trial.suggest_int(self.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        return trial.suggest_float(self.key, float(d.low), float(d.high), step=d.step, log=d.log)

    def decode(self, value: Any) -> Any:
        if self.dim.type == "categorical":
            return self._decode[value]
        return int(value) if self.dim.type == "int" else float(value)

    def probes(self) -> list[Any]:
        """Values that must all be valid for this key: every choice, or the bounds and the midpoint."""
        d = self.dim
        if d.type == "categorical":
            return list(d.choices or [])
        assert d.low is not None and d.high is not None
        if d.type == "int":
            return [int(d.low), int(d.high)]
        mid = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
        return [float(d.low), float(d.high), mid]

    def to_dict(self) -> dict[str, Any]:
        return self.dim.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters tuned for one architecture, sorted by key."""

    arch: str
    dims: dict[str, Dimension]

    @classmethod
    def for_arch(cls, params: Params, arch: str) -> SearchSpace:
        """Shared `tune.space` (keys `arch` has) updated with `tune.spaces.<arch>`."""
        known = set(tunable_keys(params, arch))
        merged: dict[str, Dimension] = {}
        for key, dim in params.tune.space.items():
            if key in known:
                merged[key] = Dimension.make(key, dim, f"tune.space.{key}")
        for key, dim in params.tune.spaces.get(arch, {}).items():
            if key not in known:
                raise ConfigError(
                    f"tune.spaces.{arch}.{key}: unknown hyperparameter for {arch}; allowed: {', '.join(sorted(known))}"
                )
            merged[key] = Dimension.make(key, dim, f"tune.spaces.{arch}.{key}")
        return cls(arch, dict(sorted(merged.items())))

    def __len__(self) -> int:
        return len(self.dims)

    @property
    def keys(self) -> list[str]:
        return list(self.dims)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every dimension in `trial`; returns the real values keyed `train.x` / `model.x`."""
        return {key: d.decode(d.suggest(trial)) for key, d in self.dims.items()}

    def decode(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """A trial's Optuna params as real values (keys outside this space are ignored)."""
        return {key: d.decode(optuna_params[key]) for key, d in self.dims.items() if key in optuna_params}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {key: d.to_dict() for key, d in self.dims.items()}

    def validate(self, params: Params) -> None:
        """Every choice (or bound and midpoint) of every key must be a valid value of that key for `self.arch`."""
        problems = []
        for key, d in self.dims.items():
            for value in d.probes():
                try:
                    apply_overrides(params, self.arch, {key: value})
                except ConfigError as exc:
                    reason = "; ".join(line.partition(": ")[2] or line for line in str(exc).splitlines())
                    problems.append(f"{d.where}: {value!r} is not a valid {key} for {self.arch} ({reason})")
                    break
        if problems:
            raise ConfigError("\n".join(problems))
