"""Throughput of the study stage's workers: cross-validation folds and Optuna trials per minute with 1 and with 2
worker processes, measured in the same run.

    .venv/bin/python benchmarks/tuning.py [--arch mlp] [--folds 8] [--trials 8] [--epochs 8]

A small digits project is fetched and prepared once. For each worker count, a fresh pool (`dlpipe.parallel`, the one
the study stage uses) is started and warmed up (every worker has imported the training stack, set up its data and
MLflow store and trained one fold of another seed), then timed on (a) the architecture's CV folds, submitted at
once, and (b) a fresh Optuna study of `--trials` trials run by as many runners as workers (`tune.workers`), no
pruning. Throughput = units / wall time. The table gives both rates and the speed-up of 2 workers over 1; fold
metrics must be identical for both counts (checked: parallelism never changes a result), and the study's trials are
counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def project(root: Path, args: argparse.Namespace, workers: int, tag: str) -> tuple:
    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["architectures"] = [args.arch]
    raw["data"].update({"folds": args.folds, "limit": args.limit})
    raw["train"].update({"max_epochs": args.epochs, "early_stopping": {"enabled": False}})
    raw["trainer"].update({"accelerator": "cpu", "progress_bar": False, "workers": workers})
    raw["tune"].update(
        {
            "n_trials": args.trials,
            "max_epochs": args.epochs,
            "pruner": "none",
            "workers": workers,
            "cv_folds": 0,
            "storage": f"optuna/{tag}.log",
        }
    )
    raw["mlflow"]["experiment"] = f"bench-{tag}"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(root / "params.yaml"), ProjectPaths(root)


def run_all(pool, tasks: list) -> list:
    """Every task on the pool, as workers free up; fails loudly on a failed unit."""
    pending, finished = list(tasks), []
    while pending or pool.busy:
        while pending and pool.free:
            pool.submit(pending.pop(0))
        done = pool.next_done()
        if not done.ok:
            sys.exit(f"{done.task.key} failed: {done.error or done.crash}\n{done.details}")
        finished.append(done)
    return finished


def measure(params, paths, arch: str) -> dict:
    from dlpipe.parallel import Task
    from dlpipe.stages import cv, tune
    from dlpipe.stages.common import StageContext
    from dlpipe.stages.study import make_pool

    ctx = StageContext.load(params, paths)
    pool = make_pool(params)
    try:
        # warm-up: every worker imports, loads the data, opens the store and trains once (another seed's folds)
        warm = params.model_copy(update={"seed": params.seed + 1})
        warm_plan = cv.plan(StageContext.load(warm, paths), arch)
        run_all(
            pool,
            [Task(f"cv {arch} warm{job.k}", cv.fold_unit, (job,)) for job in warm_plan.jobs(warm, paths)[: pool.size]],
        )
        p = cv.plan(ctx, arch)
        start = time.perf_counter()
        done = run_all(pool, [Task(f"cv {arch} fold{job.k}", cv.fold_unit, (job,)) for job in p.jobs(params, paths)])
        fold_seconds = time.perf_counter() - start
        folds = {d.result.fold: d.result.metrics for d in done}
        plan = tune.plan(ctx, arch)
        start = time.perf_counter()
        jobs = plan.jobs(params, paths, slots=pool.size)
        runners = [Task(f"tune {arch} runner{job.index}", tune.trials_unit, (job,)) for job in jobs]
        run_all(pool, runners)
        trial_seconds = time.perf_counter() - start
        trials = plan.handle.study.get_trials(deepcopy=False)
    finally:
        pool.close()
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    return {"folds": folds, "fold_seconds": fold_seconds, "trials": finished, "trial_seconds": trial_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="stratified subsample of digits")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dlpipe-throughput-"))
    os.environ["DLPIPE_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from dlpipe.stages import fetch, prepare
    from dlpipe.stages.runner import setup_logging

    setup_logging()
    params, paths = project(root, args, 1, "prepare")
    fetch.run(params, paths)
    prepare.run(params, paths)
    rows = {}
    for workers in (1, 2):
        params, paths = project(root, args, workers, f"w{workers}")
        rows[workers] = measure(params, paths, args.arch)
    one, two = rows[1], rows[2]
    same = one["folds"] == two["folds"]
    print(f"\n{args.arch} on digits, {args.epochs} epochs per fit, one run; throughput in units per minute")
    print(f"{'':<24}{'1 worker':>12}{'2 workers':>12}{'speed-up':>10}")
    for label, key, seconds in (("CV folds", None, "fold_seconds"), ("Optuna trials", "trials", "trial_seconds")):
        rate = [60 * (len(r["folds"]) if key is None else r[key]) / r[seconds] for r in (one, two)]
        print(f"{label:<24}{rate[0]:>12.1f}{rate[1]:>12.1f}{rate[1] / rate[0]:>9.2f}x")
    print(f"identical fold metrics with 1 and 2 workers: {same}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
