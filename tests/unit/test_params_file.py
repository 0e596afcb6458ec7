"""params.yaml is kept in the form DVC writes it, so that `dvc exp run -S key=value` changes one line of it."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.project import REPO_ROOT


def set_param(path: Path, *overrides: str) -> None:
    """What `dvc exp run -S` does to a params file (dvc.repo.experiments.queue.base._update_params without Hydra):
    load it with ruamel's round-trip loader, apply the overrides, dump it with DVC's YAML dumper."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(path), list(overrides))


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.max_epochs=3", "  max_epochs: 3           # the most epochs per fit"),
        ("data.limit=200", "  limit: 200              # stratified subsample"),
    ],
)
def test_a_set_param_changes_one_line_of_params_yaml(tmp_path: Path, override: str, line: str) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO_ROOT / "params.yaml", params)
    before = params.read_text()
    set_param(params, override)
    after = params.read_text()
    diff = changed_lines(before, after)
    assert len(diff) == 2, "\n".join(diff[:40])  # one line out, one line in
    assert diff[1].startswith("+" + line), diff
    key, value = override.split("=")
    section, name = key.split(".")
    assert yaml.safe_load(after)[section][name] == int(value)


def test_params_yaml_is_a_fixed_point_of_dvcs_dump(tmp_path: Path) -> None:
    """Setting a key to the value it has rewrites nothing (no `null` turned blank, no inline list turned block)."""
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO_ROOT / "params.yaml", params)
    set_param(params, "train.max_epochs=" + str(yaml.safe_load(params.read_text())["train"]["max_epochs"]))
    assert changed_lines((REPO_ROOT / "params.yaml").read_text(), params.read_text()) == []
