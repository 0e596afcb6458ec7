"""Tuning benchmark: the same budget of Optuna trials on digits without and with median pruning, with 1 and 2 workers.

    python benchmarks/tuning.py --trials 8 --epochs 10 --arch mlp

Each configuration runs the real tune stage (`dlpipe.stages.tune.run`) in its own temporary project storage and
MLflow experiment; the baseline is the first row (no pruning, one worker), measured in the same run. Every study
has the same seed, so all of them draw the same trial params (the sampler is seeded per trial number): pruning
changes how long the hopeless trials train, workers change how many train at once. Printed per configuration:
wall time (including worker start-up), epochs trained (summed over trials), best value and trial states.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [  # (label, pruner, workers)
    ("baseline: no pruning, 1 worker", "none", 1),
    ("median pruning, 1 worker", "median", 1),
    ("no pruning, 2 workers", "none", 2),
    ("median pruning, 2 workers", "median", 2),
]


def study_params(args: argparse.Namespace, pruner: str, workers: int, tag: str) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["limit"] = args.limit
    raw["architectures"] = [args.arch]
    raw["trainer"].update({"accelerator": "cpu", "progress_bar": False})
    raw["train"]["max_epochs"] = args.epochs
    raw["tune"].update({
        "n_trials": args.trials,
        "max_epochs": args.epochs,
        "sampler": args.sampler,
        "pruner": pruner,
        "workers": workers,
        "storage": f"optuna/{tag}.log",  # a fresh study per configuration
    })  # fmt: skip
    # a wide learning-rate range: room for hopeless trials, which pruning should cut short
    raw["tune"]["space"]["train.lr"] = {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}
    raw["mlflow"]["experiment"] = f"bench-tuning-{tag}"
    return raw


def run_config(root: Path, args: argparse.Namespace, label: str, pruner: str, workers: int, i: int) -> dict:
    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages import tune

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(study_params(args, pruner, workers, f"c{i}"), sort_keys=False))
    params = load_params(path)
    start = time.perf_counter()
    report = tune.run(params, ProjectPaths(root), args.arch)
    return {"label": label, "pruner": pruner, "workers": workers, "seconds": time.perf_counter() - start, **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random", "cmaes"])
    parser.add_argument("--limit", type=int, default=None, help="subsample digits to this many samples")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "optuna"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import os

    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages import fetch, prepare

    rows = []
    with tempfile.TemporaryDirectory(prefix="dlpipe-bench-tuning-") as tmp:
        root = Path(tmp)
        os.environ["DLPIPE_ROOT"] = str(root)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        (root / "params.yaml").write_text(yaml.safe_dump(study_params(args, "none", 1, "prep"), sort_keys=False))
        params = load_params(root / "params.yaml")
        fetch.run(params, ProjectPaths(root))
        prepare.run(params, ProjectPaths(root))
        for i, (label, pruner, workers) in enumerate(CONFIGS):
            print(f"running: {label} ...", file=sys.stderr, flush=True)
            rows.append(run_config(root, args, label, pruner, workers, i))

    base = rows[0]
    print(f"\ntuning benchmark: {args.arch} on digits (limit {args.limit}), {args.trials} trials x {args.epochs} "
          f"epochs, sampler {args.sampler}, seed {params.seed}, {os.cpu_count()} CPU cores")  # fmt: skip
    header = f"{'configuration':<32} {'wall s':>7} {'speed-up':>8} {'epochs':>7} {'best ' + base['metric']:>14} " \
             f"{'COMPLETE':>8} {'PRUNED':>7} {'FAIL':>5}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        t = r["trials"]
        speedup = base["seconds"] / r["seconds"]
        print(f"{r['label']:<32} {r['seconds']:>7.1f} {speedup:>7.2f}x {r['epochs_trained']:>7d} "
              f"{r['best_value']:>14.4f} {t['COMPLETE']:>8d} {t['PRUNED']:>7d} {t['FAIL']:>5d}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
