"""`dvc repro` on a CSV study under the mistakes a real study meets (issues #11.5, #11.7), in a fresh git + DVC
project: the CSV edited in place, bad params, a CSV that fails validation.

- A changed CSV (same path, new contents) reruns fetch and everything after it; a CSV only touched (same contents)
  reruns nothing but the always-run check stage.
- Bad params or a bad CSV stop `dvc repro` at the check stage, before DVC deletes any output: exit non-zero, one
  line naming the key or file, and every output byte-identical; with the params put back nothing reruns.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.processes import subprocess_env
from helpers.project import copy_dvc_study, git_dvc_init
from sklearn.datasets import load_wine

CSV = Path("data") / "wine.csv"
ARCHS = ["perceptron", "mlp"]
OVERRIDE = {
    "data": {"name": "csv", "csv": {"path": str(CSV), "target": "target"}, "folds": 2},
    "architectures": ARCHS,
    "models": {"mlp": {"hidden": [16]}},
    "train": {"max_epochs": 2},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "tune": {"n_trials": 2, "max_epochs": 2},
    "baselines": {"models": []},
}
OUTPUTS = ("data/raw", "data/prepared", "data/inputs.json", "reports", "models", "dvc.lock")
TIMEOUT = 900


def wine() -> pd.DataFrame:
    """scikit-learn's wine data (178 rows, 13 numeric features) with text class labels."""
    ds = load_wine(as_frame=True)
    frame = ds.frame.copy()
    frame["target"] = [f"cultivar_{i}" for i in ds.target]
    return frame


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return proc


def stages_run(proc: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every output file (and dvc.lock)."""
    files = {}
    for name in OUTPUTS:
        path = root / name
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git + DVC project studying data/wine.csv, after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e-faults") / "study"
    copy_dvc_study(root, OVERRIDE)
    (root / CSV).parent.mkdir(parents=True)
    wine().to_csv(root / CSV, index=False)
    for cmd in git_dvc_init("wine study"):
        run(cmd, root)
    first = run(["dvc", "repro"], root)
    assert stages_run(first) == {"check", "fetch", "prepare", "baselines", "study", "select"}
    return root


# --- bad params and bad CSVs ----------------------------------------------------------------------------------------


def set_param(*keys: str, value) -> Callable[[Path], str]:
    def apply(root: Path) -> str:
        params = yaml.safe_load((root / "params.yaml").read_text())
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ".".join(keys)

    return apply


def write_csv(frame: Callable[[], pd.DataFrame], named: str) -> Callable[[Path], str]:
    def apply(root: Path) -> str:
        frame().to_csv(root / CSV, index=False)
        return named

    return apply


def with_missing_values() -> pd.DataFrame:
    frame = wine()
    frame["colour"] = ["red" if i % 2 else "white" for i in range(len(frame))]  # text is a category: not the fault
    frame.loc[frame.index[::7], "colour"] = None
    return frame


def two_rows_per_class() -> pd.DataFrame:
    return wine().groupby("target").head(2)


BAD = {
    "lr-not-a-number": (set_param("train", "lr", value="fast"), "train.lr"),
    "one-fold": (set_param("data", "folds", value=1), "data.folds"),
    "labels-for-no-class": (set_param("data", "labeled_fraction", value=0.001), "data.labeled_fraction"),
    "lr-space-up-to-50": (
        set_param("tune", "space", "train.lr", value={"type": "float", "low": 1e-3, "high": 50.0, "log": True}),
        "tune.space.train.lr",
    ),
    "csv-missing-values": (write_csv(with_missing_values, "colour"), str(CSV)),
    "csv-too-few-rows": (write_csv(two_rows_per_class, "data.test_size"), str(CSV)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_params_or_a_bad_csv_stop_at_the_check_and_keep_every_output_byte_identical(case, study):
    break_it, named = BAD[case]
    params, csv = (study / "params.yaml").read_bytes(), (study / CSV).read_bytes()
    before = snapshot(study)
    assert any(k.startswith("models/") for k in before) and any(k.startswith("reports/tuning/") for k in before)
    also = break_it(study)
    try:
        proc = run(["dvc", "repro"], study, check=False)
        assert proc.returncode != 0
        assert stages_run(proc) == {"check"}, proc.stdout
        output = proc.stdout + proc.stderr
        (line,) = [line for line in output.splitlines() if line.startswith("dlpipe check: error:")]
        assert named in line and also in line, line
        assert "Traceback" not in output
        assert snapshot(study) == before
    finally:
        (study / "params.yaml").write_bytes(params)
        (study / CSV).write_bytes(csv)
    again = run(["dvc", "repro"], study)
    assert stages_run(again) == {"check"}  # the same params and CSV again: nothing to redo
    assert snapshot(study) == before


# --- the CSV edited in place ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_touched_csv_with_the_same_contents_reruns_nothing_but_the_check(study):
    before = snapshot(study)
    later = (study / CSV).stat().st_mtime + 60
    os.utime(study / CSV, (later, later))
    status = run(["dvc", "status"], study).stdout
    assert "check" in status and not re.search(r"^(fetch|prepare|baselines|study|select):", status, re.M), status
    proc = run(["dvc", "repro"], study)
    assert stages_run(proc) == {"check"}
    assert snapshot(study) == before


@pytest.mark.slow
def test_a_changed_csv_reruns_fetch_and_everything_after_it(study):
    raw_before = (study / "data" / "raw" / "dataset.json").read_text()
    frame = wine().iloc[10:]  # ten samples fewer, same path
    frame.to_csv(study / CSV, index=False)
    run(["dvc", "repro", "check"], study)  # the check stage records the CSV's contents; `dvc status` sees them
    status = run(["dvc", "status"], study).stdout
    assert re.search(r"^fetch:\s*\n\s*changed deps:\s*\n\s*modified:\s*data/inputs.json", status, re.M), status
    proc = run(["dvc", "repro"], study)
    assert {"fetch", "prepare", "baselines", "study", "select"} <= stages_run(proc)
    assert (study / "data" / "raw" / "dataset.json").read_text() != raw_before
    summary = yaml.safe_load((study / "data" / "prepared" / "summary.json").read_text())
    assert summary["n_samples"] == len(frame)
    assert stages_run(run(["dvc", "repro"], study)) == {"check"}
