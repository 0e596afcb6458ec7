"""Hyperparameter tuning with Optuna: search spaces from params, the objective, study storage, parallel workers.

- `space`: `tune.space` / `tune.spaces.<arch>` -> `trial.suggest_*` and back to real `train.*` / `model.*` values
- `objective`: one trial = fit on the validation split (or the first k folds), report every epoch, prune
- `study`: storage (journal file or PostgreSQL), sampler, pruner, the study name that identifies a search
- `workers`: the trial loop every worker runs against the shared storage, and the worker processes
"""
