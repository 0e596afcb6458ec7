"""`dlpipe compare A B` on a real DVC repository: a toy stage writes reports/metrics.json in the select stage's
shape from params, two `dvc exp run` variants differ, and the command reads them back through `dvc exp show --json`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers.processes import VENV_BIN, subprocess_env

pytestmark = pytest.mark.slow

WRITE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
pathlib.Path("reports").mkdir(exist_ok=True)
scores = {"perceptron": p["perceptron"], "mlp": p["mlp"]}
json.dump({"champion": max(scores, key=scores.get), **scores, "version": p["version"], "select_run": p["run"]},
          open("reports/metrics.json", "w"))
"""
DVC_YAML = """\
stages:
  select:
    cmd: python write.py
    deps: [write.py]
    params: [perceptron, mlp, version, run]
    metrics:
      - reports/metrics.json:
          cache: false
"""


def sh(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(cwd), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


def dlpipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "dlpipe"), *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(cwd), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "repo"
    root.mkdir()
    (root / "write.py").write_text(WRITE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("perceptron: 0.80\nmlp: 0.85\nversion: 1\nrun: r1\n")
    (root / ".gitignore").write_text("/reports/*\n!/reports/metrics.json\n")  # metrics in git: exp commits carry it
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "t@example.com")
    sh(root, "git", "config", "user.name", "t")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "repro", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "baseline")
    sh(root, "dvc", "exp", "run", "-q", "-n", "wider", "-S", "mlp=0.90", "-S", "version=2", "-S", "run=r2")
    sh(root, "git", "checkout", "-q", "--", ".")  # each variant starts from the baseline's params
    sh(root, "dvc", "exp", "run", "-q", "-n", "deeper", "-S", "perceptron=0.95", "-S", "version=3", "-S", "run=r3")
    sh(root, "git", "checkout", "-q", "--", ".")  # back to the baseline's params in the workspace
    sh(root, "dvc", "repro", "-q")
    return root


def rows(text: str) -> dict[str, list[str]]:
    """The tables' lines by their first word (the prose above them left out)."""
    body = text.split("\n\n", 1)[1]
    return {line.split()[0]: line.split() for line in body.splitlines() if line.strip() and line[0] != " "}


def test_compare_two_experiments(repo: Path) -> None:
    proc = dlpipe(repo, "compare", "wider", "deeper")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("A = wider, B = deeper: the cross-validated selection metric per model")
    assert max(len(line) for line in out.splitlines()) <= 120
    table = rows(out)
    assert table["model"] == ["model", "kind", "A:", "CV", "A:", "test", "B:", "CV", "B:", "test", "B", "-", "A"]
    assert table["perceptron"] == ["perceptron", "deep", "0.8000", "-", "0.9500", "*", "-", "+0.1500"]
    assert table["mlp"] == ["mlp", "deep", "0.9000", "*", "-", "0.8500", "-", "-0.0500"]
    assert table["champion"] == ["champion", "mlp", "perceptron"]
    assert table["registered"] == ["registered", "version", "2", "3"]
    assert table["select"] == ["select", "run", "r2", "r3"]
    # the params that differ, from dvc exp show
    changed = out.split("Parameters that differ:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split() for line in changed[1:]] == [
        ["perceptron", "0.8", "0.95"],
        ["mlp", "0.9", "0.85"],
        ["version", "2", "3"],
        ["run", "r2", "r3"],
    ]
    assert "The champions are not compared:" in out  # no selection.json in these commits


def test_compare_an_experiment_with_a_revision_and_the_workspace(repo: Path) -> None:
    for baseline in ("HEAD", "master", "workspace"):
        proc = dlpipe(repo, "compare", baseline, "wider")
        assert proc.returncode == 0, proc.stderr
        assert rows(proc.stdout)["mlp"] == ["mlp", "deep", "0.8500", "*", "-", "0.9000", "*", "-", "+0.0500"]
        assert rows(proc.stdout)["registered"] == ["registered", "version", "1", "2"]


def test_unknown_experiment_names_the_known_ones(repo: Path) -> None:
    proc = dlpipe(repo, "compare", "wider", "nosuch")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dlpipe compare: error: nosuch: no such DVC experiment or revision; known: ")
    assert {"workspace", "master", "wider", "deeper"} <= set(lines[0].split("known: ")[1].split(", "))


def test_compare_outside_a_dvc_repository_is_one_line(tmp_path: Path) -> None:
    proc = dlpipe(tmp_path, "compare", "a", "b")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "dlpipe compare: error: dvc exp show: you are not inside of a DVC repository (checked up to mount point '/')"
    ]


def test_experiments_view_names_what_each_experiment_changed(repo: Path) -> None:
    proc = dlpipe(repo, "experiments")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120
    rows = {line.split()[0]: line.split(None, 4) for line in lines[2:] if line.strip()}
    assert rows["wider"] == ["wider", "mlp", "0.9000", "2", "mlp=0.9, version=2, run=r2"]
    assert rows["deeper"] == ["deeper", "perceptron", "0.9500", "3", "perceptron=0.95, version=3, run=r3"]
    assert rows["workspace"][-1] == "(none)"
