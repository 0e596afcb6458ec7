"""How a tune plan splits a study over runners: never more runners than slots that run them at once, and only
runners that run together wait for each other (a serial pool would otherwise wait out the rendezvous time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlpipe.config import Params
from dlpipe.paths import ProjectPaths
from dlpipe.stages.tune import TunePlan


@pytest.mark.parametrize(("runners", "slots", "expected"), [(1, 2, 1), (2, 1, 1), (2, 2, 2), (3, 2, 2)])
def test_runners_are_capped_by_the_slots_and_meet_only_together(runners: int, slots: int, expected: int) -> None:
    plan = TunePlan("mlp", None, None, "run-id", runners)  # type: ignore[arg-type]
    jobs = plan.jobs(Params(), ProjectPaths(Path(".")), slots=slots)
    assert [job.index for job in jobs] == list(range(expected))
    meets = {job.rendezvous for job in jobs}
    if expected == 1:
        assert meets == {None}
    else:
        (meet,) = meets
        assert meet is not None and meet.endswith(f":{expected}")
