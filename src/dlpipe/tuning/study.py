"""The Optuna study of one architecture: its name, storage, sampler and pruner, and what it has found.

- Name: `<arch>-<hash>` of everything that shapes the search (space, sampler, pruner, metric, folds, epochs, seed,
  data params and dataset hash, the model/train params that are not tuned, precision). Same params on any
  machine give the same name, so a rerun resumes the study and `dlpipe tune-worker` joins it; a changed space
  starts a new study. `tune.n_trials`, `tune.timeout` and `tune.workers` are not part of it: raising the budget
  continues the study.
- Storage: a journal file at `<project>/optuna/journal.log` (one machine, any number of processes), or
  `tune.storage`: a database URL (`postgresql://user:pass@host:5432/db`, RDBStorage) for many machines, or another
  journal file path (relative to the project root).
- Sampler: TPE, random or CMA-ES, re-created for every trial with a seed drawn from (seed, trial number): the
  sequence of trials is the same in a rerun, after a resumption and whichever worker runs a trial, and parallel
  workers never share a random stream.
- Budget: COMPLETE and PRUNED trials count toward `tune.n_trials` (FAIL does not; failures are retried up to a cap).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dlpipe.config import Params, params_hash
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.paths import ProjectPaths
from dlpipe.tracking.store import project_root
from dlpipe.training.metrics import SCALAR_METRICS
from dlpipe.tuning.space import SearchSpace

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.log"
DIRECTION = "maximize"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states that count toward tune.n_trials
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

# Pruner settings (module constants so tests and benchmarks may tighten them).
MEDIAN_STARTUP_TRIALS = 3  # median: trials that finish before any trial is pruned
MEDIAN_WARMUP_STEPS = 1  # median: the first steps (epochs) of a trial are never pruned
REDUCTION_FACTOR = 3  # successive halving and hyperband

# System attributes dlpipe sets on trials (see dlpipe.tuning.workers).
ATTR_HEARTBEAT = "dlpipe:heartbeat"
ATTR_INTERRUPTED = "dlpipe:interrupted"
ATTR_SURPLUS = "dlpipe:surplus"
ATTR_STALE = "dlpipe:stale"
ATTR_ERROR = "dlpipe:error"
NOT_A_FAILURE = (ATTR_INTERRUPTED, ATTR_SURPLUS, ATTR_STALE)  # FAIL trials that do not count toward the cap


# --- name ---------------------------------------------------------------------------------------------------------


def study_key(params: Params, arch: str, space: SearchSpace, dataset_hash: str) -> dict[str, Any]:
    """Everything that shapes the search of `arch` (and nothing that only sizes or spreads it)."""
    tuned = set(space.keys)
    model = {k: v for k, v in params.model_params(arch).model_dump(mode="json").items() if f"model.{k}" not in tuned}
    train = {k: v for k, v in params.train.model_dump(mode="json").items() if f"train.{k}" not in tuned}
    metric = params.selection.metric
    return {
        "arch": arch,
        "space": space.to_dict(),
        "sampler": params.tune.sampler,
        "pruner": params.tune.pruner,
        "metric": metric,
        "positive_class": params.selection.positive_class if metric.endswith("_positive") else None,
        "cv_folds": params.tune.cv_folds,
        "max_epochs": params.tune.max_epochs,
        "seed": params.seed,
        "data": params.data.model_dump(mode="json"),
        "dataset_hash": dataset_hash,
        "model": model,
        "train": train,
        "precision": params.trainer.precision,
    }


def study_hash(params: Params, arch: str, space: SearchSpace, dataset_hash: str) -> str:
    return params_hash(study_key(params, arch, space, dataset_hash))


def study_name(params: Params, arch: str, space: SearchSpace, dataset_hash: str) -> str:
    return f"{arch}-{study_hash(params, arch, space, dataset_hash)}"


# --- storage ------------------------------------------------------------------------------------------------------


def storage_location(params: Params, paths: ProjectPaths) -> str:
    """The database URL of `tune.storage`, or the absolute path of the journal file."""
    configured = params.tune.storage
    if configured and "://" in configured:
        if configured.startswith("postgres://"):  # sqlalchemy knows only the long scheme
            return "postgresql://" + configured.removeprefix("postgres://")
        return configured
    root = project_root(paths.root)
    if configured:
        path = Path(configured)
        return str(path if path.is_absolute() else root / path)
    return str(root / "optuna" / JOURNAL_FILE)


def redact(location: str) -> str:
    """`location` without its password (for reports, logs and MLflow)."""
    if "://" not in location:
        return location
    try:
        from sqlalchemy.engine import make_url

        return make_url(location).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: drop any user info
        scheme, _, rest = location.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"


def with_driver(url: str) -> str:
    """`postgresql://` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 assumes psycopg 3, dlpipe's
    `postgres` extra installs psycopg2. An explicit `postgresql+driver://` stays as it is."""
    if not url.startswith("postgresql://"):
        return url
    for module, scheme in (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")):
        if importlib.util.find_spec(module) is not None:
            return scheme + url.removeprefix("postgresql")
    return url


def open_storage(location: str) -> BaseStorage:
    """A journal storage for a file path, an RDB storage for a database URL."""
    if "://" not in location:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(with_driver(location), engine_kwargs={"pool_pre_ping": True})
    except ImportError as exc:
        raise ConfigError(f"tune.storage: {redact(location)} needs a database driver ({exc}); "
                          "install dlpipe[postgres] (psycopg2-binary)") from None  # fmt: skip
    except Exception as exc:  # sqlalchemy errors: server down, bad credentials, unknown database
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DlpipeError(f"tune.storage: cannot open {redact(location)}: {first}") from None


# --- sampler and pruner -------------------------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` in a study seeded with `seed`."""
    digest = hashlib.sha256(f"dlpipe-trial:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class TrialSeededSampler(BaseSampler):
    """Delegates to a fresh sampler per trial, seeded from (seed, trial number).

    Optuna's samplers keep their history in the study, not in the sampler, so a new instance per trial samples
    as well as a long-lived one; what changes is that a trial's random draws no longer depend on which process
    runs it or on how many trials that process ran before.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self._factory = factory
        self._seed = seed
        self._current = factory(trial_seed(seed, 0))

    def __str__(self) -> str:
        return f"TrialSeeded({type(self._current).__name__}, seed={self._seed})"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current = self._factory(trial_seed(self._seed, trial.number))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def sampler_factory(kind: str) -> Callable[[int], BaseSampler]:
    if kind == "random":
        return lambda s: optuna.samplers.RandomSampler(seed=s)
    if kind == "cmaes":  # categorical dimensions fall back to independent (random) sampling
        return lambda s: optuna.samplers.CmaEsSampler(seed=s, warn_independent_sampling=False)
    return lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True)  # liar: parallel workers spread out


def check_sampler(kind: str) -> None:
    """CMA-ES needs the `cmaes` package, which Optuna does not install."""
    if kind == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError("tune.sampler: cmaes needs the 'cmaes' package (pip install cmaes); "
                          "allowed without it: tpe, random")  # fmt: skip


def make_sampler(kind: str, seed: int) -> BaseSampler:
    return TrialSeededSampler(sampler_factory(kind), seed)


def make_pruner(kind: str, max_steps: int) -> optuna.pruners.BasePruner:
    """`max_steps`: the most intermediate values one trial reports (epochs x folds)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_STEPS)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_steps),
                                              reduction_factor=REDUCTION_FACTOR)  # fmt: skip
    return optuna.pruners.NopPruner()


