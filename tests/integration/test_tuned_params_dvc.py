"""A no-change `dvc repro` reruns nothing that reads reports/tuned.yaml, with a tuned float that DVC's dvc.lock
rewrite once changed (5.896835909914791e-05 -> ...790e-05, so select reran every other time).

A real DVC project of three stages shaped like the study's: `check` (always changed, so dvc.lock is rewritten on
every repro), `study` (writes reports/tuned.yaml with the study stage's own writer) and `select` (reads it as a
params file)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

PROBLEM = 5.896835909914791e-05

DVC_YAML = """\
stages:
  check:
    cmd: python -c "print('checked')"
    always_changed: true
  study:
    cmd: python write_tuned.py
    deps:
      - write_tuned.py
    outs:
      - reports/tuned.yaml:
          cache: false
  select:
    cmd: python -c "open('selections.log', 'a').write('select\\n')"
    params:
      - reports/tuned.yaml:
"""

WRITE_TUNED = """\
import json
from pathlib import Path
from types import SimpleNamespace

from dlpipe.paths import ProjectPaths
from dlpipe.stages.study import write_tuned_params

paths = ProjectPaths(Path.cwd())
best = json.loads(Path("best_params.json").read_text())
for arch, params in best.items():
    paths.tuning_report(arch).parent.mkdir(parents=True, exist_ok=True)
    paths.tuning_report(arch).write_text(json.dumps({"best_params": params}))
write_tuned_params(SimpleNamespace(architectures=list(best)), paths)
"""


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "write_tuned.py").write_text(textwrap.dedent(WRITE_TUNED))
    best = {"perceptron": {"train.batch_size": 32, "train.l2": PROBLEM, "train.lr": 0.008548558997574835}}
    (tmp_path / "best_params.json").write_text(json.dumps(best))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run(cmd, tmp_path)
    return tmp_path


def test_no_change_repros_rerun_nothing_but_check(project: Path) -> None:
    first = run(["dvc", "repro"], project)
    assert set(re.findall(r"Running stage '([^']+)'", first)) == {"check", "study", "select"}
    for i in range(3):
        out = run(["dvc", "repro"], project)
        ran = set(re.findall(r"Running stage '([^']+)'", out))
        assert ran == {"check"}, f"no-change repro {i + 2} ran {sorted(ran)}\n{out}"
    assert (project / "selections.log").read_text() == "select\n"
    assert "train.l2: 5.89683590991e-05" in (project / "dvc.lock").read_text()  # 12 significant digits
