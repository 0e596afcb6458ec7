"""`dlpipe check` refuses what tuning would refuse (issue #11.7): a search space whose values training rejects is
a bad param, named in one line, before any stage runs."""

from __future__ import annotations

import subprocess

import yaml
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, deep_merge


def test_dlpipe_check_refuses_a_shared_search_space_of_learning_rates_up_to_50_in_one_line(tmp_path):
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())  # eight architectures share tune.space
    bad = {"tune": {"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 50.0, "log": True}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, bad), sort_keys=False))
    proc = subprocess.run(
        ["dlpipe", "check", "params.yaml"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        "dlpipe check: error: params.yaml: tune.space.train.lr: 50.0 is not a valid train.lr for "
        f"{', '.join(base['architectures'])} ("
    )
    assert "less than or equal to 10" in line
    assert proc.stdout == ""
