"""The verdict against the best baseline in words (standard library only: the select stage and `dlpipe
leaderboard` both write it).

A lead is stated with its sign and whether it is significant on CV, so that a positive difference is never put
beside "does not beat": "on CV, the lead of +0.0094 over logreg is not significant (p = 0.5700; ...)"; then the
test-set difference, measured once on the held-out test set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def as_number(value: Any) -> float | None:
    """`value` as a float; None for what is not a number, and for NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def baseline_sentence(base: Mapping[str, Any], metric_label: str) -> str:
    """One sentence on the champion against the best baseline `base` (the verdict's "baseline" entry); "" when it
    lacks the CV difference or its p-value."""
    lead, p = as_number(base.get("mean_difference")), as_number(base.get("p_value"))
    if not base.get("name") or lead is None or p is None:
        return ""
    name, significant = base["name"], bool(base.get("significant"))
    if lead > 0:
        cv = f"the lead of {lead:+.4f} over {name} is {'significant' if significant else 'not significant'}"
    elif lead < 0:
        cv = f"it trails {name} by {-lead:.4f}, {'significantly' if significant else 'not significantly'}"
    else:
        cv = f"it ties with {name}"
    p_right = as_number((base.get("bayes") or {}).get("p_right"))
    detail = f"p = {p:.4f}" + (f"; P(better by more than the rope) {p_right:.3f}" if p_right is not None else "")
    text = f" Against the best baseline: on CV, {cv} ({detail})"
    ours, theirs = as_number(base.get("test_value")), as_number(base.get("baseline_test_value"))
    if ours is not None and theirs is not None:
        text += f"; on the test set, {metric_label} {ours:.4f} vs {theirs:.4f} ({ours - theirs:+.4f})"
    return text + "."
