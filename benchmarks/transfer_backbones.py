"""Transfer-learning backbones on digits beside the default CNN, at a small fixed budget (no tuning):

    python benchmarks/transfer_backbones.py --epochs 3 --folds 5

For each architecture, the library's own clean cross-validation (`PreparedData.fold`: each fold scored once, early
stopping on an inner validation slice) and a final fit on the training part minus a validation slice, evaluated once
on the held-out test set (20 %, the default split). Printed per row: CV accuracy (mean +- std), test accuracy,
parameters, seconds of one final fit and seconds of the whole row. The CNN (the default study's winner) is the
baseline, measured in the same run. CPU, `trainer.cpu_threads` threads (default 1, as the default study runs).
Backbones start from random weights (no network here); `--pretrained` adds nothing offline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

ROWS = [  # (label, architecture, model params)
    ("cnn (baseline)", "cnn", {}),
    ("resnet (resnet18)", "resnet", {}),
    ("transfer resnet34", "transfer", {"backbone": "resnet34"}),
    ("transfer resnet50", "transfer", {"backbone": "resnet50"}),
    ("transfer vgg11_bn", "transfer", {"backbone": "vgg11_bn"}),
    ("transfer vgg16_bn", "transfer", {"backbone": "vgg16_bn"}),
    ("transfer mobilenet_v3_small", "transfer", {"backbone": "mobilenet_v3_small"}),
    ("transfer mobilenet_v3_large", "transfer", {"backbone": "mobilenet_v3_large"}),
    ("transfer efficientnet_b0", "transfer", {"backbone": "efficientnet_b0"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="labels' architectures/backbones to run (substring match)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    import numpy as np
    import torch

    from dlpipe.config import TrainerParams, TrainParams
    from dlpipe.data.prepared import PreparedData
    from dlpipe.data.sklearn_sets import load_digits
    from dlpipe.data.splits import make_splits
    from dlpipe.models import get_architecture
    from dlpipe.training.fit import ModelSpec, evaluate, fit

    torch.set_num_threads(args.threads)
    ds = load_digits(None, None)
    data = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, args.folds, seed=42))
    trainer = TrainerParams(accelerator="cpu", progress_bar=False, cpu_threads=args.threads)
    train = TrainParams(max_epochs=args.epochs)
    print(
        f"digits: {len(data.splits.train_idx)} training samples, {len(data.splits.test_idx)} test; {args.epochs} "
        f"epochs, {args.folds} folds, {args.threads} thread(s)",
        flush=True,
    )
    columns = [f"{'architecture':<28}", f"{'CV accuracy':>16}", f"{'test acc.':>9}", f"{'params':>11}"]
    header = "| " + " | ".join([*columns, f"{'fit (s)':>7}", f"{'row (s)':>7}"]) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", flush=True)
    for label, arch, model in ROWS:
        if args.only and not any(o in label for o in args.only):
            continue
        spec = ModelSpec(arch, get_architecture(arch).params.model_validate(model), train)
        start = time.perf_counter()
        scores = []
        for k in range(args.folds):
            fold = data.fold(k, 0.1, seed=42)
            result = fit(spec, fold.fit, ds.class_names, trainer, seed=42)
            scores.append(evaluate(result.module, fold.scored, trainer)["accuracy"])
        split = data.holdout(0.1, seed=42)
        result = fit(spec, split, ds.class_names, trainer, seed=42)
        test = evaluate(result.module, data.test(split.normalizer), trainer)["accuracy"]
        n_params = sum(p.numel() for p in result.module.model.parameters())
        cv = f"{statistics.mean(scores):.4f} +- {np.std(scores, ddof=1):.4f}"
        row = time.perf_counter() - start
        print(
            f"| {label:<28} | {cv:>16} | {test:>9.4f} | {n_params:>11,} | {result.seconds:>7.1f} | {row:>7.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
