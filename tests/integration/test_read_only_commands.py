"""Commands that only use what the pipeline recorded (`dlpipe promote`, `predict`, `leaderboard` with a *_positive
selection metric) in a project without an MLflow store: one line, exit 2, and no store created (opening a missing
SQLite store would create a 1 MB database of empty tables)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.processes import VENV_BIN, subprocess_env
from helpers.project import write_params

from dlpipe import cli

pytestmark = pytest.mark.slow


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_without_store(project: Path, code: int, out: str, err: str) -> None:
    db = project / "mlruns" / "mlflow.db"
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and f"no MLflow store at {db}" in err, err
    assert not (project / "mlruns").exists()


def test_promote_in_a_real_process_creates_no_store(project: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = subprocess_env(project)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [str(VENV_BIN / "dlpipe"), "promote"], env=env, cwd=project, capture_output=True, text=True, timeout=300
    )
    assert_refused_without_store(project, proc.returncode, proc.stdout, proc.stderr)
    assert "dlpipe promote reads the runs and models the pipeline recorded" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("promote", "--rollback"),
        ("promote", "--version", "2", "--force"),
        ("predict", "--model", "models:/dlpipe-digits@champion", "--input", "x.npz"),
        ("predict", "--model", "runs:/0123456789abcdef/model", "--input", "x.npz"),
    ],
)
def test_read_only_commands_refuse_and_create_nothing(project: Path, capsys, monkeypatch, args) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    np.savez(project / "x.npz", X=np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert_refused_without_store(project, *run_cli(capsys, *args))


def test_leaderboard_without_a_study_refuses_and_creates_nothing(project: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_params(project, {"selection": {"metric": "recall_positive", "positive_class": "3"}})
    code, out, err = run_cli(capsys, "leaderboard")
    assert code == 2 and out == ""
    assert "reports/leaderboard.csv" in err and "dvc repro select" in err and len(err.strip().splitlines()) == 1
    assert not (project / "mlruns").exists()
