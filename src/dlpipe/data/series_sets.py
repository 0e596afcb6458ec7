"""Time series: the UCR/UEA classification sets bundled in aeon's wheel (offline, each with its official train/test
split), and the readers of a user's series (`.ts` files, aeon's format; `.npz` with `X` and optional `lengths`).

A sequence dataset's X is N x channels x length (float32). Series of unequal length are kept whole: each is padded
at its end to the longest one with NaN steps (every channel NaN), never truncated. The models read a series' length
from its padding (`base.series_lengths`) and mask the padded steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.registry import register_dataset
from dlpipe.errors import DataError


@dataclass(frozen=True)
class SeriesSet:
    """A bundled set as the archive describes it (tests/unit/test_series_sets.py checks it against the files)."""

    name: str  # the registry name (data.name)
    problem: str  # the archive's name: aeon's bundled files are <problem>/<problem>_TRAIN.ts and _TEST.ts
    channels: int
    length: tuple[int, int]  # shortest and longest series
    classes: int
    train: int  # official training cases
    test: int  # official test cases

    @property
    def description(self) -> str:
        low, high = self.length
        length = str(high) if low == high else f"{low}-{high} (unequal)"
        channels = f"{self.channels} channel{'s' if self.channels > 1 else ''}"
        return (
            f"UCR/UEA {self.problem}: {channels}, length {length}, {self.classes} classes; "
            f"official split {self.train} train / {self.test} test (offline)"
        )


SERIES_SETS = (
    SeriesSet("gunpoint", "GunPoint", 1, (150, 150), 2, 50, 150),
    SeriesSet("italy_power_demand", "ItalyPowerDemand", 1, (24, 24), 2, 67, 1029),
    SeriesSet("arrow_head", "ArrowHead", 1, (251, 251), 3, 36, 175),
    SeriesSet("basic_motions", "BasicMotions", 6, (100, 100), 4, 40, 40),
    SeriesSet("japanese_vowels", "JapaneseVowels", 12, (7, 29), 9, 270, 370),
    SeriesSet("osu_leaf", "OSULeaf", 1, (427, 427), 6, 200, 242),
    SeriesSet("acsf1", "ACSF1", 1, (1460, 1460), 10, 100, 100),
    SeriesSet("pickup_gesture_wiimote_z", "PickupGestureWiimoteZ", 1, (29, 361), 10, 50, 50),
)


def bundled_file(problem: str, part: str) -> Path:
    """aeon's bundled `.ts` file of `problem`'s official `part` (TRAIN or TEST)."""
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data" / problem / f"{problem}_{part}.ts"


def read_ts(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, list[str]]:
    """(series, labels, class names) of a `.ts` file: each series channels x its own length; labels as text (None
    when the file has none); class names as the file's header lists them."""
    from aeon.datasets import load_from_ts_file

    if not Path(path).is_file():
        raise DataError(f"{path}: no such .ts file")
    try:
        X, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: not a readable .ts file ({' '.join(str(exc).split())})") from None
    series = [np.asarray(s, dtype=np.float32) for s in X]
    labels = np.asarray(y).astype(str) if meta.get("classlabel") else None
    return series, labels, [str(c) for c in meta.get("class_values") or []]


