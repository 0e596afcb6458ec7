"""dlpipe.tuning.journal: a torn Optuna journal is repaired under Optuna's lock, nothing recorded is lost, and the
repaired file loads with the expected trials."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from dlpipe.tuning import study as S
from dlpipe.tuning.journal import SIDECAR_INFIX, JournalFile, held, is_record


def plain(path: Path) -> JournalStorage:
    """Optuna's own storage over `path`, exactly as older dlpipe versions opened it."""
    return JournalStorage(JournalFileBackend(str(path)))


def make_journal(path: Path, studies: dict[str, int]) -> None:
    """A journal with `n` complete trials (x = their number) in each study."""
    storage = plain(path)
    for name, n in studies.items():
        study = optuna.create_study(storage=storage, study_name=name)
        for i in range(n):
            trial = study.ask()
            trial.suggest_float("x", 0, 10)
            study.tell(trial, float(i))


def trials_of(storage, name: str) -> list[tuple[TrialState, float | None]]:
    return [(t.state, t.value) for t in optuna.load_study(study_name=name, storage=storage).trials]


def sidecars(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}{SIDECAR_INFIX}*"))


def test_a_torn_tail_moves_to_a_sidecar_and_the_journal_ends_at_its_last_complete_line(tmp_path: Path, caplog):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 2, "b": 3})
    whole = path.read_bytes()
    os.truncate(path, len(whole) - 20)  # into the last record (b's trial 2 becoming COMPLETE)
    keep = whole.rfind(b"\n", 0, len(whole) - 1) + 1
    torn = whole[keep : len(whole) - 20]

    storage = JournalFile(path).storage()
    (side,) = sidecars(path)
    assert side.read_bytes() == torn and torn and b"\n" not in torn
    assert path.read_bytes() == whole[:keep]
    assert str(path) in caplog.text and str(side) in caplog.text
    assert trials_of(storage, "a") == [(TrialState.COMPLETE, 0.0), (TrialState.COMPLETE, 1.0)]
    done = [(TrialState.COMPLETE, 0.0), (TrialState.COMPLETE, 1.0)]
    assert trials_of(storage, "b") == [*done, (TrialState.RUNNING, None)]
    study = optuna.load_study(study_name="b", storage=storage)  # appends go on a complete line
    study.tell(study.trials[2].number, 2.0)
    assert trials_of(plain(path), "b")[2] == (TrialState.COMPLETE, 2.0)


def test_a_record_appended_onto_a_torn_line_is_kept_and_its_broken_prefix_moved(tmp_path: Path):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 2, "b": 2})
    whole = path.read_bytes()
    os.truncate(path, len(whole) - 30)
    keep = whole.rfind(b"\n", 0, len(whole) - 1) + 1
    torn = whole[keep : len(whole) - 30]
    # what an older dlpipe did next: Optuna tolerates the torn last line on read and appends onto it
    old = optuna.load_study(study_name="a", storage=plain(path))
    old.set_user_attr("glued", 1)  # lands on the torn line
    with pytest.raises(json.JSONDecodeError):  # written, then the torn line is mid-file and the reread fails
        old.set_user_attr("after", 2)
    with pytest.raises(json.JSONDecodeError):
        plain(path)

    storage = JournalFile(path).storage()
    (side,) = sidecars(path)
    assert side.read_bytes() == torn
    assert optuna.load_study(study_name="a", storage=storage).user_attrs == {"glued": 1, "after": 2}
    assert trials_of(storage, "a") == [(TrialState.COMPLETE, 0.0), (TrialState.COMPLETE, 1.0)]
    assert trials_of(storage, "b") == [(TrialState.COMPLETE, 0.0), (TrialState.RUNNING, None)]
    assert all(is_record(line) for line in path.read_bytes().splitlines())
    assert trials_of(plain(path), "b") == trials_of(storage, "b")  # Optuna alone reads it again


def test_a_line_without_any_record_goes_wholly_to_the_sidecar(tmp_path: Path):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 2})
    lines = path.read_bytes().splitlines(keepends=True)
    garbage = b'{"op_code":5,"worker_id":"x","tri\x00\xff garbage\n'
    path.write_bytes(b"".join(lines[:3]) + garbage + b"".join(lines[3:]))
    with pytest.raises(ValueError):
        plain(path)
    storage = JournalFile(path).storage()
    (side,) = sidecars(path)
    assert side.read_bytes() == garbage
    assert path.read_bytes() == b"".join(lines)
    assert trials_of(storage, "a") == [(TrialState.COMPLETE, 0.0), (TrialState.COMPLETE, 1.0)]


def test_a_broken_last_line_that_ends_with_a_newline_is_repaired_before_anything_is_appended(tmp_path: Path):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 1})
    whole = path.read_bytes()
    path.write_bytes(whole[:-25] + b"\n")  # Optuna skips such a last line silently; the next append would expose it
    JournalFile(path).storage()
    (side,) = sidecars(path)
    start = whole.rfind(b"\n", 0, len(whole) - 1) + 1
    assert side.read_bytes() == whole[start:-25] + b"\n"
    assert path.read_bytes() == whole[:start]


def test_a_healthy_journal_is_not_rewritten(tmp_path: Path):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 2})
    before = path.stat()
    storage = S.open_storage(str(path))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert not sidecars(path) and len(trials_of(storage, "a")) == 2


def test_a_tail_torn_by_another_process_is_cut_before_the_next_append(tmp_path: Path):
    path = tmp_path / "journal.log"
    make_journal(path, {"a": 1})
    storage = S.open_storage(str(path))  # a live worker
    study = optuna.load_study(study_name="a", storage=storage)
    with open(path, "ab") as f:  # another worker died mid-write
        f.write(b'{"op_code":8,"worker_id":"dead","trial_')
    study.set_user_attr("next", 1)
    (side,) = sidecars(path)
    assert side.read_bytes() == b'{"op_code":8,"worker_id":"dead","trial_'
    assert optuna.load_study(study_name="a", storage=plain(path)).user_attrs == {"next": 1}


def test_open_study_repairs_the_journal_it_opens(tmp_path: Path):
    path = tmp_path / "optuna" / "journal.log"
    path.parent.mkdir()
    make_journal(path, {"a": 1})
    os.truncate(path, path.stat().st_size - 10)
    storage = S.open_storage(str(path))
    assert len(sidecars(path)) == 1 and path.read_bytes().endswith(b"\n")
    assert trials_of(storage, "a") == [(TrialState.RUNNING, None)]


def test_an_interrupt_while_the_journal_lock_is_held_is_raised_after_its_release(tmp_path: Path, keep_signal_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    journal = JournalFile(tmp_path / "journal.log")
    lock_file = tmp_path / "journal.log.lock"
    reached = []
    with pytest.raises(KeyboardInterrupt), held(journal.lock):
        os.kill(os.getpid(), signal.SIGINT)  # e.g. between the rename and the unlink of Optuna's release
        time.sleep(0.05)
        reached.append(lock_file.is_symlink())
    assert reached == [True]  # the block ran to its end
    assert not lock_file.exists() and not lock_file.is_symlink()  # and the lock was released
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not list(tmp_path.glob("*.rename"))
