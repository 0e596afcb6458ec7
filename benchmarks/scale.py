"""How one fixed small study's cost grows with the data: 28x28 images in MNIST's real IDX format, 2k to 60k.

The images are sklearn's 8x8 digits upsampled to 20x20, padded to 28x28, shifted by up to 3 pixels and given pixel
noise (seeded), written as the four IDX files of `data/downloads/MNIST/raw/` (6/7 of them as the training files,
1/7 as the t10k files; the study pools them, like MNIST). Each size runs the same study (STUDY: mlp and cnn, 20
trials each of at most 3 epochs on a validation slice, two trials of one architecture at a time (`tune.workers: 2`:
after TPE's 3 random start-up trials, which params a trial gets depends on which trials finished first), 3 folds of
at most 3 epochs, the final fits; no baselines) with a clean `dvc repro` in a fresh project (git + DVC initialised,
empty MLflow store), in a process of its own, and reports:

- wall: seconds of the whole `dvc repro`;
- training share: seconds spent inside `fit` (every trial, fold and final fit; dlpipe.profile) over the
  core-seconds the run had (wall x cores);
- peak RSS: the largest resident set of any one process of the run (stage processes and study workers);
- the champion, its CV mean of the selection metric and its test accuracy.

With `--budget-size N` the study on N images runs again under `study.budget` (BUDGET) in the same invocation,
once per `--budgets` entry EPOCHS[:ROWS] (study.budget.epochs, and tune.max_train_samples: trials train on a
stratified subsample of that many rows): the ratio of the wall times and the champions' CV scores.

    .venv/bin/python benchmarks/scale.py [--sizes 2000 8000 32000 60000] [--budget-size 60000] [--budgets 12 12:10000]
        [--keep DIR]
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
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as bench  # benchmarks/ is no package

REPO = bench.REPO
SIZES = (2000, 8000, 32000, 60000)
STUDY = [
    "data.name=mnist",
    "data.folds=3",
    "architectures=[mlp, cnn]",
    "train.max_epochs=3",
    "train.early_stopping.patience=2",
    "tune.n_trials=20",
    "tune.cv_folds=0",
    "tune.workers=2",
    "baselines.models=[]",
]
BUDGET = ["study.budget.drop_after_folds=1", "study.budget.drop_margin=0.005"]  # and each of BUDGETS
BUDGETS = ("12", "12:10000")  # study.budget.epochs[:tune.max_train_samples]
IDX_UBYTE = 0x08
# where a process's time goes (dlpipe.profile); "waiting" (the study stage idling while its workers train) is idle
CATEGORIES = ("fit", "evaluate", "export", "logging", "figures", "data", "setup", "imports", "waiting")


def digit_images(n: int, seed: int = 0, chunk: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """`n` 28x28 uint8 images and their labels: sklearn's 8x8 digits upsampled, shifted and noised (in chunks, so
    that making 60,000 takes little memory)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.pad(F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))[:, 0]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(big), n)
    shifts = rng.integers(-3, 4, (n, 2))
    out = np.empty((n, 28, 28), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        images = big.numpy()[pick[part]]
        for dy in range(-3, 4):  # one roll per distinct shift, not per image
            for dx in range(-3, 4):
                rows = np.flatnonzero((shifts[part, 0] == dy) & (shifts[part, 1] == dx))
                images[rows] = np.roll(images[rows], (dy, dx), axis=(1, 2))
        noise = rng.normal(0.0, 12.0, images.shape).astype(np.float32)
        out[part] = np.clip(images * 255.0 + noise, 0, 255).astype(np.uint8)
    return out, digits.target[pick].astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, type, dims), big-endian int32 sizes, the data."""
    head = bytes([0, 0, IDX_UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return head + np.ascontiguousarray(array).tobytes()


def write_mnist(folder: Path, n: int, seed: int = 0) -> None:
    """MNIST's four IDX files under `folder` with `n` images in all."""
    images, labels = digit_images(n, seed)
    cut = n - n // 7
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, cut)), ("t10k", slice(cut, n))):
        for kind, data in (("images-idx3", images[part]), ("labels-idx1", labels[part])):
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(idx_bytes(data))


def parse_budget(budget: str) -> tuple[int, int | None]:
    """(epochs, rows or None) of a budget "EPOCHS[:ROWS]"."""
    epochs, _, rows = budget.partition(":")
    return int(epochs), int(rows) if rows else None


def budget_overrides(budget: str | None) -> list[str]:
    """The params of a budget "EPOCHS[:ROWS]" (none: [])."""
    if not budget:
        return []
    epochs, rows = parse_budget(budget)
    return [*BUDGET, f"study.budget.epochs={epochs}"] + ([f"tune.max_train_samples={rows}"] if rows else [])


