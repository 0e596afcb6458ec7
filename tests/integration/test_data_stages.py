"""The fetch and prepare stages end to end, params errors through the real CLI and stage scripts, and `dvc repro`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlpipe.config import load_params
from dlpipe.data import DATASETS, load_dataset
from dlpipe.data.store import load_splits
from dlpipe.io import read_json, sha256_file
from dlpipe.models import ARCHITECTURES
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.stages.runner import stage_main

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DLPIPE = str(Path(sys.executable).parent / "dlpipe")
ALL_DATASETS = "digits, breast_cancer, csv, mnist, fashion_mnist, cifar10"


# --------------------------------------------------------------------------------------------------- helpers


def set_params(root: Path, updates: dict, name: str = "params.yaml") -> Path:
    """Write root/<name>: the project's params.yaml with dotted-key `updates` applied."""
    data = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in updates.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    path = root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def run_stage_in_process(name: str, argv: list[str] | None = None) -> int:
    module = {"fetch": fetch, "prepare": prepare}[name]
    return stage_main(name, module.run, argv or [])


# ----------------------------------------------------------------------------------------- fetch and prepare


def test_fetch_writes_the_dataset_and_its_checksum(project):
    assert run_stage_in_process("fetch") == 0
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json", "dataset.npz"]  # no temp files left
    meta = read_json(raw / "dataset.json")
    assert meta["sha256"] == sha256_file(raw / "dataset.npz")
    assert len(meta["sha256"]) == 64
    assert meta["name"] == "digits" and meta["kind"] == "image"
    assert meta["input_shape"] == [1, 8, 8] and meta["n_samples"] == 1797
    assert meta["class_names"] == [str(i) for i in range(10)]
    with np.load(raw / "dataset.npz") as npz:
        assert npz["X"].shape == (1797, 1, 8, 8) and npz["X"].dtype == np.float32
        assert npz["y"].dtype == np.int64


def test_prepare_writes_splits_folds_and_summary(project):
    assert run_stage_in_process("fetch") == 0
    assert run_stage_in_process("prepare") == 0
    prepared = project / "data" / "prepared"
    assert sorted(p.name for p in prepared.iterdir()) == ["folds.json", "splits.npz", "summary.json"]
    splits, subset = load_splits(prepared / "splits.npz")
    assert np.array_equal(subset, np.arange(1797))
    assert len(splits.test_idx) == 360 and len(splits.train_idx) == 1437 and splits.folds == 5

    summary = read_json(prepared / "summary.json")
    assert {k: summary[k] for k in ("dataset", "n_samples", "n_train", "n_test", "n_classes", "folds")} == {
        "dataset": "digits",
        "n_samples": 1797,
        "n_train": 1437,
        "n_test": 360,
        "n_classes": 10,
        "folds": 5,
    }
    y = load_dataset("digits", ".", load_params(project / "params.yaml").data).y.numpy()
    assert list(summary["class_counts"]["test"].values()) == np.bincount(y[splits.test_idx]).tolist()
    assert sum(summary["class_counts"]["train"].values()) == 1437

    folds = read_json(prepared / "folds.json")
    assert list(folds) == [f"fold_{k}" for k in range(5)]
    for k in range(5):
        _, val_idx = splits.fold_indices(k)
        assert list(folds[f"fold_{k}"].values()) == np.bincount(y[val_idx], minlength=10).tolist()
    per_class_total = np.sum([list(f.values()) for f in folds.values()], axis=0)
    assert per_class_total.tolist() == list(summary["class_counts"]["train"].values())


def fetch_and_prepare(root: Path, updates: dict) -> Path:
    set_params(root, updates)
    params, paths = load_params(root / "params.yaml"), ProjectPaths(root)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return root / "data" / "prepared" / "splits.npz"


def test_same_seed_gives_byte_identical_splits_and_another_seed_does_not(tmp_path, make_project):
    a = fetch_and_prepare(make_project(tmp_path / "a"), {"seed": 42})
    b = fetch_and_prepare(make_project(tmp_path / "b"), {"seed": 42})
    c = fetch_and_prepare(make_project(tmp_path / "c"), {"seed": 43})
    assert a.read_bytes() == b.read_bytes()
    for name in ("folds.json", "summary.json"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert a.read_bytes() != c.read_bytes()
    (sa, _), (sc, _) = load_splits(a), load_splits(c)
    assert not np.array_equal(sa.test_idx, sc.test_idx)
    assert not np.array_equal(sa.fold, sc.fold)


@pytest.mark.parametrize("limit", [None, 300])
def test_prepared_splits_cover_the_data_without_overlap(project, limit):
    path = fetch_and_prepare(project, {"data.limit": limit, "data.folds": 4, "seed": 5})
    splits, subset = load_splits(path)
    n = 1797 if limit is None else limit
    assert len(subset) == n and len(np.unique(subset)) == n and subset.max() < 1797
    train, test = splits.train_idx, splits.test_idx
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(n))  # indices into the (subset of the) data
    assert splits.folds == 4
    val_parts = [splits.fold_indices(k)[1] for k in range(4)]
    assert np.array_equal(np.sort(np.concatenate(val_parts)), train)  # the folds partition the training part
    y = load_dataset("digits", ".", None).y.numpy()[subset]
    p_all = np.bincount(y, minlength=10) / n
    assert np.abs(np.bincount(y[test], minlength=10) - len(test) * p_all).max() <= 1.0
    p_train = np.bincount(y[train], minlength=10) / len(train)
    for part in val_parts:
        assert np.abs(np.bincount(y[part], minlength=10) - len(part) * p_train).max() <= 1.0


