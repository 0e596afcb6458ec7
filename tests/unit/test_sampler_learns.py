"""Tuning that learns within the default budget: the default sampler of a 10-trial study leaves its random start-up
and beats random search with the same seeds on an objective with a known optimum."""

from __future__ import annotations

import math

import optuna

from dlpipe.config import parse_params
from dlpipe.tuning import study as S
from dlpipe.tuning.space import SearchSpace

SPACE = {
    "train.lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


def best_after(sampler: optuna.samplers.BaseSampler, space: SearchSpace, n: int) -> float:
    """Best value of `n` trials; the optimum (0) is lr = 0.003, dropout = 0.1."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        real = space.suggest(trial)
        study.tell(trial, -abs(math.log10(real["train.lr"] / 0.003)) - abs(real["model.dropout"] - 0.1))
    return study.best_value


def test_the_default_sampler_learns_within_the_default_budget():
    params = parse_params({"architectures": ["mlp"], "tune": {"space": SPACE, "spaces": {"mlp": {}}}})
    space = SearchSpace.for_arch(params, "mlp")
    n, tune = params.tune.n_trials, params.tune
    assert n == 10 and tune.sampler != "random"
    wins = 0
    for seed in range(10):
        learned = best_after(S.make_sampler(tune.sampler, seed, tune.startup_trials), space, n)
        random = best_after(S.make_sampler("random", seed), space, n)
        wins += learned > random
    assert wins >= 7, f"the default sampler beat random search with the same seed {wins} times in 10"
