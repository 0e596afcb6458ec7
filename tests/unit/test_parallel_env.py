"""Worker processes see the environment of the process that made their pool, at the time it made it."""

from __future__ import annotations

import os

import pytest

from dlpipe.parallel import ProcessPool, Task


def read_env(name: str) -> str | None:
    return os.environ.get(name)


def env_in_a_worker(name: str) -> str | None:
    pool = ProcessPool(1)
    try:
        pool.submit(Task("read", read_env, (name,)))
        done = pool.next_done()
        assert done.error is None, done.details
        return done.result
    finally:
        pool.close()


def test_a_second_pool_sees_the_environment_of_its_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLPIPE_TEST_PROJECT", "first")
    assert env_in_a_worker("DLPIPE_TEST_PROJECT") == "first"  # the forkserver starts with this environment
    monkeypatch.setenv("DLPIPE_TEST_PROJECT", "second")
    assert env_in_a_worker("DLPIPE_TEST_PROJECT") == "second"
    monkeypatch.delenv("DLPIPE_TEST_PROJECT")
    assert env_in_a_worker("DLPIPE_TEST_PROJECT") is None
