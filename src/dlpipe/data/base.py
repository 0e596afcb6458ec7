"""The common in-memory form of every dataset, and the description of a tabular dataset's columns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

InputKind = Literal["image", "tabular", "sequence", "text"]
UNKNOWN = 0  # the code of a category outside a column's vocabulary (unseen, missing)
PIXEL_MAX = 255.0  # an 8-bit pixel p is the input p / PIXEL_MAX in [0, 1], the scale every image model takes


def pixels_to_float(X: torch.Tensor) -> torch.Tensor:
    """Model inputs of `X`: 8-bit pixels (uint8) as float32 in [0, 1] (a new tensor); float X as it is."""
    return X.float().div_(PIXEL_MAX) if X.dtype == torch.uint8 else X


@dataclass(frozen=True)
class Features:
    """The columns of a tabular X, in order, and the vocabulary of each categorical one.

    A categorical column holds integer codes: `vocabularies[name][i]` is code i + 1, and 0 (`UNKNOWN`) stands for
    any other value. Numeric columns hold numbers. Models read this to embed or one-hot the code columns; the
    normaliser leaves them unscaled; the served model maps text to codes with the vocabularies.
    """

    names: tuple[str, ...]
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        vocabularies = {str(k): tuple(str(v) for v in vocab) for k, vocab in self.vocabularies.items()}
        unknown = [k for k in vocabularies if k not in names]
        if unknown:
            raise ValueError(f"vocabularies of column(s) {', '.join(unknown)} that are not features")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "vocabularies", {n: vocabularies[n] for n in names if n in vocabularies})

    @property
    def categorical(self) -> list[int]:
        """Column indices of the categorical features, in X's order."""
        return [i for i, n in enumerate(self.names) if n in self.vocabularies]

    @property
    def numeric(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n not in self.vocabularies]

    def cardinality(self, column: int | str) -> int:
        """How many codes a categorical column takes: its categories plus the unknown code 0."""
        name = self.names[column] if isinstance(column, int) else column
        return len(self.vocabularies[name]) + 1

    def encode(self, name: str, values: Iterable[Any]) -> np.ndarray:
        """Codes of text `values` of column `name` (anything outside the vocabulary is `UNKNOWN`)."""
        index = {v: i + 1 for i, v in enumerate(self.vocabularies[name])}
        return np.array([index.get(_text(v), UNKNOWN) for v in values], dtype=np.int64)

    def decode(self, name: str, codes: Iterable[Any]) -> list[str | None]:
        """The category of each code (None for the unknown code)."""
        vocab = self.vocabularies[name]
        return [vocab[int(c) - 1] if 1 <= int(c) <= len(vocab) else None for c in codes]

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "vocabularies": {k: list(v) for k, v in self.vocabularies.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Features:
        return cls(tuple(data["names"]), {k: tuple(v) for k, v in (data.get("vocabularies") or {}).items()})


@dataclass(frozen=True)
class TextColumn:
    """The free text of a text dataset (a CSV's `data.csv.text_column`), one string per sample, and how it is
    tokenized (`data.text`: a tokenizer fitted per training part turns it into token ids)."""

    column: str
    texts: tuple[str, ...]
    max_tokens: int
    vocab_size: int

    def take(self, idx: Iterable[int]) -> list[str]:
        return [self.texts[int(i)] for i in idx]


def series_lengths(X: torch.Tensor) -> torch.Tensor:
    """The length of each series of a sequence batch (N x channels x length): up to its last step with a value;
    the NaN steps after it (every channel NaN) are padding."""
    has_value = ~torch.isnan(X).all(dim=1)  # N x length
    steps = torch.arange(1, X.shape[-1] + 1, device=X.device)
    return (has_value * steps).amax(dim=1)


def _text(value: Any) -> Any:
    """A CSV cell as the vocabulary holds it: text as it is, other values (numbers from JSON) as text; None and NaN
    stay what they are (unknown)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and np.isnan(value):
        return None
    return str(value)


@dataclass
class Dataset:
    """`X` float32 (N, *input_shape), `y` int64 (N,) class indices into `class_names`. Images may keep their 8-bit
    pixels (X uint8, a quarter of the memory): the input a model sees is X / 255 (`inputs`).

    `feature_names`: the column names of a tabular dataset's features, in X's column order (a CSV header,
    scikit-learn's feature names); None for images and for data saved before names were recorded.
    `categories`: the vocabulary of each categorical feature (by name); its column of X holds codes (see `Features`).
    Sequence data: X is N x channels x length, shorter series padded at their end with NaN steps (see
    `series_lengths`). `official_test`: True for each sample of the dataset's official test set (None: it has none).
    Text data (`kind` "text"): the inputs are `text`'s strings, tokenized per training part; X is an N x 0
    placeholder (token ids depend on the tokenizer a split fits, see `data.text`).
    """

    name: str
    X: torch.Tensor
    y: torch.Tensor
    kind: InputKind
    class_names: list[str]
    feature_names: list[str] | None = None
    categories: dict[str, list[str]] | None = None
    official_test: torch.Tensor | None = None
    text: TextColumn | None = None

    def __post_init__(self) -> None:
        pixels = self.kind == "image" and self.X.dtype == torch.uint8
        if not (pixels or self.X.dtype == torch.float32) or self.y.dtype != torch.int64:
            raise TypeError(
                f"dataset {self.name}: X must be float32 (or uint8 images) and y int64, got {self.X.dtype}, "
                f"{self.y.dtype}"
            )
        if len(self.X) != len(self.y):
            raise ValueError(f"dataset {self.name}: {len(self.X)} samples but {len(self.y)} labels")
        if self.kind == "image" and self.X.dim() != 4:
            raise ValueError(f"dataset {self.name}: image data must be N x C x H x W, got {tuple(self.X.shape)}")
        if self.kind == "sequence" and self.X.dim() != 3:
            raise ValueError(
                f"dataset {self.name}: sequence data must be N x channels x length, got {tuple(self.X.shape)}"
            )
        if (self.kind == "text") != (self.text is not None) or (self.text and len(self.text.texts) != len(self.y)):
            raise ValueError(f"dataset {self.name}: text data (and only text data) needs one text per sample")
        if self.official_test is not None:
            self.official_test = torch.as_tensor(self.official_test, dtype=torch.bool)
            if self.official_test.shape != self.y.shape:
                raise ValueError(f"dataset {self.name}: official_test must flag each of the {len(self.y)} samples")
        if self.feature_names is not None:
            names = [str(n) for n in self.feature_names]
            if self.X.dim() != 2 or len(names) != self.X.shape[1] or len(set(names)) != len(names):
                raise ValueError(
                    f"dataset {self.name}: feature_names must name each of X's {tuple(self.X.shape[1:])} columns "
                    f"once, got {len(names)} ({len(set(names))} distinct)"
                )
            self.feature_names = names
        if self.categories:
            self._check_codes()

    def _check_codes(self) -> None:
        if self.feature_names is None:
            raise ValueError(f"dataset {self.name}: categorical columns need feature_names")
        features = Features(tuple(self.feature_names), {k: tuple(v) for k, v in self.categories.items()})
        for i in features.categorical:
            codes = self.X[:, i]
            top = features.cardinality(i) - 1
            if ((codes != codes.round()) | (codes < 0) | (codes > top)).any():
                raise ValueError(f"dataset {self.name}: column {features.names[i]!r} must hold codes 0..{top}")
        self.categories = {k: list(v) for k, v in features.vocabularies.items()}

    def inputs(self, idx: Any = None) -> torch.Tensor:
        """The float32 model inputs of rows `idx` (every row when None; indices, a mask or a slice): 8-bit pixels as
        X / 255, float X as it is (`idx` None: X itself)."""
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        return pixels_to_float(self.X if idx is None else self.X[idx])

    @property
    def features(self) -> Features | None:
        """The tabular columns (names, categorical vocabularies); None for images and unnamed features."""
        if self.feature_names is None:
            return None
        return Features(tuple(self.feature_names), {k: tuple(v) for k, v in (self.categories or {}).items()})

    @property
    def lengths(self) -> torch.Tensor | None:
        """The length of each series (sequence data; None for other kinds)."""
        return series_lengths(self.X) if self.kind == "sequence" else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.y)
