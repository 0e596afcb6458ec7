"""Peak memory of one worker's data path at full size: fetch, prepare, load and one fit on N 28x28 images.

The images are written in MNIST's IDX format (benchmarks/scale.py, by this process); each code version runs in a
process of its own
(fresh project, that version's `src/` first on PYTHONPATH): fetch and prepare (the stages' code, in-process), then
the study's view of the data and one cross-validation fold of an mlp for one epoch, as a study worker runs it.
Reported: the process's peak RSS after prepare, after loading the prepared data, and after the fit.

    .venv/bin/python benchmarks/memory.py [--images 60000] [--compare REF]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as bench  # benchmarks/ is no package
import scale

PARAMS = ["data.name=mnist", "architectures=[mlp]", "baselines.models=[]", "trainer.accelerator=cpu"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(root: Path, n: int) -> dict:
    """In this process: fetch, prepare, load, one fold (the code on sys.path)."""
    os.environ["DLPIPE_ROOT"] = str(root)
    os.chdir(root)
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


def run(label: str, tree: Path, scratch: Path, n: int) -> dict:
    root = scratch / label.replace("/", "_")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=f"{tree / 'src'}{os.pathsep}{Path(__file__).resolve().parent}",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    bench.make_project(tree, root, PARAMS, env)
    scale.write_mnist(root / "data" / "downloads" / "MNIST" / "raw", n)  # here: its memory is not the run's
    cmd = [sys.executable, __file__, "--one", str(root), "--images", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if out.returncode != 0:
        sys.exit(f"{label} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        results[args.compare] = run(args.compare, bench.source_tree(args.compare, scratch), scratch, args.images)
    results["working tree"] = run("working tree", bench.REPO, scratch, args.images)
    keys = list(next(iter(results.values())))
    print(f"{args.images} x 28 x 28 images, peak RSS (MB) of one process:")
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
