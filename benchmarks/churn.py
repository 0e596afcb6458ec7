"""A declared cross on data decided by it: churn-like CSVs (text columns plan, region, channel; numeric tenure,
monthly_fee, support_calls; churn decided by plan x region, 10% of labels flipped; tests/helpers/churn.py), 2,000 and
3,000 rows. Every baseline and wide & deep with and without the plan x region cross, at default params (no tuning),
on the same 5 folds and test set (seed 42), as the study's cv and train stages score them.

    .venv/bin/python benchmarks/churn.py

CV F1 (macro) mean ± std over the folds and test F1 (the final fit: the training part minus the validation slice).
The data's Bayes rate is 0.82.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
CROSS = [("plan", "region")]
SEED = 42


def main() -> int:
    from helpers.churn import write_churn_csv

    from dlpipe.config import Params, TrainerParams
    from dlpipe.data.csv_set import read_csv_dataset
    from dlpipe.data.prepared import PreparedData
    from dlpipe.data.splits import make_splits
    from dlpipe.evaluation.baselines import BASELINES, run_baseline
    from dlpipe.evaluation.cv import run_fold
    from dlpipe.models import get_architecture
    from dlpipe.training.fit import ModelSpec, evaluate, fit

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    params = Params()
    cpu = TrainerParams(accelerator="cpu", progress_bar=False)
    print("| rows | model | CV F1 (macro) | test F1 | seconds |\n| ---: | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (2000, 3000):
            ds = read_csv_dataset(write_churn_csv(Path(tmp) / f"churn{n}.csv", n=n, seed=0), "churn")
            data = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 5, SEED))
            rows = []
            for name in BASELINES:
                for crosses in ([], CROSS) if BASELINES[name].crosses else ([],):
                    r = run_baseline(name, data, SEED, crosses=crosses)
                    label = f"{name} (baseline{', plan x region' if crosses else ''})"
                    rows.append((label, r.mean["f1_macro"], r.std["f1_macro"], r.test["f1_macro"], r.fit_seconds))
            for crosses in ([], CROSS):
                start = time.perf_counter()
                model = get_architecture("wide_deep").params(crosses=crosses)
                spec = ModelSpec("wide_deep", model, params.train)
                folds = [
                    run_fold(spec, data, k, cpu, SEED, val_size=params.data.val_size).metrics["f1_macro"]
                    for k in range(5)
                ]
                split = data.holdout(params.data.val_size, SEED)
                final = fit(spec, split, ds.class_names, cpu, SEED)
                test = evaluate(final.module, data.test(split.normalizer), cpu)
                label = "wide_deep" + (", plan x region" if crosses else "")
                rows.append(
                    (label, np.mean(folds), np.std(folds, ddof=1), test["f1_macro"], time.perf_counter() - start)
                )
            for label, mean, std, test, seconds in rows:
                print(f"| {n} | {label} | {mean:.4f} ± {std:.4f} | {test:.4f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