def epochs_per_fit(params: Params, space: SearchSpace) -> int:
    """The most epochs one fit of a trial may run: train.max_epochs (or its tuned maximum), capped by
    tune.max_epochs."""
    dim = space.dims.get("train.max_epochs")
    most = int(max(dim.probes())) if dim is not None else params.train.max_epochs
    return min(most, params.tune.max_epochs or most)


def max_steps(params: Params, space: SearchSpace) -> int:
    return epochs_per_fit(params, space) * max(1, params.tune.cv_folds)


# --- the study ----------------------------------------------------------------------------------------------------


@dataclass
class StudyHandle:
    """An opened study with what identifies it."""

    study: optuna.Study
    name: str
    hash: str
    location: str  # file path or URL (with password: never log it, use `storage`)
    key: dict[str, Any]

    @property
    def storage(self) -> str:
        return redact(self.location)


def open_study(params: Params, paths: ProjectPaths, arch: str, space: SearchSpace, dataset_hash: str) -> StudyHandle:
    """Create the study of `arch` or load it when it exists (resumption, or a worker joining)."""
    key = study_key(params, arch, space, dataset_hash)
    digest = params_hash(key)
    name = f"{arch}-{digest}"
    location = storage_location(params, paths)
    storage = open_storage(location)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=DIRECTION,
        sampler=make_sampler(params.tune.sampler, params.seed),
        pruner=make_pruner(params.tune.pruner, max_steps(params, space)),
        load_if_exists=True,
    )
    if "dlpipe:key" not in study.user_attrs:
        study.set_user_attr("dlpipe:key", json.dumps(key, sort_keys=True))
    return StudyHandle(study, name, digest, location, key)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def finished_count(trials: list[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in trials)


def counted_failures(trials: list[FrozenTrial]) -> int:
    """FAIL trials that count toward the failure cap (not interrupted, surplus or stale ones)."""
    return sum(t.state == TrialState.FAIL and not any(a in t.system_attrs for a in NOT_A_FAILURE) for t in trials)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def monitor_for(metric: str) -> str:
    """The per-epoch validation metric pruning watches: val_<metric>, else val_accuracy (*_positive metrics)."""
    return f"val_{metric}" if metric in SCALAR_METRICS else "val_accuracy"
