"""A process killed (SIGKILL, a real process) while it holds the Optuna journal lock, or right after it created a
trial: the next worker goes on at once. A dead holder's lock is broken without waiting for a grace period, a live
holder's lock is never taken from it, and a trial is created with its owner, so a rerun can tell its process died."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dlpipe.processes import Owner
from dlpipe.tuning import study as S
from dlpipe.tuning import workers as W
from dlpipe.tuning.journal import JournalFile

GRACE = 30  # Optuna's grace period before it forcibly takes a lock it cannot judge


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True)


def killed_while_holding_the_lock(path: Path) -> int:
    """A process that takes the journal lock and is killed while it holds it; returns its pid."""
    child = run_child(
        """
        import os, signal, sys
        from dlpipe.tuning.journal import JournalFile
        JournalFile(sys.argv[1]).lock.acquire()
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(path),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    return int(child.stdout)


def test_a_lock_left_by_a_killed_process_is_broken_at_once(tmp_path: Path, caplog):
    path = tmp_path / "journal.log"
    study = optuna.create_study(storage=S.open_storage(str(path)), study_name="s")
    pid = killed_while_holding_the_lock(path)
    assert (tmp_path / "journal.log.lock").is_symlink()

    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        study.set_user_attr("after", 1)  # an append: it needs the lock
    assert time.monotonic() - start < 5 < GRACE
    assert optuna.load_study(study_name="s", storage=S.open_storage(str(path))).user_attrs == {"after": 1}
    assert f"process {pid}" in caplog.text and "has ended" in caplog.text
    assert not (tmp_path / "journal.log.lock").exists()


def test_a_lock_held_by_a_live_process_is_waited_for(tmp_path: Path):
    path = tmp_path / "journal.log"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from dlpipe.tuning.journal import JournalFile
                lock = JournalFile(sys.argv[1]).lock
                lock.acquire()
                print("held", flush=True)
                time.sleep(2)
                lock.release()  # raises when its lock was taken from it
                """
            ),
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    lock = JournalFile(path).lock
    lock.acquire()
    waited = time.monotonic() - start
    lock.release()
    assert holder.wait(timeout=30) == 0
    assert waited > 1.0


def test_a_trial_exists_only_with_its_owner_so_a_process_killed_right_after_creating_it_is_found_at_once(
    tmp_path: Path,
):
    path = tmp_path / "journal.log"
    study = optuna.create_study(storage=S.open_storage(str(path)), study_name="s", direction="maximize")
    child = run_child(
        """
        import os, signal, sys, optuna
        from dlpipe.tuning import study as S
        study = optuna.load_study(study_name="s", storage=S.open_storage(sys.argv[1]))
        study.ask()  # killed before it can record anything else about the trial
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(path),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    (left,) = study.trials
    assert left.state == TrialState.RUNNING
    owner = Owner.from_record(left.system_attrs.get(S.ATTR_OWNER))
    assert owner is not None and owner.pid == int(child.stdout) and owner.is_dead()

    assert W.fail_orphaned_trials(study) == [0]  # no heartbeat needs to age
    dropped = study.trials[0]
    assert dropped.state == TrialState.FAIL and dropped.system_attrs[S.ATTR_ORPHANED] is True


def test_the_owner_of_a_trial_is_this_process(tmp_path: Path):
    study = optuna.create_study(storage=S.open_storage(str(tmp_path / "journal.log")), study_name="s")
    study.ask()
    owner = Owner.from_record(study.trials[0].system_attrs[S.ATTR_OWNER])
    assert owner == Owner.current() and owner.pid == os.getpid()
