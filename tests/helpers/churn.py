"""A churn-like CSV whose label is decided by an interaction of two text columns (plan x region), with noise,
numeric distractors and an unrelated text column: what a deep tabular model with a declared cross should learn.

Each (plan, region) cell has its own churn rate, chosen so that neither column alone says much (every plan and
every region churns about half the time) while the pair says a lot; numeric columns carry little signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PLANS = ["basic", "family", "premium", "student", "business", "senior"]
REGIONS = ["north", "south", "east", "west", "central", "islands", "coast", "mountains"]
CHANNELS = ["web", "shop", "phone"]


def churn_frame(n: int = 2000, seed: int = 0, noise: float = 0.1) -> pd.DataFrame:
    """`n` customers: text columns plan, region, channel; numeric tenure, monthly_fee, support_calls; label `churn`
    (yes/no) from a per-(plan, region) rate, flipped with probability `noise`."""
    rng = np.random.default_rng(seed)
    # half of each plan's regions churn, a different half for every plan (fixed, not drawn from `seed`)
    pattern = np.random.default_rng(12345)
    cell = np.array([pattern.permutation(len(REGIONS)) < len(REGIONS) // 2 for _ in PLANS])
    rate = np.where(cell > 0, 0.9, 0.1)
    plan = rng.integers(len(PLANS), size=n)
    region = rng.integers(len(REGIONS), size=n)
    churn = rng.random(n) < rate[plan, region]
    churn ^= rng.random(n) < noise
    frame = pd.DataFrame(
        {
            "plan": np.array(PLANS)[plan],
            "region": np.array(REGIONS)[region],
            "channel": np.array(CHANNELS)[rng.integers(len(CHANNELS), size=n)],
            "tenure": rng.integers(1, 72, size=n),
            "monthly_fee": np.round(rng.normal(50, 15, size=n), 2),
            "support_calls": rng.poisson(2, size=n),
            "churn": np.where(churn, "yes", "no"),
        }
    )
    return frame


def write_churn_csv(path: Path, n: int = 2000, seed: int = 0, noise: float = 0.1) -> Path:
    churn_frame(n, seed, noise).to_csv(path, index=False)
    return path