def test_prepare_stores_indices_only(project):
    """Normalisation statistics are fitted by whoever trains, on exactly its training samples: none are stored."""
    path = fetch_and_prepare(project, {"data.limit": 100, "seed": 1})
    with np.load(path) as npz:
        assert sorted(npz.files) == ["fold", "subset", "test_idx", "train_idx"]


def test_prepare_before_fetch_exits_2(project, capsys):
    assert run_stage_in_process("prepare") == 2
    err = capsys.readouterr().err
    assert "dlpipe prepare: error:" in err and "run the fetch stage first (dvc repro fetch)" in err
    assert not (project / "data" / "prepared").exists()


# ------------------------------------------------------------------------------------------------------ csv


def test_csv_path_is_relative_to_the_project_root_not_the_working_directory(project, tmp_path, monkeypatch):
    (project / "table.csv").write_text("a,b,target\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)))
    set_params(project, {"data.name": "csv", "data.csv.path": "table.csv", "architectures": ["mlp"]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # DLPIPE_ROOT still points at the project
    assert run_stage_in_process("fetch") == 0
    assert read_json(project / "data" / "raw" / "dataset.json")["n_samples"] == 30
    assert list(elsewhere.iterdir()) == []


def test_csv_problem_exits_2_without_outputs(project, capsys):
    (project / "bad.csv").write_text("a,colour,target\n1,red,0\n2,,1\n")  # text is a category; a gap is not
    set_params(project, {"data.name": "csv", "data.csv.path": "bad.csv", "architectures": ["mlp"]})
    assert run_stage_in_process("fetch") == 2
    err = capsys.readouterr().err
    assert "dlpipe fetch: error:" in err and "missing values in column(s) colour" in err
    assert not (project / "data" / "raw" / "dataset.npz").exists()


# ------------------------------------------------------------------- bad params: the real CLI and stage scripts

BAD_PARAMS = {  # id: (params file text, or None for no file; substrings the error must contain)
    "unknown-key": (
        "train:\n  lrr: 0.1\n",
        ["bad.yaml: train.lrr: unknown key; allowed: max_epochs, batch_size, optimizer, lr, momentum"],
    ),
    "wrong-type": (
        "train:\n  batch_size: abc\n",
        ["bad.yaml: train.batch_size: Input should be a valid integer", "(got 'abc')"],
    ),
    "out-of-range": (
        "data:\n  test_size: 1.5\n",
        ["bad.yaml: data.test_size: Input should be less than 1 (got 1.5)"],
    ),
    "unknown-dataset": (
        "data:\n  name: nope\n",
        [f"bad.yaml: data.name: unknown dataset 'nope'; allowed: {ALL_DATASETS}"],
    ),
    "unknown-architecture": (
        "architectures: [mlp, nonet]\n",
        ["bad.yaml: architectures.1: unknown architecture 'nonet'; allowed: perceptron, mlp, wide_deep, cnn"],
    ),
    "architecture-incompatible": (
        "data:\n  name: breast_cancer\narchitectures: [cnn]\n",
        [
            "bad.yaml: architectures.0: 'cnn' takes image input but dataset 'breast_cancer' is tabular; "
            "allowed for tabular: perceptron, mlp, wide_deep"
        ],
    ),
    "empty-search-range": (
        "tune:\n  space:\n    train.lr: {type: float, low: 0.1, high: 0.01}\n",
        ["bad.yaml: tune.space.train.lr: empty range: low (0.1) must be below high (0.01)"],
    ),
    "unknown-hyperparameter": (
        "tune:\n  space:\n    train.lrr: {type: float, low: 0.001, high: 0.01}\n",
        ["bad.yaml: tune.space.train.lrr: unknown hyperparameter; allowed:", "train.lr,"],
    ),
    "missing-file": (None, ["bad.yaml: params file not found"]),
    "invalid-yaml": ("data: [\n  name: digits\n", ["bad.yaml: not valid YAML ("]),
}


CSV_TEXT = "".join(
    f"{i % 7}.5,{(i * 13) % 11},{i % 5 - 2},{['setosa', 'versicolor', 'virginica'][i % 3]}\n" for i in range(60)
)


def run_command(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `args` in its own process group, so a timeout kills its children too (dvc runs stage scripts)."""
    with subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@dataclass
class Job:
    """Commands run one after the other in `root` (stopping at the first failure), and what they left."""

    root: Path
    commands: list[list[str]]
    env: dict
    before: set[str] = field(default_factory=set)
    results: list[subprocess.CompletedProcess] = field(default_factory=list)

    def run(self) -> None:
        for command in self.commands:
            self.results.append(run_command(command, self.root, self.env))
            if self.results[-1].returncode != 0:
                break


def tampered_project(root: Path) -> None:
    """A fetched project whose data/raw/dataset.npz was changed after its checksum was recorded."""
    fetch.run(load_params(root / "params.yaml"), ProjectPaths(root))
    data_path = root / "data" / "raw" / "dataset.npz"
    with np.load(data_path) as npz:
        X, y = npz["X"].copy(), npz["y"]
    X[5] += 0.25
    with open(data_path, "wb") as fh:
        np.savez(fh, X=X, y=y)


def csv_project(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data" / "flowers.csv").write_text("f1,f2,f3,species\n" + CSV_TEXT)
    csv = {"path": "data/flowers.csv", "target": "species"}
    set_params(root, {"data.name": "csv", "data.csv": csv, "data.folds": 3, "architectures": ["perceptron", "mlp"]})


@pytest.fixture(scope="module")
def processes(tmp_path_factory, make_project, make_subprocess_env) -> dict[tuple[str, str], Job]:
    """Every real-process run of this module, run side by side (each process spends ~2 s importing torch):
    each BAD_PARAMS case through `dlpipe check` and `pipelines/prepare.py`, `dlpipe check` of a valid file,
    `dlpipe list`, prepare on a tampered dataset, and the fetch + prepare scripts on a CSV dataset."""

    def new_job(name: str, commands: list[list[str]], setup=None) -> Job:
        root = make_project(tmp_path_factory.mktemp(name) / "project")
        if setup is not None:
            setup(root)
        return Job(root, commands, make_subprocess_env(root), before=files_under(root))

    fetch_script, prepare_script = [PYTHON, "pipelines/fetch.py"], [PYTHON, "pipelines/prepare.py"]
    jobs = {
        ("tampered", "script"): new_job("tampered", [prepare_script], tampered_project),
        ("csv", "script"): new_job("csv", [fetch_script, prepare_script], csv_project),
        ("valid", "cli"): new_job("valid", [[DLPIPE, "check", "params.yaml"]]),
        ("list", "cli"): new_job("list", [[DLPIPE, "list"]]),
    }
    for case, (text, _) in BAD_PARAMS.items():

        def write_bad(root: Path, text: str | None = text) -> None:
            if text is not None:
                (root / "bad.yaml").write_text(text)

        jobs[(case, "cli")] = new_job(case, [[DLPIPE, "check", "bad.yaml"]], write_bad)
        jobs[(case, "script")] = new_job(case, [[*prepare_script, "--params", "bad.yaml"]], write_bad)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(job.run) for job in jobs.values()]:
            future.result()
    return jobs


@pytest.mark.parametrize("how", ["cli", "script"])
@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_bad_params_exit_2_naming_the_key(processes, case, how):
    job = processes[(case, how)]
    (result,) = job.results
    prog = "dlpipe check" if how == "cli" else "dlpipe prepare"
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert lines, result.stderr
    message = "\n".join(lines)
    for part in BAD_PARAMS[case][1]:
        assert part in message, message
    if how == "cli":
        assert result.stdout == ""
    assert files_under(job.root) == job.before  # nothing written: no data/, no partial outputs
    assert not (job.root / "data").exists()


def test_cli_check_valid_file_exits_0(processes):
    job = processes[("valid", "cli")]
    (result,) = job.results
    assert result.returncode == 0, result.stderr
    archs = load_params(job.root / "params.yaml").architectures
    assert result.stdout.strip() == f"params.yaml: ok (digits; {', '.join(archs)})"
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    assert files_under(job.root) == job.before


def test_cli_list_prints_every_architecture_and_dataset_with_kinds(processes):
    (result,) = processes[("list", "cli")].results
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "architectures:"
    assert max(len(line) for line in lines) <= 120
    entries = [line for line in lines if not line.startswith("   ")]  # a wrapped description continues indented
    split_at = entries.index("datasets:")
    arch_lines = {line.split()[0]: line.split()[1] for line in entries[1:split_at]}
    data_lines = {line.split()[0]: line.split()[1] for line in entries[split_at + 1 :]}
    assert arch_lines == {name: "/".join(sorted(arch.kinds)) for name, arch in ARCHITECTURES.items()}
    assert data_lines == {name: info.kind for name, info in DATASETS.items()}
    assert arch_lines["cnn"] == "image" and arch_lines["mlp"] == "image/tabular"
    assert data_lines["breast_cancer"] == "tabular" and data_lines["cifar10"] == "image"


def test_prepare_script_detects_a_tampered_dataset(processes):
    job = processes[("tampered", "script")]
    (result,) = job.results
    data_path = job.root / "data" / "raw" / "dataset.npz"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"dlpipe prepare: error: {data_path}: checksum does not match" in result.stderr
    assert "run the fetch stage again" in result.stderr
    assert not (job.root / "data" / "prepared").exists()
    assert files_under(job.root) == job.before


def test_csv_fetch_and_prepare_scripts_end_to_end(processes):
    job = processes[("csv", "script")]
    assert [r.returncode for r in job.results] == [0, 0], [r.stderr for r in job.results]
    assert all("Traceback" not in r.stderr for r in job.results)
    raw, prepared = job.root / "data" / "raw", job.root / "data" / "prepared"
    meta = read_json(raw / "dataset.json")
    assert meta["name"] == "csv" and meta["kind"] == "tabular"
    assert meta["class_names"] == ["setosa", "versicolor", "virginica"]
    assert meta["input_shape"] == [3] and meta["n_samples"] == 60
    assert meta["sha256"] == sha256_file(raw / "dataset.npz")
    with np.load(raw / "dataset.npz") as npz:
        assert npz["X"][:2].tolist() == [[0.5, 0.0, -2.0], [1.5, 2.0, -1.0]]
        assert npz["y"][:4].tolist() == [0, 1, 2, 0]

    summary = read_json(prepared / "summary.json")
    assert (summary["n_samples"], summary["n_train"], summary["n_test"], summary["folds"]) == (60, 48, 12, 3)
    assert summary["class_counts"]["test"] == {"setosa": 4, "versicolor": 4, "virginica": 4}
    folds = read_json(prepared / "folds.json")
    assert [sum(counts.values()) for counts in folds.values()] == [16, 16, 16]
    for name in ("setosa", "versicolor", "virginica"):  # 16 training samples per class over 3 folds: 6, 5, 5
        assert sorted(counts[name] for counts in folds.values()) == [5, 5, 6]
    new_files = files_under(job.root) - job.before
    assert new_files == {
        "data/raw/dataset.npz",
        "data/raw/dataset.json",
        "data/prepared/splits.npz",
        "data/prepared/folds.json",
        "data/prepared/summary.json",
    }


# ----------------------------------------------------------------------------------------------- dvc repro


def dvc(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = run_command(["dvc", *args], project, env)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dvc_repro_runs_fetch_and_prepare_then_only_what_changed(tmp_path, make_project, make_subprocess_env):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = make_project(tmp_path / "study")
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = make_subprocess_env()  # no DLPIPE_ROOT: DVC runs stages from the project root
    env.update({"DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path / "home")})
    (tmp_path / "home").mkdir()
    run_command(["git", "init", "-q"], root, env).check_returncode()
    dvc(root, env, "init", "-q")
    dvc(root, env, "config", "core.analytics", "false")

    # `dvc repro prepare`: the prepare stage and what it depends on (later stages train models)
    first = dvc(root, env, "repro", "prepare")
    assert "Running stage 'fetch'" in first.stdout and "Running stage 'prepare'" in first.stdout
    assert (root / "dvc.lock").is_file()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"check", "fetch", "prepare"}
    assert lock["prepare"]["params"]["params.yaml"]["data.folds"] == 5
    assert read_json(root / "data" / "prepared" / "summary.json")["folds"] == 5

    second = dvc(root, env, "repro", "prepare")
    # only the check stage runs (every time, by design); its unchanged output reruns nothing
    assert re.findall(r"Running stage '([^']+)'", second.stdout) == ["check"]

    set_params(root, {"data.folds": 3})
    third = dvc(root, env, "repro", "prepare")
    assert "Running stage 'prepare'" in third.stdout
    assert "Running stage 'fetch'" not in third.stdout
    assert read_json(root / "data" / "prepared" / "summary.json")["folds"] == 3
    assert list(read_json(root / "data" / "prepared" / "folds.json")) == ["fold_0", "fold_1", "fold_2"]
