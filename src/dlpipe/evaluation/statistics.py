"""Comparing two models on the same cross-validation folds.

- `corrected_resampled_ttest`: Nadeau & Bengio (2003), frequentist: is the mean difference non-zero?
- `correlated_bayesian_ttest`: Benavoli, Corani, Demšar & Zaffalon (2017), "Time for a change: a tutorial for
  comparing multiple classifiers through Bayesian analysis": the posterior of the mean difference, with the
  probabilities that it lies left of, inside or right of a region of practical equivalence (rope).

Both correct the variance for the overlap of the folds' training sets with ρ/(1−ρ) = n_test/n_train (1/(k−1) for
k equal folds): the differences on k folds are not independent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def kfold_test_train_ratio(fold_sizes: list[int] | np.ndarray) -> float:
    """n_test / n_train averaged over folds, from the number of samples in each fold."""
    sizes = np.asarray(fold_sizes, dtype=float)
    total = sizes.sum()
    return float(np.mean(sizes / (total - sizes)))


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("comparing two models needs at least 2 folds")
    return a - b


@dataclass
class TTest:
    """Corrected resampled paired t-test (Nadeau & Bengio 2003) of `a - b` over k folds."""

    k: int
    mean_difference: float
    std_difference: float
    t: float
    p_value: float
    dof: int
    test_train_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def corrected_resampled_ttest(a: np.ndarray, b: np.ndarray, test_train_ratio: float) -> TTest:
    """Two-sided test that the paired per-fold scores `a` and `b` differ.

    t = mean(d) / sqrt((1/k + n_test/n_train) * var(d)), d = a - b, var with ddof=1, k - 1 degrees of freedom.
    Identical differences on every fold give t = +/-inf and p = 0 (or t = 0, p = 1 when they are all zero).
    """
    d = _differences(a, b)
    k = len(d)
    mean, var, dof = float(d.mean()), float(d.var(ddof=1)), k - 1
    if var <= 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / math.sqrt((1.0 / k + test_train_ratio) * var)
        p = float(2.0 * stats.t.sf(abs(t), dof))
    return TTest(k, mean, math.sqrt(max(var, 0.0)), float(t), p, dof, float(test_train_ratio))


@dataclass
class BayesianComparison:
    """Posterior of the mean difference `a - b`: Student t(dof, mean, scale); probabilities of the three regions."""

    mean: float
    scale: float
    dof: int
    rope: float
    p_left: float  # P(a - b < -rope): b is practically better
    p_rope: float  # P(|a - b| <= rope): practically equivalent
    p_right: float  # P(a - b > rope): a is practically better

    def to_dict(self) -> dict:
        return asdict(self)


def correlated_bayesian_ttest(a: np.ndarray, b: np.ndarray, test_train_ratio: float, rope: float) -> BayesianComparison:
    """Bayesian correlated t-test of paired per-fold scores (Benavoli et al. 2017).

    With a non-informative prior, the posterior of the mean difference is a Student t with k - 1 degrees of freedom,
    location mean(d) and scale sqrt((1/k + ρ/(1−ρ)) var(d)), ρ/(1−ρ) = n_test/n_train. Differences equal on every
    fold give a point mass at their value.
    """
    if rope < 0:
        raise ValueError(f"rope must be >= 0, got {rope}")
    d = _differences(a, b)
    k = len(d)
    mean, var = float(d.mean()), float(d.var(ddof=1))
    scale = math.sqrt((1.0 / k + test_train_ratio) * var)
    if scale == 0.0:
        left, right = float(mean < -rope), float(mean > rope)
        return BayesianComparison(mean, 0.0, k - 1, rope, left, 1.0 - left - right, right)
    posterior = stats.t(k - 1, loc=mean, scale=scale)
    left = float(posterior.cdf(-rope))
    right = float(posterior.sf(rope))
    return BayesianComparison(mean, scale, k - 1, rope, left, max(0.0, 1.0 - left - right), right)
