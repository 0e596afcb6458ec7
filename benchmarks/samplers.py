"""Does the tuning sampler learn within the default budget? Best score reached after n trials, per sampler, against
random search, with the same seeds, on three datasets.

    .venv/bin/python benchmarks/samplers.py [--arch mlp] [--trials 10] [--seeds 5]

Each study tunes `--arch` over its default search space (params.yaml: tune.space + tune.spaces.<arch>) with the
default pruner (median) and `tune.max_epochs` epochs per fit, scored as the tune stage scores a trial: macro F1 on
the validation slice, or the mean over every fold when that slice holds fewer than 10 samples of some class
(`tune.cv_folds: auto`; wine). Samplers come from `dlpipe.tuning.study.make_sampler` (seeded per trial, as in the
study stage). To stay cheap, a trial trains with a plain PyTorch loop (the same network, optimizer, batch size,
learning rate and epochs as the study's Lightning fits; no early stopping, which a 5-epoch trial seldom reaches),
and the network's initial weights are the same for every trial of a seed, so trials differ by their params alone.
The table gives the mean over seeds of the best score after 3, 5 and `--trials` trials, and how many seeds ended
above random search's best with the same seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from sklearn.metrics import f1_score

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = {  # label -> (tune.sampler, tune.startup_trials)
    "random": ("random", 0),
    "tpe, 10 start-up (Optuna's default)": ("tpe", 10),
    "tpe, 3 start-up": ("tpe", 3),
    "gp, 3 start-up": ("gp", 3),
}


def datasets() -> dict:
    from sklearn.datasets import load_wine

    from dlpipe.data.base import Dataset
    from dlpipe.data.sklearn_sets import load_breast_cancer, load_digits

    wine = load_wine()
    X = torch.tensor(wine.data, dtype=torch.float32)
    names = [str(n) for n in wine.target_names]
    wine_ds = Dataset("wine", X, torch.tensor(wine.target), "tabular", names, list(wine.feature_names))
    return {"digits": load_digits(None, None), "breast_cancer": load_breast_cancer(None, None), "wine": wine_ds}


class Objective:
    """The tune stage's objective for one dataset, with a plain training loop."""

    def __init__(self, params, arch: str, ds, seed: int):
        from dlpipe.data.prepared import PreparedData
        from dlpipe.data.splits import make_splits
        from dlpipe.tuning.objective import objective_folds
        from dlpipe.tuning.space import SearchSpace

        self.params, self.arch, self.seed = params, arch, seed
        self.data = PreparedData(ds, make_splits(ds.y.numpy(), params.data.test_size, params.data.folds, seed))
        self.space = SearchSpace.for_arch(params, arch)
        folds = objective_folds(params.model_copy(update={"seed": seed}), self.data)
        val = params.data.val_size
        if folds == 0:
            self.parts = [self.data.holdout(val, seed)]
            self.parts = [(p.train, p.val) for p in self.parts]
        else:
            splits = [self.data.fold(k, val, seed) for k in range(folds)]
            self.parts = [(s.fit.train, s.scored) for s in splits]
        self.epochs = params.tune.max_epochs

    def __call__(self, trial: optuna.Trial) -> float:
        from dlpipe.config import apply_overrides
        from dlpipe.models import build_model
        from dlpipe.training.module import make_optimizer

        model_p, train_p = apply_overrides(self.params, self.arch, self.space.suggest(trial))
        scores = []
        for k, (train, scored) in enumerate(self.parts):
            torch.manual_seed(self.seed + k)
            net = build_model(
                self.arch,
                model_p.model_dump(),
                self.data.dataset.input_shape,
                self.data.dataset.num_classes,
                features=self.data.dataset.features,
            )
            optimizer = make_optimizer(train_p, net.parameters())
            gen = torch.Generator().manual_seed(self.seed + k)
            for epoch in range(self.epochs):
                net.train()
                for batch in torch.randperm(len(train), generator=gen).split(train_p.batch_size):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(net(train.X[batch]), train.y[batch]).backward()
                    optimizer.step()
                net.eval()
                with torch.no_grad():
                    pred = net(scored.X).argmax(dim=1).numpy()
                score = float(f1_score(scored.y.numpy(), pred, average="macro"))
                trial.report(score, k * self.epochs + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            scores.append(score)
        return float(np.mean(scores))


def best_curve(study: optuna.Study, n: int) -> list[float]:
    """Best COMPLETE value after each of the first `n` finished trials (nan before the first)."""
    best, curve = -np.inf, []
    for t in sorted(study.trials, key=lambda t: t.number)[:n]:
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = max(best, t.value)
        curve.append(best if np.isfinite(best) else np.nan)
    return curve


def run(params, arch: str, ds, kind: str, startup: int, seed: int, trials: int) -> list[float]:
    from dlpipe.tuning.study import make_pruner, make_sampler

    objective = Objective(params, arch, ds, seed)
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(kind, seed, startup),
        pruner=make_pruner("median", objective.epochs * len(objective.parts)),
    )
    study.optimize(objective, n_trials=trials)
    return best_curve(study, trials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    from dlpipe.config import Params

    params = Params.model_validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    checkpoints = [c for c in (3, 5) if c < args.trials] + [args.trials]
    head = " | ".join(f"best after {c}" for c in checkpoints)
    print(
        f"\n{args.arch}, {args.seeds} seeds (0..{args.seeds - 1}); mean best score over seeds; "
        "'> random': seeds whose best beats random search's best with the same seed\n"
    )
    print(f"| data | sampler | {head} | > random | seconds |")
    print("| --- | --- |" + " ---: |" * (len(checkpoints) + 2))
    for name, ds in datasets().items():
        curves = {}
        for label, (kind, startup) in SAMPLERS.items():
            start = time.perf_counter()
            curves[label] = np.array(
                [run(params, args.arch, ds, kind, startup, s, args.trials) for s in range(args.seeds)]
            )
            seconds = time.perf_counter() - start
            cells = " | ".join(f"{np.nanmean(curves[label][:, c - 1]):.4f}" for c in checkpoints)
            wins = int((curves[label][:, -1] > curves["random"][:, -1]).sum())
            ties = int((curves[label][:, -1] == curves["random"][:, -1]).sum())
            versus = "-" if label == "random" else f"{wins}/{args.seeds}" + (f" ({ties} tied)" if ties else "")
            print(f"| {name} | {label} | {cells} | {versus} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
