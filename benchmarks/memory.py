"""Peak memory of one worker's data path at full size: fetch, prepare, load and one fit on N images.

`--shape mnist`: N 28x28 images in MNIST's IDX format (benchmarks/scale.py's digits). `--shape cifar10`: N 32x32x3
images as CIFAR-10's python batches (5 data batches and a test batch of N / 6 each: 50,000 + 10,000 for N = 60,000;
each class its own brightness, so that a fold learns something). Both written by this process; each code version then
runs in a process of its own (fresh project, that version's `src/` first on PYTHONPATH): fetch and prepare (the
stages' code, in-process), then the study's view of the data and one cross-validation fold of an mlp for one epoch,
as a study worker runs it. Reported: the process's peak RSS after prepare, after loading the prepared data, and after
the fit.

    .venv/bin/python benchmarks/memory.py [--shape mnist|cifar10] [--images 60000] [--compare REF]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as bench  # benchmarks/ is no package
import scale

PARAMS = ["architectures=[mlp]", "baselines.models=[]", "trainer.accelerator=cpu"]
SHAPES = {"mnist": "28 x 28", "cifar10": "32 x 32 x 3"}
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_cifar(folder: Path, n: int, seed: int = 0) -> None:
    """CIFAR-10's python batches under `folder` with `n` images in all (uint8 rows of 3072: red, green, blue)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per = n // len(CIFAR_FILES)
    for name in CIFAR_FILES:
        labels = rng.integers(0, 10, per)
        data = rng.integers(0, 160, (per, 3072), dtype=np.uint8) + (labels * 10).astype(np.uint8)[:, None]
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "data": data, "labels": labels.tolist(), "filenames": []}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR_LABELS, "num_cases_per_batch": per, "num_vis": 3072}, fh)


def publish_cifar_md5s(folder: Path) -> None:
    """In this process: the md5 of the written CIFAR-10 files are the published ones (the fetch refuses others)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    md5 = {p.name: calculate_md5(str(p)) for p in folder.iterdir()}
    CIFAR10.train_list = [[name, md5[name]] for name, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[name, md5[name]] for name, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]}


def one(root: Path, n: int) -> dict:
    """In this process: fetch, prepare, load, one fold (the code on sys.path)."""
    os.environ["DLPIPE_ROOT"] = str(root)
    os.chdir(root)
    cifar = root / "data" / "downloads" / CIFAR_DIR
    if cifar.is_dir():
        publish_cifar_md5s(cifar)
    from dlpipe.config import load_params
    from dlpipe.data.prepared import PreparedData
    from dlpipe.evaluation.cv import run_fold
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages import fetch, prepare
    from dlpipe.stages.common import model_spec

    params, paths = load_params(root / "params.yaml"), ProjectPaths(root)
    fetch.run(params, paths)
    prepare.run(params, paths)
    out = {"after fetch + prepare": peak_mb()}
    data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
    out["after load"] = peak_mb()
    spec = model_spec(params, paths, "mlp")
    result = run_fold(spec, data, 0, params.trainer, params.seed, val_size=params.data.val_size, max_epochs=1)
    out["after one fit"] = peak_mb()
    out["fold accuracy"] = result.metrics["accuracy"]
    out["X dtype"] = str(data.dataset.X.dtype)
    return out


def run(label: str, tree: Path, scratch: Path, n: int, shape: str) -> dict:
    root = scratch / label.replace("/", "_")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=f"{tree / 'src'}{os.pathsep}{Path(__file__).resolve().parent}",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    bench.make_project(tree, root, [f"data.name={shape}", *PARAMS], env)
    downloads = root / "data" / "downloads"  # written here: its memory is not the run's
    if shape == "cifar10":
        write_cifar(downloads / CIFAR_DIR, n)
    else:
        scale.write_mnist(downloads / "MNIST" / "raw", n)
    cmd = [sys.executable, __file__, "--one", str(root), "--images", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if out.returncode != 0:
        sys.exit(f"{label} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mnist")
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--compare", metavar="REF", default=None, help="also measure this git ref, first")
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.images)))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="dlpipe-memory-"))
    results = {}
    if args.compare:
        tree = bench.source_tree(args.compare, scratch)
        results[args.compare] = run(args.compare, tree, scratch, args.images, args.shape)
    results["working tree"] = run("working tree", bench.REPO, scratch, args.images, args.shape)
    keys = list(next(iter(results.values())))
    print(f"{args.shape}: {args.images} x {SHAPES[args.shape]} images, peak RSS (MB) of one process:")
    print(f"{'':<16}" + "".join(f"{label:>16}" for label in results))
    for key in keys:
        cells = "".join(
            f"{v:>16.0f}" if key.startswith("after") else f"{v:>16.4f}" if isinstance(v, float) else f"{v!s:>16}"
            for v in (r[key] for r in results.values())
        )
        print(f"{key:<16}{cells}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
