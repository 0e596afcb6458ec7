"""The whole study from `dvc repro`, as a new user runs it, on a fresh git + DVC copy of the repository.

A small override (two architectures, two trials, two folds, two epochs) keeps it to a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.mlflow_store import project_client
from helpers.processes import subprocess_env
from helpers.project import copy_dvc_study, git_dvc_init

pytestmark = pytest.mark.slow

ARCHS = ["perceptron", "mlp"]
OVERRIDE = {
    "data": {"limit": 400, "folds": 2},
    "architectures": ARCHS,
    "models": {"mlp": {"hidden": [32]}},
    "train": {"max_epochs": 2},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "tune": {"n_trials": 2, "max_epochs": 2},
    "baselines": {"models": ["logreg"]},
}
TIMEOUT = 900


def run(cmd: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{tail}"
    return proc


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project (git + DVC) with the small override, after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e") / "study"
    copy_dvc_study(root, OVERRIDE)
    for cmd in git_dvc_init("study"):
        run(cmd, root)
    first = run(["dvc", "repro"], root)
    (root / "first_repro.log").write_text(first.stdout + first.stderr)
    return root


def test_first_repro_runs_every_stage(study: Path):
    ran = stages_run((study / "first_repro.log").read_text())
    assert ran == {"check", "fetch", "prepare", "baselines", "study", "select"}
    for arch in ARCHS:
        for report in ("tuning", "cv", "test"):
            assert (study / "reports" / report / f"{arch}.json").is_file()
        assert (study / "models" / arch / "params.json").is_file()
    assert "| model" in (study / "reports" / "leaderboard.md").read_text()


def test_stages_print_no_python_warning(study: Path):
    log = (study / "first_repro.log").read_text()
    assert not re.findall(r"\b\w*Warning\b: .*", log), re.findall(r".*\b\w*Warning\b: .*", log)[:5]


def test_metrics_show_has_the_champions_scores_and_fits_120_columns(study: Path):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], study).stdout)
    workspace = next(iter(shown.values()))["data"]  # the workspace's entry (DVC keys it "" or "workspace")
    assert set(workspace) == {"reports/metrics.json"}  # the rest are outputs, not metrics
    metrics = workspace["reports/metrics.json"]["data"]
    selection = json.loads((study / "reports" / "selection.json").read_text())
    assert metrics["champion"] == selection["winner"]
    assert metrics["select_run"] == selection["mlflow_run_id"]
    assert metrics["version"] == selection["registry"]["version"]
    assert 0.0 < metrics["cv_mean"] <= 1.0 and metrics["cv_std"] >= 0.0 and 0.0 < metrics["test"] <= 1.0
    assert not set(ARCHS) & set(metrics)  # every model's scores: reports/leaderboard.csv
    lines = run(["dvc", "metrics", "show"], study).stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 120, lines


def test_mlflow_holds_the_run_tree_and_a_champion(study: Path):
    client = project_client(study)
    exp = client.get_experiment_by_name("dlpipe/digits")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_id: [] for r in top}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent in children:
            children[parent].append(r)
    for stage, n_children in (("tune", 2), ("cv", 2), ("train", 0)):
        for arch in ARCHS:
            parents = [r for r in top if r.data.tags.get("stage") == stage and r.data.tags.get("architecture") == arch]
            assert len(parents) == 1, (stage, arch, len(parents))
            assert parents[0].info.status == "FINISHED"
            kids = children[parents[0].info.run_id]
            assert len(kids) == n_children, (stage, arch, len(kids))
            assert all(k.info.status == "FINISHED" for k in kids)
    assert all(r.info.status != "RUNNING" for r in runs)
    champion = client.get_model_version_by_alias("dlpipe-digits", "champion")
    challenger = client.get_model_version_by_alias("dlpipe-digits", "challenger")
    assert champion.version == challenger.version
    selection = json.loads((study / "reports" / "selection.json").read_text())
    assert champion.tags["architecture"] == selection["winner"]


def test_second_repro_is_a_no_op(study: Path):
    # three times: each repro rewrites dvc.lock, and a tuned value that changed in a rewrite reran select every other
    for i in range(3):
        out = run(["dvc", "repro"], study).stdout
        assert stages_run(out) == {"check"}, f"no-change repro {i + 2}:\n{out}"  # check runs every time
        assert "didn't change, skipping" in out and "Running stage 'study'" not in out


def _runs(study: Path, stage: str) -> dict[str, int]:
    client = project_client(study)
    exp = client.get_experiment_by_name("dlpipe/digits")
    runs = client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'", max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return {arch: sum(r.data.tags.get("architecture") == arch for r in top) for arch in ARCHS}


def test_changing_one_architecture_retrains_only_that_architecture(study: Path):
    before = {stage: _runs(study, stage) for stage in ("tune", "cv", "train")}
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["models"]["mlp"]["init"] = "xavier"  # not tuned: a new study, folds and fit for the mlp alone
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], study).stdout
    assert stages_run(out) == {"check", "study", "select"}
    after = {stage: _runs(study, stage) for stage in ("tune", "cv", "train")}
    for stage in ("tune", "cv", "train"):  # the study stage reused the perceptron's study, folds and fit
        assert after[stage] == {"perceptron": before[stage]["perceptron"], "mlp": before[stage]["mlp"] + 1}, stage
    # the new select run links exactly the cv and train runs whose numbers are on the leaderboard: the perceptron's
    # reused ones and the mlp's new ones
    board = pd.read_csv(study / "reports" / "leaderboard.csv")
    selection = json.loads((study / "reports" / "selection.json").read_text())
    tags = project_client(study).get_run(selection["mlflow_run_id"]).data.tags
    for _, row in board[board["kind"] == "deep"].iterrows():
        assert tags[f"runs.{row['architecture']}.cv"] == row["cv_run_id"]
        assert tags[f"runs.{row['architecture']}.train"] == row["train_run_id"]
    run(["git", "add", "-A"], study)
    run(["git", "commit", "-qm", "mlp xavier init"], study)


def _train_runs(study: Path) -> int:
    client = project_client(study)
    exp = client.get_experiment_by_name("dlpipe/digits")
    return len(client.search_runs([exp.experiment_id], "tags.stage = 'train'", max_results=1000))


def _rows(shown: list) -> dict[str, dict]:
    """`dvc exp show --json` entries by name: the baseline branch's row and every experiment's."""
    rows = {}
    for entry in shown:
        if entry.get("name"):
            rows[entry["name"]] = entry["data"]
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name"):
                    rows[rev["name"]] = rev["data"]
    return rows


def test_exp_run_variant_is_compared_with_its_baseline_and_tracked(study: Path):
    """The committed study is the baseline row; a variant shows its champion, CV scores, the tuned params, the select
    run and version beside it, `dvc metrics diff` shows the difference, and its MLflow runs name the experiment."""
    before = _train_runs(study)
    run(["dvc", "exp", "run", "-n", "three-epochs", "-S", "train.max_epochs=3"], study)
    rows = _rows(json.loads(run(["dvc", "exp", "show", "--json"], study).stdout))
    branch = next(name for name in rows if name != "three-epochs")
    for name in (branch, "three-epochs"):
        metrics = rows[name]["metrics"]["reports/metrics.json"]["data"]
        assert metrics["champion"] in ARCHS and 0 < metrics["cv_mean"] <= 1, (name, metrics)
        assert len(metrics["select_run"]) == 32 and metrics["version"] >= 1
        tuned = rows[name]["params"]["reports/tuned.yaml"]["data"]
        assert set(tuned) == set(ARCHS) and "train.lr" in tuned["mlp"]
    assert (
        rows[branch]["metrics"]["reports/metrics.json"]["data"]["select_run"]
        != (rows["three-epochs"]["metrics"]["reports/metrics.json"]["data"]["select_run"])
    )
    diff = subprocess.run(["dvc", "metrics", "diff"], cwd=study, env=subprocess_env(), capture_output=True, text=True)
    assert diff.returncode == 0 and "reports/metrics.json" in diff.stdout, diff.stdout + diff.stderr
    assert _train_runs(study) == before + len(ARCHS)
    client = project_client(study)
    exp = client.get_experiment_by_name("dlpipe/digits")
    tagged = client.search_runs([exp.experiment_id], "tags.`dvc.exp_name` = 'three-epochs'", max_results=1000)
    assert {r.data.tags["stage"] for r in tagged} >= {"tune", "cv", "train", "select"}


def test_exp_show_of_what_changed_fits_a_wide_terminal(study: Path):
    """DVC shows every params.yaml key (about 170 here) and collapses columns it cannot fit to ~2 characters each, so
    no terminal fits the plain `dvc exp show`; the README's invocation shows what changed, champion kept."""
    env = {**subprocess_env(), "COLUMNS": "160"}
    cmd = ["dvc", "exp", "show", "--no-pager", "--only-changed", "--keep", "^champion$"]
    out = subprocess.run(cmd, cwd=study, env=env, capture_output=True, text=True)
    header = next(line for line in out.stdout.splitlines() if "Experiment" in line)
    cut = header.find("…")
    # metrics.json holds the champion's scores alone (every model's are in the leaderboard), so they and the
    # changed param stay in view
    for column in ("champion", "cv_mean", "cv_std", "test", "train.max_epochs"):
        assert column in header and (cut < 0 or header.index(column) < cut), header


def test_queued_experiment_runs_in_a_temp_copy_and_records_into_the_project(study: Path):
    before = _train_runs(study)
    run(["dvc", "exp", "run", "--queue", "-n", "queued-seed", "-S", "seed=7"], study)
    run(["dvc", "queue", "start"], study)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], study).stdout
        if "queued-seed" in status and re.search(r"queued-seed\s.*(Success|Failed)", status):
            break
        time.sleep(5)
    assert re.search(r"queued-seed\s.*Success", status), status
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], study).stdout))
    assert "queued-seed" in shown
    assert _train_runs(study) == before + len(ARCHS)
    assert not list((study / ".dvc" / "tmp" / "exps").glob("**/mlruns/mlflow.db"))
