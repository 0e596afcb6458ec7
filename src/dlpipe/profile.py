"""Where a stage's time goes, when asked: `DLPIPE_PROFILE=<folder>` makes every dlpipe process (stages and their
workers) add up the seconds it spends per category and write them to `<folder>/<pid>.json` when it exits.

Categories: `imports` (process start to the stage's first line), `data` (loading the prepared data), `setup`
(MLflow store and experiment), `fit` (inside Lightning's training), `evaluate` (scoring and test evaluation),
`logging` (MLflow runs, params, metrics, artifacts), `figures` (rendering plots), `export` (torch.export and the
logged model), `waiting` (the study stage's own process idling while its workers run units).
`benchmarks/pipeline.py` adds them up per stage. Without the variable, `timed` does nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ENV = "DLPIPE_PROFILE"
_seconds: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_started: float | None = None


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def timed(category: str) -> Iterator[None]:
    if not enabled():
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _seconds[category] += time.perf_counter() - start
        _counts[category] += 1


def stage_started() -> None:
    """Called first thing by a stage's entry point: the time since the process started went to imports."""
    global _started
    if not enabled() or _started is not None:
        return
    import psutil

    _started = time.time()
    _seconds["imports"] += _started - psutil.Process().create_time()
    atexit.register(_dump)


def worker_started() -> None:
    """Called by a pool worker when it starts (its imports were paid once, by the forkserver)."""
    global _started
    if enabled() and _started is None:
        _started = time.time()
        atexit.register(_dump)


def _dump() -> None:
    folder = Path(os.environ[ENV])
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "stage": os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem,
        "wall": time.time() - (_started or time.time()),
        "seconds": dict(_seconds),
        "counts": dict(_counts),
    }
    (folder / f"{os.getpid()}.json").write_text(json.dumps(record))


def dump_now() -> None:
    """Write this process's record now (pool workers exit without running atexit handlers)."""
    if enabled() and _started is not None:
        _dump()
