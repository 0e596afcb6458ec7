"""Time the default study: a clean `dvc repro`, stage by stage, then a no-change `dvc repro`.

Runs in a fresh copy of the project (git + DVC initialised, empty MLflow store), so nothing of this checkout is
touched. Each stage runs alone (`dvc repro --single-item <stage>`, in pipeline order) so its wall time is its own;
the sum is the clean-state total. Usage:

    .venv/bin/python benchmarks/pipeline.py [--keep DIR] [-S key=value ...]

`-S` overrides params like `dvc exp run -S` (e.g. `-S tune.n_trials=2` for a quick check).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 600  # the default study's target on a 2-core CPU machine


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("DLPIPE_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def set_param(params: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = params
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(raw)


def make_project(dest: Path, overrides: list[str]) -> None:
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, dest / name)
    for folder in ("pipelines", "src"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        set_param(params, key, value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        sh(cmd, dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="run in this (new) folder and keep it")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override key=value")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dlpipe-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    make_project(root, args.overrides)
    stages = sh(["dvc", "stage", "list", "--name-only"], root).stdout.split()
    rows = []
    for stage in stages:
        start = time.perf_counter()
        sh(["dvc", "repro", "--single-item", stage], root)
        rows.append((stage, time.perf_counter() - start))
    total = sum(s for _, s in rows)
    start = time.perf_counter()
    noop = sh(["dvc", "repro"], root).stdout
    noop_s = time.perf_counter() - start
    if "Running stage" in noop:
        print("warning: the second dvc repro ran stages:\n" + noop, file=sys.stderr)
    width = max(len(s) for s, _ in rows)
    print(f"{'stage':<{width}}  seconds")
    for stage, seconds in rows:
        print(f"{stage:<{width}}  {seconds:7.1f}")
    print(f"{'clean dvc repro':<{width}}  {total:7.1f}   (target {BUDGET_S} s on 2 CPU cores)")
    print(f"{'no-change dvc repro':<{width}}  {noop_s:7.1f}")
    leaderboard = root / "reports" / "leaderboard.md"
    if leaderboard.is_file():
        print("\n" + leaderboard.read_text())
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
