"""Dataset files a user copies (or fetch downloads) live in data/downloads/, which no stage outputs: DVC deletes
data/raw before every fetch, and once deleted the MNIST or CIFAR-10 files a user had copied there, so that an offline
fetch failed. These tests put real-format files where the README says, with no network, and run fetch (in-process,
and as `dvc repro` runs it)."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.dataset_files import make_idx_files, publish_md5s, write_cifar
from helpers.processes import subprocess_env
from helpers.project import copy_dvc_study, copy_project, git_dvc_init, write_params
from torchvision.datasets import MNIST

from dlpipe.config import load_params
from dlpipe.data.store import load_saved_dataset
from dlpipe.data.torchvision_sets import CIFAR_DIR
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def project_for(root: Path, name: str) -> tuple:
    copy_project(root)
    write_params(root, {"data": {"name": name}, "architectures": ["mlp"]})
    return load_params(root / "params.yaml"), ProjectPaths(root)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_fetch_reads_idx_files_from_data_downloads(tmp_path, offline, name, folder):
    params, paths = project_for(tmp_path, name)
    parts = make_idx_files(paths.downloads, folder, n_train=14, n_test=6, seed=3)
    copied = file_bytes(paths.downloads)
    assert sorted(copied) == sorted(
        f"{folder}/raw/{f}"
        for f in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )
    meta = fetch.run(params, paths)
    ds = load_saved_dataset(paths.raw, verify=True)
    assert meta["n_samples"] == 20 and ds.name == name
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    assert ds.y.tolist() == labels.tolist()
    assert file_bytes(paths.downloads) == copied  # read, never changed


def test_fetch_reads_the_original_gz_files(tmp_path, offline, monkeypatch):
    """The files as published (gzipped IDX): torchvision checks their md5 and unpacks them, no download."""
    params, paths = project_for(tmp_path, "mnist")
    parts = make_idx_files(paths.downloads, "MNIST", n_train=10, n_test=5, seed=4)
    raw = paths.downloads / "MNIST" / "raw"
    resources = []
    for name, _ in MNIST.resources:
        plain = raw / name.removesuffix(".gz")
        (raw / name).write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
        resources.append((name, hashlib.md5((raw / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(MNIST, "resources", resources)  # as published: these files' md5
    fetch.run(params, paths)
    ds = load_saved_dataset(paths.raw)
    assert ds.y.tolist() == np.concatenate([parts["train"][1], parts["t10k"][1]]).tolist()


def test_fetch_reads_cifar_batches_from_data_downloads(tmp_path, offline, monkeypatch):
    params, paths = project_for(tmp_path, "cifar10")
    data, labels = write_cifar(paths.downloads, per_batch=3, seed=5)
    publish_md5s(monkeypatch, paths.downloads / CIFAR_DIR)
    copied = file_bytes(paths.downloads)
    fetch.run(params, paths)
    ds = load_saved_dataset(paths.raw, verify=True)
    assert ds.name == "cifar10" and len(ds) == 18 and ds.y.tolist() == labels.tolist()
    assert ds.X.dtype == torch.uint8 and np.array_equal(ds.X.numpy().reshape(18, 3072), data)
    assert file_bytes(paths.downloads) == copied


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dvc_repro_fetch_keeps_the_files_a_user_copied(tmp_path):
    """`dvc repro` deletes data/raw before it runs fetch; the MNIST files copied into data/downloads/ stay, and fetch
    reads them offline (a dead proxy makes every download attempt fail at once)."""
    root = copy_dvc_study(tmp_path / "study", {"data": {"name": "mnist"}, "architectures": ["mlp"]})
    env = subprocess_env()
    for cmd in git_dvc_init("study"):
        assert run(cmd, root, env).returncode == 0
    parts = make_idx_files(ProjectPaths(root).downloads, "MNIST", n_train=12, n_test=8, seed=6)
    copied = file_bytes(root / "data" / "downloads")
    env.update({k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    for cmd in (["dvc", "repro", "fetch"], ["dvc", "repro", "--force", "fetch"]):
        proc = run(cmd, root, env)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Running stage 'fetch'" in proc.stdout
        assert file_bytes(root / "data" / "downloads") == copied
        meta = json.loads((root / "data" / "raw" / "dataset.json").read_text())
        assert meta["name"] == "mnist" and meta["n_samples"] == 20
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    assert load_saved_dataset(root / "data" / "raw").y.tolist() == labels.tolist()
    assert "data/downloads" not in (root / "dvc.lock").read_text()  # no stage's output


def test_an_mnist_study_keeps_8_bit_pixels_and_learns(tmp_path, offline, monkeypatch):
    from helpers.project import REPO_ROOT

    from dlpipe.data.prepared import PreparedData
    from dlpipe.evaluation.cv import run_fold
    from dlpipe.stages import prepare
    from dlpipe.stages.common import model_spec

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import scale  # learnable digit images in MNIST's IDX files

    params, paths = project_for(tmp_path, "mnist")
    scale.write_mnist(paths.downloads / "MNIST" / "raw", 700)
    fetch.run(params, paths)
    prepare.run(params, paths)
    data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
    assert data.dataset.X.dtype == torch.uint8 and data.fold(0, 0.1, 0).fit.train.X.dtype == torch.uint8
    spec = model_spec(params, paths, "mlp")
    result = run_fold(spec, data, 0, params.trainer, params.seed, val_size=params.data.val_size, max_epochs=10)
    assert result.metrics["accuracy"] >= 0.5, result.metrics  # 10 classes: chance is 0.1 (0.68 measured)
