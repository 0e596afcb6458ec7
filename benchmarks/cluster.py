"""Throughput of the study's executors: cross-validation folds per minute on the local pool (1 and 2 worker
processes) and on a local Ray cluster of one and of two nodes (one CPU each), measured in the same run.

    .venv/bin/python benchmarks/cluster.py [--arch mlp] [--folds 8] [--epochs 8] [--limit 600]

A small digits project is fetched and prepared once. For each executor a fresh pool is made the way the study stage
makes it (`dlpipe.executors`; for Ray, a `ray.cluster_utils.Cluster` whose nodes are separate raylets and worker
processes on this machine), warmed up (every slot has imported the training stack, received the shipped data and
trained one fold of another seed), then timed on the architecture's CV folds, submitted at once. Throughput =
folds / wall time. Fold metrics must be identical on every executor (checked).

Run as root, the script re-runs itself in a network namespace with only `lo` up (`unshare --net`): Ray binds to
the machine's interface address and probes a public resolver by default; there it can only use 127.0.0.1.
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
sys.path.insert(0, str(REPO / "benchmarks"))
from tuning import run_all  # noqa: E402  (the same submit-as-slots-free loop)

NETNS_ENV = "DLPIPE_BENCH_NETNS"


def in_loopback_namespace() -> bool:
    """Re-run this script under `unshare --net` with only `lo` up, when possible; True when already there."""
    if os.environ.get(NETNS_ENV) == "1":
        return True
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("note: not root (or no unshare/ip): Ray runs in this machine's network namespace", file=sys.stderr)
        return False
    cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    os.execvpe("unshare", cmd, {**os.environ, NETNS_ENV: "1"})
    return True  # not reached


def project(root: Path, args: argparse.Namespace, executor: str, workers: int, address: str | None, tag: str):
    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["architectures"] = [args.arch]
    raw["data"].update({"folds": args.folds, "limit": args.limit})
    raw["train"].update({"max_epochs": args.epochs, "early_stopping": {"enabled": False}})
    raw["trainer"].update({"accelerator": "cpu", "progress_bar": False, "workers": workers, "cpu_threads": 1})
    raw["tune"]["enabled"] = False
    raw["mlflow"].update({"experiment": f"bench-{tag}", "log_models": False})
    raw["study"] = {"executor": executor, "ray_address": address}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(root / "params.yaml"), ProjectPaths(root)


def measure(params, paths, arch: str) -> dict:
    from dlpipe.parallel import Task
    from dlpipe.stages import cv
    from dlpipe.stages.common import StageContext
    from dlpipe.stages.study import make_pool

    ctx = StageContext.load(params, paths)
    warm = params.model_copy(update={"seed": params.seed + 1})
    warm_ctx = StageContext.load(warm, paths)
    pool = make_pool(params)
    try:
        pool.share(warm_ctx)
        warm_plan = cv.plan(warm_ctx, arch)
        jobs = warm_plan.jobs(warm, paths)[: pool.size]
        run_all(pool, [Task(f"cv {arch} warm{job.k}", cv.fold_unit, (job,)) for job in jobs])
        pool.share(ctx)
        p = cv.plan(ctx, arch)
        start = time.perf_counter()
        done = run_all(pool, [Task(f"cv {arch} fold{job.k}", cv.fold_unit, (job,)) for job in p.jobs(params, paths)])
        seconds = time.perf_counter() - start
    finally:
        pool.close()
    return {"folds": {d.result.fold: d.result.metrics for d in done}, "seconds": seconds, "slots": pool.size}


def on_cluster(nodes: int, root: Path, args: argparse.Namespace) -> dict:
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 characters
    os.environ["RAY_TMPDIR"] = temp  # this cluster's sessions and address file, apart from any other Ray here
    head = {"num_cpus": 1, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        params, paths = project(root, args, "ray", 1, cluster.address, f"ray{nodes}")
        return measure(params, paths, args.arch)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--limit", type=int, default=600, help="stratified subsample of digits")
    args = parser.parse_args()
    loopback = in_loopback_namespace()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    root = Path(tempfile.mkdtemp(prefix="dlpipe-cluster-"))
    os.environ["DLPIPE_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from dlpipe.stages import fetch, prepare
    from dlpipe.stages.runner import setup_logging
    from dlpipe.training.threads import apply_cpu_threads

    setup_logging()
    params, paths = project(root, args, "local", 1, None, "prepare")
    apply_cpu_threads(params.trainer)  # the one-worker pool trains in this process: one thread, like a worker
    fetch.run(params, paths)
    prepare.run(params, paths)
    rows = {}
    for workers in (1, 2):
        params, paths = project(root, args, "local", workers, None, f"local{workers}")
        rows[f"local pool, {workers} worker{'s' if workers > 1 else ''}"] = measure(params, paths, args.arch)
    for nodes in (1, 2):
        rows[f"Ray, {nodes} node{'s' if nodes > 1 else ''} x 1 CPU"] = on_cluster(nodes, root, args)
    first = next(iter(rows.values()))
    same = all(r["folds"] == first["folds"] for r in rows.values())
    cores = len(os.sched_getaffinity(0))
    what = f"{args.arch} on digits ({args.limit} samples), {args.folds} CV folds of {args.epochs} epochs"
    print(f"\n{what}, {cores} cores")
    print("| executor | units at once | folds per minute | seconds |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['slots']} | {60 * len(r['folds']) / r['seconds']:.1f} | {r['seconds']:.1f} |")
    print(f"\nidentical fold metrics on every executor: {same}; loopback-only network namespace: {loopback}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