def pad_series(series: Sequence[np.ndarray], source: str, length: int | None = None) -> np.ndarray:
    """N x channels x length float32: each series (channels x its length) followed by NaN steps up to `length`
    (default: the longest). A series longer than `length` is an error, never truncated."""
    if not len(series):
        raise DataError(f"{source}: no series")
    arrays = [np.atleast_2d(np.asarray(s, dtype=np.float32)) for s in series]
    channels = {a.shape[0] for a in arrays}
    if len(channels) > 1:
        raise DataError(f"{source}: the series have different channel counts ({sorted(channels)}); one is needed")
    longest = max(a.shape[1] for a in arrays)
    length = longest if length is None else length
    out = np.full((len(arrays), arrays[0].shape[0], length), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        steps = a.shape[1]
        if steps == 0 or np.isnan(a[:, steps - 1]).all():
            raise DataError(f"{source}: series {i} ends in a step with no value (an empty or NaN-padded series)")
        if steps > length:
            raise DataError(f"{source}: series {i} has {steps} steps, more than the {length} this model takes")
        out[i, :, :steps] = a
    return out


def unpad(X: np.ndarray, lengths: np.ndarray, source: str) -> list[np.ndarray]:
    """The series of an `.npz` X (N x channels x length) cut at each of `lengths` (so that `pad_series` pads them
    with NaN whatever the file padded with)."""
    lengths = np.asarray(lengths)
    if lengths.shape != (len(X),) or not np.issubdtype(lengths.dtype, np.integer):
        raise DataError(f"{source}: 'lengths' must hold one integer per series of X ({len(X)}), got {lengths.shape}")
    bad = np.flatnonzero((lengths < 1) | (lengths > X.shape[2]))
    if len(bad):
        raise DataError(f"{source}: lengths[{bad[0]}] = {lengths[bad[0]]} is outside 1..{X.shape[2]} (X's length)")
    return [X[i, :, : int(n)] for i, n in enumerate(lengths)]


def read_npz_series(path: Path) -> list[np.ndarray]:
    """The series of an `.npz` file: `X` (N x channels x length, or N x length for one channel) and, for series of
    unequal length, `lengths` (N steps each; the rest of a row is padding)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:  # np.load leaks its own on errors
            if "X" not in npz.files:
                raise DataError(f"{path}: no array 'X' (N x channels x length); arrays: {', '.join(npz.files)}")
            X = np.asarray(npz["X"], dtype=np.float32)
            lengths = npz["lengths"] if "lengths" in npz.files else None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise DataError(f"{path}: 'X' must be N x channels x length (or N x length), got shape {X.shape}")
    if lengths is None:
        return list(X)
    return unpad(X, lengths, str(path))


def series_dataset(
    name: str,
    series: Sequence[np.ndarray],
    labels: Sequence[str],
    class_names: Sequence[str],
    official_test: np.ndarray | None = None,
) -> Dataset:
    """A sequence Dataset: the series NaN-padded to the longest, labels as indices into `class_names`."""
    names = [str(c) for c in class_names] or sorted({str(v) for v in labels})
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise DataError(f"{name}: label(s) {', '.join(unknown)} not among the classes {', '.join(names)}")
    X = torch.from_numpy(pad_series(series, name))
    y = torch.tensor([index[str(v)] for v in labels], dtype=torch.int64)
    test = None if official_test is None else torch.from_numpy(np.asarray(official_test, dtype=bool))
    return Dataset(name, X, y, "sequence", names, official_test=test)


def load_bundled(spec: SeriesSet, root: Path, data_params: Any) -> Dataset:
    """The official training cases, then the official test cases (`official_test` marks them)."""
    train, y_train, classes = read_ts(bundled_file(spec.problem, "TRAIN"))
    test, y_test, _ = read_ts(bundled_file(spec.problem, "TEST"))
    official_test = np.r_[np.zeros(len(train), bool), np.ones(len(test), bool)]
    return series_dataset(spec.name, train + test, np.r_[y_train, y_test], classes, official_test)


for _spec in SERIES_SETS:
    register_dataset(_spec.name, "sequence", _spec.description, official_split=True)(partial(load_bundled, _spec))


def read_series_input(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Series for a model taking `shape` = (channels, length): from a `.ts` file (labels, if any, are ignored) or an
    `.npz` (`X` and optional `lengths`), NaN-padded to the model's length (a longer series is refused, not cut)."""
    path = Path(path)
    if len(shape) != 2:
        raise DataError(f"{path}: the model takes inputs of shape {tuple(shape)}, not series (channels x length)")
    series = read_ts(path)[0] if path.suffix.lower() == ".ts" else read_npz_series(path)
    channels, length = shape
    got = {np.atleast_2d(s).shape[0] for s in series}
    if got != {channels}:
        raise DataError(f"{path}: series of {', '.join(map(str, sorted(got)))} channel(s); the model takes {channels}")
    return pad_series(series, str(path), length)