def one(n: int, budget: str | None, root: Path) -> dict:
    """Run the study on `n` images in a fresh project at `root` (in this process's children), under `budget`
    ("EPOCHS[:ROWS]") or none."""
    env, profile_dir = bench.study_env(REPO, root)
    over = budget_overrides(budget)
    bench.make_project(REPO, root, STUDY + over, env)
    write_mnist(root / "data" / "downloads" / "MNIST" / "raw", n)
    start = time.perf_counter()
    bench.sh(["dvc", "repro"], root, env)
    wall = time.perf_counter() - start
    seconds: dict[str, float] = {}  # process seconds per category, every stage and worker
    for stage in bench.read_profile(profile_dir).values():
        for category in CATEGORIES:
            seconds[category] = seconds.get(category, 0.0) + stage.get(category, 0.0)
    selection = json.loads((root / "reports" / "selection.json").read_text())
    test = json.loads((root / "reports" / "test" / f"{selection['winner']}.json").read_text())
    return {
        "n": n,
        "budget": budget,
        "wall": wall,
        "fit": seconds["fit"],
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "champion": selection["winner"],
        "cv_mean": selection["cv_mean"],
        "metric": selection["metric"],
        "test_accuracy": test["accuracy"],
        "dropped": sorted(selection.get("dropped") or {}),
    }


def run(n: int, budget: str | None, scratch: Path) -> dict:
    """`one` in a process of its own, so that its peak RSS is its own."""
    root = scratch / f"n{n}{'-budget' + budget.replace(':', '-') if budget else ''}"
    cmd = [sys.executable, __file__, "--one", str(n), "--root", str(root)] + (["--budget", budget] if budget else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"study on {n} images failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {n} images{f' (budget {budget})' if budget else ''}: {row['wall']:.0f} s", file=sys.stderr)
    return row


def budget_cell(row: dict) -> str:
    if not row["budget"]:
        return "no"
    epochs, rows = parse_budget(row["budget"])
    return f"{epochs} ep" + (f", {rows // 1000}k" if rows else "")


def table(rows: list[dict], cores: int) -> str:
    head = (
        f"{'images':>7} {'budget':>10} {'wall s':>7} {'s/1k img':>8} {'training':>8} {'peak RSS MB':>11} "
        f"{'champion':>8} {'CV':>7} {'test acc':>8}  dropped"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        share = r["fit"] / (r["wall"] * cores)
        lines.append(
            f"{r['n']:>7} {budget_cell(r):>10} {r['wall']:>7.0f} {1000 * r['wall'] / r['n']:>8.1f} "
            f"{share:>8.1%} {r['peak_rss_mb']:>11.0f} {r['champion']:>8} {r['cv_mean']:>7.4f} "
            f"{r['test_accuracy']:>8.4f}  {', '.join(r['dropped']) or '-'}"
        )
    return "\n".join(lines)


def shares(rows: list[dict], cores: int) -> str:
    """Where each run's core-seconds (wall x cores) went: profiled work per category, and the rest (idle cores:
    a worker without a unit, the stages' single processes, DVC itself)."""
    busy = [c for c in CATEGORIES if c != "waiting"]
    head = f"{'images':>7} {'budget':>10} " + " ".join(f"{c:>8}" for c in busy) + f" {'rest':>8}"
    lines = ["share of core-seconds", head, "-" * len(head)]
    for r in rows:
        total = r["wall"] * cores
        parts = [r["seconds"].get(c, 0.0) / total for c in busy]
        cells = " ".join(f"{p:>8.1%}" for p in parts)
        lines.append(f"{r['n']:>7} {budget_cell(r):>10} {cells} {1 - sum(parts):>8.1%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="numbers of images")
    parser.add_argument("--budget-size", type=int, default=60000, help="also run this size under study.budget")
    parser.add_argument(
        "--budgets", nargs="*", default=list(BUDGETS), help="EPOCHS[:ROWS] of each budgeted run (see above)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="run under this (new) folder and keep it")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.budget, args.root)))
        return 0
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="dlpipe-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows = [run(n, None, scratch) for n in args.sizes]
    if args.budget_size:
        plain = next((r for r in rows if r["n"] == args.budget_size), None) or run(args.budget_size, None, scratch)
        if plain not in rows:
            rows.append(plain)
        budgeted = [run(args.budget_size, budget, scratch) for budget in args.budgets]
        rows.extend(budgeted)
    print(table(rows, cores))
    print()
    print(shares(rows, cores))
    for row in budgeted if args.budget_size else []:
        gain = row["cv_mean"] - plain["cv_mean"]
        print(
            f"\n{args.budget_size} images under {' '.join(budget_overrides(row['budget']))}: "
            f"{row['wall']:.0f} s vs {plain['wall']:.0f} s = {row['wall'] / plain['wall']:.2f} of the time; CV "
            f"{plain['metric']} {row['cv_mean']:.4f} vs {plain['cv_mean']:.4f} ({gain:+.4f})"
        )
    if args.keep is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
