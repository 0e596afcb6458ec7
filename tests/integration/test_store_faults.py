"""The MLflow store locked by another process (a real sqlite3 connection holding BEGIN EXCLUSIVE), a store that is
not a SQLite database (real garbage bytes), and a full disk (a real, size-limited tmpfs): each ends a stage with
one line that names the store or the folder, never a traceback; the check stage finds a locked or corrupt store
before DVC would delete any stage output."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mlflow_store import project_client
from helpers.processes import subprocess_env
from helpers.project import prepare_project

from dlpipe.paths import ProjectPaths
from dlpipe.stages import check
from dlpipe.tracking import store

EXPERIMENT = "dlpipe/digits"
TIMEOUT = 300
HOLD = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin
    """
)


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[subprocess.Popen]:
    """Another process holding `BEGIN EXCLUSIVE` on `db` for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def db_of(project: Path) -> Path:
    return project / "mlruns" / store.DB_NAME


def error_lines(text: str, prog: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"dlpipe {prog}: error:")]


# --- the check stage --------------------------------------------------------------------------------------------


def test_the_check_stage_refuses_a_store_another_process_holds_locked(project, mlflow_store, capsys, monkeypatch):
    assert check.main() == 0  # unlocked: fine (and the params are stamped as checked)
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 1.0)
    with exclusive_lock(db_of(project)) as holder:
        start = time.monotonic()
        assert check.main() == 1
        assert time.monotonic() - start < 10
    (line,) = error_lines(capsys.readouterr().err, "check")
    assert f"MLflow store {db_of(project)} is locked by process {holder.pid} (waited 1s)" in line, line
    assert "another project" not in line
    assert check.main() == 0  # released: fine again


def test_the_check_stage_refuses_a_store_that_is_not_a_sqlite_database(project, mlflow_store, capsys):
    db = db_of(project)
    with open(db, "r+b") as f:  # garbage over the header and the schema page
        f.write(os.urandom(4096))
    assert check.main() == 1
    (line,) = error_lines(capsys.readouterr().err, "check")
    assert f"MLflow store {db} is not a readable SQLite database (file is not a database)" in line, line


def test_relocation_of_a_locked_store_names_the_lock_not_permissions(project, mlflow_store, monkeypatch):
    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 1.0)
    with exclusive_lock(db_of(project)) as holder, pytest.raises(store.StoreLockedError) as info:
        store.relocate(project)
    assert f"locked by process {holder.pid}" in str(info.value) and "writable" not in str(info.value)


# --- a stage, mid-run -------------------------------------------------------------------------------------------


def start_baselines(project: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "pipelines/baselines.py"],
            cwd=project,
            env=subprocess_env(project),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def baseline_runs(project: Path) -> list:
    client = project_client(project)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.stage = 'baselines'")


@pytest.mark.slow
def test_a_store_locked_mid_stage_ends_it_with_one_line_and_the_rerun_goes_on(project, mlflow_store, tmp_path):
    prepare_project(project, {"baselines": {"models": ["logreg", "knn"]}})
    log = tmp_path / "baselines.log"
    proc = start_baselines(project, log)
    deadline = time.monotonic() + TIMEOUT
    while not any(r.info.status == "FINISHED" for r in baseline_runs(project)):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    with exclusive_lock(db_of(project)) as holder:  # held until the stage has ended
        code = proc.wait(timeout=TIMEOUT)
    text = log.read_text()
    assert code == 1, text[-3000:]
    (line,) = error_lines(text, "baselines")
    assert f"MLflow store {db_of(project)} is locked by process {holder.pid}" in line, line
    assert "Traceback" not in text and "[SQL:" not in text, text[-3000:]

    assert start_baselines(project, log).wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    assert not [r.info.run_name for r in baseline_runs(project) if r.info.status == "RUNNING"]


# --- a full disk ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def full_tmpfs(folder: Path, size_kb: int, keep: list[Path]) -> Iterator[None]:
    """`folder` on a tmpfs of `size_kb` holding copies of `keep`, then filled to the last byte."""
    saved = {p.name: p.read_bytes() for p in keep}
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k"
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        for name, data in saved.items():
            (folder / name).write_bytes(data)
        with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:  # its close fails too
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_under_mlruns_ends_the_stage_with_one_line_naming_the_folder(project, mlflow_store, tmp_path):
    prepare_project(project, {"baselines": {"models": ["logreg"]}})
    mlruns = project / "mlruns"
    log = tmp_path / "baselines.log"
    with full_tmpfs(mlruns, 2048, [db_of(project)]):
        code = start_baselines(project, log).wait(timeout=TIMEOUT)
    text = log.read_text()
    assert code == 2, text[-3000:]
    (line,) = error_lines(text, "baselines")
    assert f"no space left on the device of {mlruns}" in line, line
    assert "Traceback" not in text and "[SQL:" not in text, text[-3000:]


@pytest.mark.slow
def test_a_full_disk_under_reports_ends_the_stage_with_one_line_naming_the_folder(project, mlflow_store, tmp_path):
    prepare_project(project, {"baselines": {"models": ["logreg"]}})
    reports = ProjectPaths(project).baselines_report.parent
    log = tmp_path / "baselines.log"
    with full_tmpfs(reports, 64, []):
        code = start_baselines(project, log).wait(timeout=TIMEOUT)
    text = log.read_text()
    assert code == 2, text[-3000:]
    (line,) = error_lines(text, "baselines")
    assert f"no space left on the device of {reports}" in line, line
    assert "Traceback" not in text, text[-3000:]
