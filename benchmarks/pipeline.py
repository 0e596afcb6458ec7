"""Time the default study, stage by stage, and show where the time goes; optionally beside another git ref.

Each code version runs in a fresh copy of its project (git + DVC initialised, empty MLflow store), with that
version's own `src/` first on PYTHONPATH, so nothing of this checkout is touched. Each stage runs alone
(`dvc repro --single-item <stage>`, in pipeline order), so its wall time is its own; then a no-change `dvc repro`
is timed (median of --noop-runs). With `--compare REF` the same is done for REF (e.g. `main` before a change) in
the same invocation, and the table puts both side by side with the ratio: on a shared machine, only times taken in
one run compare.

The working tree's code also records where each process's time goes (`DLPIPE_PROFILE`, see dlpipe.profile): imports,
data, MLflow set-up, training (inside `fit`), evaluation, logging, figures, export. The training share is the
seconds spent training divided by the core-seconds the study had (wall time x cores): how busy the machine was with
what a researcher asked for. For a REF without that instrument, the training seconds are read from MLflow (CV folds'
`fit_seconds` and final fits' `train_seconds`; a REF's trials did not record theirs).

    .venv/bin/python benchmarks/pipeline.py [--compare REF] [--keep DIR] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("imports", "data", "setup", "fit", "evaluate", "logging", "figures", "export", "waiting")


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def set_param(params: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = params
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(raw)


def source_tree(ref: str | None, scratch: Path) -> Path:
    """The working tree (None) or an export of `ref`."""
    if ref is None:
        return REPO
    tree = scratch / f"src-{ref.replace('/', '_')}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def make_project(tree: Path, dest: Path, overrides: list[str], env: dict[str, str]) -> None:
    dest.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(tree / name, dest / name)
    for folder in ("pipelines", "src"):
        shutil.copytree(tree / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        set_param(params, key, value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        sh(cmd, dest, env)
    plots = tree / ".dvc" / "plots"
    if plots.is_dir():
        shutil.copytree(plots, dest / ".dvc" / "plots", dirs_exist_ok=True)
        shutil.copy2(tree / ".dvc" / "config", dest / ".dvc" / "config")


@dataclass
class Result:
    label: str
    stages: list[tuple[str, float]] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> category -> process seconds
    mlflow_training: float = 0.0
    leaderboard: str = ""

    @property
    def total(self) -> float:
        return sum(s for _, s in self.stages)


def study_env(tree: Path, root: Path) -> tuple[dict[str, str], Path]:
    """The environment a benchmark study at `root` runs in (the code of `tree`, this venv's tools, the project's own
    store, every process profiled), and the folder its profiles go to."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(tree / "src"),
    )
    for key in ("DLPIPE_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    profile_dir = root.parent / f"{root.name}-profile"
    env["DLPIPE_PROFILE"] = str(profile_dir)
    return env, profile_dir


def run_study(label: str, tree: Path, root: Path, overrides: list[str], noop_runs: int) -> Result:
    env, profile_dir = study_env(tree, root)
    make_project(tree, root, overrides, env)
    result = Result(label)
    for stage in sh(["dvc", "stage", "list", "--name-only"], root, env).stdout.split():
        start = time.perf_counter()
        sh(["dvc", "repro", "--single-item", stage], root, env)
        result.stages.append((stage, time.perf_counter() - start))
        print(f"  {label}: {stage} {result.stages[-1][1]:.1f}s", file=sys.stderr)
    for _ in range(noop_runs):
        start = time.perf_counter()
        out = sh(["dvc", "repro"], root, env).stdout
        result.noop.append(time.perf_counter() - start)
        if "Running stage 'study'" in out or "Running stage 'train" in out:
            print(f"warning: the no-change dvc repro ran stages:\n{out}", file=sys.stderr)
    result.profile = read_profile(profile_dir)
    result.mlflow_training = mlflow_training_seconds(root / "mlruns" / "mlflow.db")
    board = root / "reports" / "leaderboard.md"
    result.leaderboard = board.read_text() if board.is_file() else ""
    return result


def read_profile(folder: Path) -> dict[str, dict[str, float]]:
    by_stage: dict[str, dict[str, float]] = {}
    for path in folder.glob("*.json") if folder.is_dir() else []:
        record = json.loads(path.read_text())
        stage = by_stage.setdefault(record["stage"], {"processes": 0.0, "process_wall": 0.0})
        stage["processes"] += 1
        stage["process_wall"] += record["wall"] + record["seconds"].get("imports", 0.0)
        for key, value in record["seconds"].items():
            stage[key] = stage.get(key, 0.0) + value
    return by_stage


def mlflow_training_seconds(db: Path) -> float:
    """CV folds' fit_seconds and final fits' train_seconds, as the runs recorded them (both code versions do)."""
    if not db.is_file():
        return 0.0
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT SUM(value) FROM latest_metrics WHERE key IN ('fit_seconds', 'train_seconds')")
        return float(rows.fetchone()[0] or 0.0)


def table(results: list[Result], cores: int) -> str:
    lines = []
    names: list[str] = []
    for r in results:
        names += [s for s, _ in r.stages if s not in names]
    width = max(24, *(len(n) for n in names))
    head = f"{'stage':<{width}}" + "".join(f"{r.label:>14}" for r in results)
    lines += [head, "-" * len(head)]
    for name in names:
        cells = "".join(f"{dict(r.stages).get(name, float('nan')):>14.1f}" for r in results)
        lines.append(f"{name:<{width}}{cells}")
    lines.append(f"{'clean dvc repro (s)':<{width}}" + "".join(f"{r.total:>14.1f}" for r in results))
    lines.append(
        f"{'no-change dvc repro (s)':<{width}}" + "".join(f"{statistics.median(r.noop):>14.2f}" for r in results)
    )
    lines.append(f"{'training, folds + final (s)':<{width}}" + "".join(f"{r.mlflow_training:>14.1f}" for r in results))
    lines.append(
        f"{'  share of core-seconds':<{width}}"
        + "".join(f"{r.mlflow_training / (r.total * cores):>14.1%}" for r in results)
    )
    if len(results) == 2 and results[1].total:
        lines.append(f"{'ratio (clean repro)':<{width}}{'':>14}{results[1].total / results[0].total:>14.2f}")
    return "\n".join(lines)


def profile_table(result: Result, cores: int) -> str:
    """Where the profiled code's process time went, per stage (seconds summed over its processes)."""
    head = f"{'stage':<12}{'wall':>8}" + "".join(f"{c:>9}" for c in CATEGORIES) + f"{'other':>9}"
    lines = [f"where the time goes ({result.label}; process seconds, workers included):", head, "-" * len(head)]
    walls = dict(result.stages)
    fit_total = 0.0
    for stage, data in sorted(
        result.profile.items(), key=lambda kv: list(walls).index(kv[0]) if kv[0] in walls else 99
    ):
        spent = sum(data.get(c, 0.0) for c in CATEGORIES)
        other = max(0.0, data["process_wall"] - spent)
        fit_total += data.get("fit", 0.0)
        cells = "".join(f"{data.get(c, 0.0):>9.1f}" for c in CATEGORIES)
        lines.append(f"{stage:<12}{walls.get(stage, float('nan')):>8.1f}{cells}{other:>9.1f}")
    total = result.total
    lines.append(
        f"training (inside fit, trials included): {fit_total:.1f} s = {fit_total / (total * cores):.1%} of "
        f"{total:.0f} s x {cores} cores"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REF", default=None, help="also run this git ref (e.g. main), first")
    parser.add_argument("--keep", type=Path, default=None, help="run under this (new) folder and keep it")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override key=value")
    parser.add_argument("--noop-runs", type=int, default=5, help="no-change dvc repro runs (median reported)")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="dlpipe-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results = []
    if args.compare:
        tree = source_tree(args.compare, scratch)
        results.append(run_study(args.compare, tree, scratch / "ref", args.overrides, args.noop_runs))
    results.append(run_study("working tree", REPO, scratch / "head", args.overrides, args.noop_runs))
    print(table(results, cores))
    for result in results:  # where each version's time went (a REF without the instrument shows none)
        if result.profile:
            print()
            print(profile_table(result, cores))
    print("\n" + results[-1].leaderboard)
    if args.keep is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
