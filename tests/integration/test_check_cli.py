"""`dlpipe check` and the check stage judge params and the data they name with the same code: what the stage refuses
(a single-class CSV, a class with one row, a binary file, a labeled_fraction no training part can hold every class
with), `dlpipe check` refuses too, in the same one line, exit 2, before anything is fetched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.processes import subprocess_env
from helpers.project import copy_project, write_params


def csv_rows(labels: list[str]) -> str:
    rng = np.random.default_rng(0)
    return "a,b,target\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{label}\n" for label in labels)


CSV_CASES = {
    "single_class": (csv_rows(["yes"] * 40), "target column 'target' has 1 class"),
    "one_row_class": (csv_rows(["yes"] * 20 + ["no"] * 19 + ["maybe"]), "data.test_size: "),
    "binary": (bytes(range(256)) * 16, "not a readable CSV file"),
}


def run(cmd: list[str], project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def refusal(proc: subprocess.CompletedProcess, prefix: str) -> str:
    """The one error line (after `prefix`) of a refused check; nothing else printed."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    assert "ok" not in proc.stdout
    return lines[0].removeprefix(prefix)


def both_refuse(project: Path) -> str:
    cli = refusal(run(["dlpipe", "check", "params.yaml"], project), "dlpipe check: error: ")
    stage = refusal(run([sys.executable, "pipelines/check.py"], project), "dlpipe check: error: ")
    assert cli == stage  # one code path, one message
    assert not (project / "data" / "raw").exists()  # refused before anything is fetched
    return cli


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_dlpipe_check_refuses_the_csv_the_check_stage_refuses(tmp_path, case):
    project = copy_project(tmp_path / "p")
    content, expected = CSV_CASES[case]
    path = project / "data.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    write_params(project, {"data": {"name": "csv", "csv": {"path": "data.csv"}}, "architectures": ["mlp"]})
    message = both_refuse(project)
    assert str(path) in message and expected in message, message


def test_a_labeled_fraction_no_training_part_holds_every_class_with_is_refused(tmp_path):
    project = copy_project(tmp_path / "p")
    write_params(project, {"data": {"labeled_fraction": 0.001}})
    message = both_refuse(project)
    assert message.startswith("digits: data.labeled_fraction: 0.001 ") and "use at least" in message, message
    enough = float(message.rsplit("use at least ", 1)[1])
    write_params(project, {"data": {"labeled_fraction": enough}})
    ok = run(["dlpipe", "check", "params.yaml"], project)
    assert ok.returncode == 0 and "params.yaml: ok" in ok.stdout, ok.stderr


@pytest.mark.parametrize(
    "content", [bytes(range(256)) * 16, b"data:\n  name: digits\n\x00\x01: [\n"], ids=["binary", "nul"]
)
def test_a_binary_params_file_is_refused_in_one_line(tmp_path, content):
    project = copy_project(tmp_path / "p")
    (project / "params.yaml").write_bytes(content)
    cli = refusal(run(["dlpipe", "check", "params.yaml"], project), "dlpipe check: error: ")
    stage = refusal(run([sys.executable, "pipelines/check.py"], project), "dlpipe check: error: ")
    assert cli.startswith("params.yaml: not ") and stage.startswith(f"{project / 'params.yaml'}: not "), (cli, stage)
    assert cli.split(": ", 1)[1] == stage.split(": ", 1)[1]  # the same message, each naming the file as it was given
