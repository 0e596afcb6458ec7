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


def test_a_studys_runners_start_together_or_wait_while_other_units_can_run() -> None:
    """Runners that meet before their first trial never hold a worker idle while another unit could run on it: they
    start together when enough workers are free; alone only when nothing else is ready (the rest follow)."""
    from types import SimpleNamespace

    from dlpipe.parallel import Task
    from dlpipe.stages.scheduler import Study
    from dlpipe.stages.tune import TrialsJob

    runners = TunePlan("mlp", None, None, "run-id", 2).jobs(Params(), ProjectPaths(Path(".")), slots=2)  # type: ignore[arg-type]
    study = Study.__new__(Study)
    study.meeting = set()
    study.pool = SimpleNamespace(free=1)
    fold = Task("cv cnn fold1", print, (SimpleNamespace(k=1),))
    summary = Task("tune cnn summary", print, (TrialsJob(Params(), ProjectPaths(Path(".")), "cnn", None),))
    study.ready = [(2, 0.0, i, Task(f"tune mlp runner{i}", print, (job,))) for i, job in enumerate(runners)]
    study.ready += [(2, 0.0, 3, summary)]
    assert study.next_ready() == 2  # one free worker: the summary, not a runner that would wait for its sibling
    study.ready.pop(2)
    study.ready.append((1, 0.0, 4, fold))
    assert study.next_ready() == 2  # nor before a fold
    study.pool.free = 2
    assert study.next_ready() == 0  # two free: the runners start together
    study.ready.pop(0)
    study.ready.insert(0, (0, 0.0, 6, Task("train cnn", print, (SimpleNamespace(),))))
    study.pool.free = 1
    assert study.next_ready() == 1  # its sibling is awaited: it goes first, before the final fit queued ahead of it
    study.ready = [(2, 0.0, 5, Task("tune mlp runner0", print, (runners[0],)))]
    study.meeting = set()
    assert study.next_ready() == 0  # nothing else ready: a runner starts alone
