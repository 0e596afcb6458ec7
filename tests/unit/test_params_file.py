"""params.yaml is kept in the form DVC writes it, so that `dvc exp run -S key=value` changes one line of it; the
README's GunPoint preset is a study `dvc exp run -S` can run."""

from __future__ import annotations

import difflib
import shlex
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


def readme_preset(dataset: str) -> list[str]:
    """The `-S` overrides of the README's `dvc exp run -S data.name=<dataset> ...` preset (continued lines joined)."""
    text = (REPO_ROOT / "README.md").read_text().replace("\\\n", " ")
    line = next(row for row in text.splitlines() if row.startswith(f"dvc exp run -S data.name={dataset} "))
    words = shlex.split(line)
    return [words[i + 1] for i, word in enumerate(words) if word == "-S"]


def test_the_readme_gunpoint_preset_runs_through_dvcs_overrides(tmp_path: Path) -> None:
    """The README's GunPoint preset, applied as `dvc exp run -S` applies it (plus a one-epoch budget), is a valid
    study of the official split whose architectures train on the series."""
    from helpers.training import CPU

    from dlpipe.config import load_params
    from dlpipe.data.prepared import PreparedData
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages import fetch, prepare
    from dlpipe.training.fit import ModelSpec, evaluate, fit

    overrides = readme_preset("gunpoint")
    assert overrides[:2] == ["data.name=gunpoint", "data.split=official"]
    assert any(o.startswith("architectures=[") for o in overrides)
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO_ROOT / "params.yaml", path)
    set_param(path, *overrides, "train.max_epochs=1")
    params = load_params(path)
    assert (params.data.name, params.data.split, params.train.max_epochs) == ("gunpoint", "official", 1)
    paths = ProjectPaths(tmp_path)
    fetch.run(params, paths)
    paths.prepared.mkdir(parents=True, exist_ok=True)
    summary = prepare.run(params, paths)
    assert (summary["split"], summary["n_train"], summary["n_test"]) == ("official", 50, 150)
    data = PreparedData.load(paths.raw, paths.prepared, znormalize=params.data.znormalize)
    split = data.holdout(params.data.val_size, params.seed)
    for arch in params.architectures:
        spec = ModelSpec(arch, getattr(params.models, arch), params.train)
        result = fit(spec, split, data.dataset.class_names, CPU, params.seed)
        assert result.epochs == 1
        assert len(evaluate(result.module, data.test(split.normalizer), CPU)["confusion_matrix"]) == 2
