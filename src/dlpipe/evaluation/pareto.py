"""The Pareto front of models: none of its members is beaten on every objective by another model."""

from __future__ import annotations

import numpy as np


def pareto_front(objectives: np.ndarray, maximise: list[bool]) -> np.ndarray:
    """A boolean mask of the rows (models) not dominated by another row.

    Row j dominates row i when j is at least as good on every objective and strictly better on one. Rows with a
    missing (NaN) objective are never on the front and never dominate.
    """
    values = np.asarray(objectives, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximise):
        raise ValueError(f"objectives must be (models x {len(maximise)}), got {values.shape}")
    signs = np.where(np.asarray(maximise), 1.0, -1.0)
    better = values * signs  # larger is better in every column
    valid = ~np.isnan(better).any(axis=1)
    front = valid.copy()
    for i in np.flatnonzero(valid):
        others = better[valid]
        dominated = np.all(others >= better[i], axis=1) & np.any(others > better[i], axis=1)
        front[i] = not dominated.any()
    return front
