"""The Optuna study of one architecture: its name, storage, sampler and pruner, and what it has found.

- Name: `<arch>-<hash>` of everything that shapes the search (space, sampler, pruner, metric, folds, epochs, seed,
  data params and dataset hash, the model/train params that are not tuned, precision). Same params on any
  machine give the same hash, so a rerun resumes the study and `dlpipe tune-worker` joins it; a changed space
  starts a new study. `tune.n_trials`, `tune.timeout` and `tune.workers` are not part of it: raising the budget
  continues the study. A study that `dvc exp run` creates is named `<arch>-<hash>@<experiment>` (DVC_EXP_NAME);
  a study with the same hash is found under whichever name it has (its own experiment's first, then the plain
  name, then the oldest other), so a rerun of the experiment, `dvc repro` and other experiments resume it.
- Storage: a journal file at `<project>/optuna/journal.log` (one machine, any number of processes), or
  `tune.storage`: a database URL (`postgresql://user:pass@host:5432/db`, RDBStorage) for many machines, or another
  journal file path (relative to the project root). A journal torn by a crash or a full disk is repaired when it
  is opened and before every append (see dlpipe.tuning.journal).
- Sampler: TPE, Gaussian process, random or CMA-ES (the model-based ones random for their first
  `tune.startup_trials` trials), re-created for every trial with a seed drawn from (seed, the trial's position
  in the study's logical sequence). Discarded trials (FAIL from an interrupt, a lost race for the last slot, or a
  dead process: interrupted, surplus, stale, orphaned) give their position to the next trial, so with one worker
  the trial that re-runs an interrupted one samples its params, and a resumed study ends with the trials of an
  uninterrupted one; a FAIL from a real error (a NaN loss) keeps its position, as it would have happened anyway.
  The sequence is the same in a rerun and whichever worker runs a trial, and parallel workers never share a
  position. (Hyperband puts a trial in a bracket by its number, so there a re-run trial may be pruned
  differently.)
- Budget: COMPLETE and PRUNED trials count toward `tune.n_trials` (FAIL does not; failures are retried up to a cap).
  Under `study.budget.epochs` the study also stops once its finished trials trained that many epochs, and prunes by
  successive halving (`pruner_of`). The budget is a ceiling, not a threshold: no trial starts while the epochs
  finished, reported and under way reach it, and a trial on the validation slice stops at the end of the epoch
  that reaches it, keeping its best epoch (`epochs_committed`). Only two trials ending an epoch at the same moment
  can each count the other's epoch twice and leave one epoch for a new trial.
- Best trial: the highest value, then the lowest validation loss of the kept model (trial user attr `val_loss`),
  then the lowest number.
- In optuna-dashboard: the objective is named after the selection metric, and the study's user attributes show
  what the name hashes (`dlpipe:arch`, `dlpipe:metric`, `dlpipe:space.train.lr.high`, ...: one per leaf).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dlpipe import RESULTS_PROTOCOL
from dlpipe.config import Params, TuneParams, flatten, params_hash
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.metric_names import is_positive_metric
from dlpipe.paths import ProjectPaths
from dlpipe.tracking.store import project_root
from dlpipe.tuning.journal import JournalFile
from dlpipe.tuning.owned import ATTR_OWNER as ATTR_OWNER  # set when a trial is created
from dlpipe.tuning.owned import OwnedJournalStorage, OwnedRDBStorage
from dlpipe.tuning.space import SearchSpace

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.log"
DIRECTION = "maximize"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states that count toward tune.n_trials
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

# Pruner settings (module constants so tests and benchmarks may tighten them).
STARTUP_TRIALS = TuneParams.model_fields["startup_trials"].default  # random trials before a model-based one learns
MEDIAN_STARTUP_TRIALS = 3  # median: trials that finish before any trial is pruned
MEDIAN_WARMUP_STEPS = 1  # median: the first steps (epochs) of a trial are never pruned
REDUCTION_FACTOR = 3  # successive halving and hyperband

# System attributes dlpipe sets on trials (see dlpipe.tuning.workers).
ATTR_HEARTBEAT = "dlpipe:heartbeat"
ATTR_INTERRUPTED = "dlpipe:interrupted"
ATTR_SURPLUS = "dlpipe:surplus"
ATTR_STALE = "dlpipe:stale"
ATTR_ORPHANED = "dlpipe:orphaned"
ATTR_ERROR = "dlpipe:error"
# FAIL trials with one of these are discarded: they do not count toward the failure cap and give their position
# in the sampling sequence to the next trial
NOT_A_FAILURE = (ATTR_INTERRUPTED, ATTR_SURPLUS, ATTR_STALE, ATTR_ORPHANED)
USER_ATTR_VAL_LOSS = "val_loss"  # set by the objective: the validation loss of the kept model
STUDY_ATTR_PREFIX = "dlpipe:"


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
        "startup_trials": params.tune.startup_trials if params.tune.sampler != "random" else None,
        "pruner": pruner_of(params),
        "metric": metric,
        "positive_class": params.selection.positive_class if is_positive_metric(metric) else None,
        "cv_folds": params.tune.cv_folds,
        "protocol": RESULTS_PROTOCOL,
        "max_epochs": params.tune.max_epochs,
        "seed": params.seed,
        "data": params.data.model_dump(mode="json"),
        "dataset_hash": dataset_hash,
        "model": model,
        "train": train,
        "precision": params.trainer.precision,
        # only when set: the studies from before the key existed keep their names
        **({"max_train_samples": n} if (n := params.tune.max_train_samples) is not None else {}),
    }


def study_hash(params: Params, arch: str, space: SearchSpace, dataset_hash: str) -> str:
    return params_hash(study_key(params, arch, space, dataset_hash))


def study_name(params: Params, arch: str, space: SearchSpace, dataset_hash: str) -> str:
    """The name a new study of `arch` gets here (`own_name`)."""
    return own_name(arch, study_hash(params, arch, space, dataset_hash))


DVC_EXP_NAME = "DVC_EXP_NAME"  # `dvc exp run` sets it in every stage's environment (dvc.env)


def own_name(arch: str, digest: str) -> str:
    """The name a new study of `arch` gets here: `<arch>-<hash>`, `<arch>-<hash>@<experiment>` under `dvc exp run`."""
    experiment = os.environ.get(DVC_EXP_NAME)
    return f"{arch}-{digest}@{experiment}" if experiment else f"{arch}-{digest}"


def existing_name(storage: BaseStorage, arch: str, digest: str) -> str:
    """The study with this hash to resume (see the module doc), else `own_name`."""
    own, plain = own_name(arch, digest), f"{arch}-{digest}"
    names = [s.study_name for s in storage.get_all_studies()]
    tagged = [n for n in names if n.startswith(plain + "@")]
    for name in (own, plain, *tagged):
        if name in names:
            return name
    return own


def study_attrs(key: dict[str, Any], digest: str) -> dict[str, Any]:
    """The study's user attributes: one per leaf of its key (`dlpipe:space.train.lr.high`), and its hash."""
    return {**flatten(key, STUDY_ATTR_PREFIX), f"{STUDY_ATTR_PREFIX}hash": digest}


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
    """A journal storage for a file path, an RDB storage for a database URL; both create trials with their owner."""
    if "://" not in location:
        return JournalFile(location).storage(OwnedJournalStorage)
    try:
        return OwnedRDBStorage(with_driver(location), engine_kwargs={"pool_pre_ping": True})
    except ImportError as exc:
        raise ConfigError(
            f"tune.storage: {redact(location)} needs a database driver ({exc}); "
            "install dlpipe[postgres] (psycopg2-binary)"
        ) from None
    except Exception as exc:  # sqlalchemy errors: server down, bad credentials, unknown database
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DlpipeError(f"tune.storage: cannot open {redact(location)}: {first}") from None


# --- sampler and pruner -------------------------------------------------------------------------------------------


def trial_seed(seed: int, position: int) -> int:
    """The sampler seed of the trial at `position` of the logical sequence of a study seeded with `seed`."""
    digest = hashlib.sha256(f"dlpipe-trial:{seed}:{position}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def is_discarded(trial: FrozenTrial) -> bool:
    """A FAIL that an uninterrupted study would not have: interrupted, surplus, stale or orphaned."""
    return trial.state == TrialState.FAIL and any(a in trial.system_attrs for a in NOT_A_FAILURE)


def sequence_positions(trials: list[FrozenTrial]) -> dict[int, int]:
    """Trial number -> position in the study's logical sequence, for every started trial.

    A trial takes the lowest position that no earlier trial holds. A trial holds its position for good, unless it
    is discarded: then it is free for the trials started after it was closed. In a sequential study that is the
    count of earlier trials that are not discarded; among parallel workers no two trials share a position.
    Every process computes the same positions from the stored trials."""
    positions: dict[int, int] = {}
    kept: set[int] = set()
    low = 0  # the lowest position not in `kept`
    dropped: list[tuple[datetime | None, int]] = []  # (closed at, position) of discarded trials
    for t in sorted(trials, key=lambda t: t.number):
        if t.datetime_start is None:  # WAITING: no position until it starts
            continue
        busy = {p for closed, p in dropped if closed is None or closed > t.datetime_start}
        pos = low
        while pos in kept or pos in busy:
            pos += 1
        positions[t.number] = pos
        if is_discarded(t):
            dropped.append((t.datetime_complete, pos))
        else:
            kept.add(pos)
            while low in kept:
                low += 1
    return positions


class TrialSeededSampler(BaseSampler):
    """Delegates to a fresh sampler per trial, seeded from (seed, the trial's position in `sequence_positions`).

    Optuna's samplers keep their history in the study, not in the sampler, so a new instance per trial samples
    as well as a long-lived one; what changes is that a trial's random draws no longer depend on which process
    runs it, on how many trials that process ran before, or on trials that an interrupt discarded.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self._factory = factory
        self._seed = seed
        self._current = factory(trial_seed(seed, 0))

    def __str__(self) -> str:
        return f"TrialSeeded({type(self._current).__name__}, seed={self._seed})"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # the base method: under Hyperband `study` is a bracket view whose get_trials lists one bracket only
        trials = optuna.Study.get_trials(study, deepcopy=False)
        position = sequence_positions(trials).get(trial.number, trial.number)
        self._current = self._factory(trial_seed(self._seed, position))
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


def sampler_factory(kind: str, startup_trials: int = STARTUP_TRIALS) -> Callable[[int], BaseSampler]:
    """A seed -> sampler factory; model-based samplers sample at random for their first `startup_trials` trials
    (Optuna's default of 10 would leave a 10-trial study entirely random)."""
    n = startup_trials
    if kind == "random":
        return lambda s: optuna.samplers.RandomSampler(seed=s)
    if kind == "cmaes":  # categorical dimensions fall back to independent (random) sampling
        return lambda s: optuna.samplers.CmaEsSampler(seed=s, n_startup_trials=n, warn_independent_sampling=False)
    if kind == "gp":  # Gaussian process; learns from COMPLETE trials only (pruned ones are not scored)
        return lambda s: optuna.samplers.GPSampler(seed=s, n_startup_trials=n, warn_independent_sampling=False)
    # multivariate: one joint density over the dimensions (Optuna 5's default); liar: parallel workers spread out
    return lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=n, multivariate=True, constant_liar=True)


def make_sampler(kind: str, seed: int, startup_trials: int = STARTUP_TRIALS) -> BaseSampler:
    return TrialSeededSampler(sampler_factory(kind, startup_trials), seed)


def pruner_of(params: Params) -> str:
    """tune.pruner, or under a study budget successive halving (stops clearly worse trials after the first
    epoch) unless tune.pruner is hyperband, itself a multi-fidelity pruner."""
    if params.study.budget.enabled and params.tune.pruner not in ("successive_halving", "hyperband"):
        return "successive_halving"
    return params.tune.pruner


def epochs_spent(trials: list[FrozenTrial]) -> int:
    """Epochs the finished trials trained (a pruned trial counts the epochs it ran): what a study budget spends."""
    return sum(int(t.user_attrs.get("epochs", 0)) for t in trials if t.state in FINISHED)


def epochs_committed(trials: list[FrozenTrial], own: int | None = None) -> int:
    """Epochs a study budget has spent or is spending: the finished trials', the epochs each running trial has
    reported, and the epoch each running trial other than `own` (the trial asking, at the end of an epoch) is
    training now."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return epochs_spent(trials) + sum(len(t.intermediate_values) + (t.number != own) for t in running)


def make_pruner(kind: str, max_steps: int) -> optuna.pruners.BasePruner:
    """`max_steps`: the most intermediate values one trial reports (epochs x folds)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_STEPS)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, max_steps), reduction_factor=REDUCTION_FACTOR
        )
    return optuna.pruners.NopPruner()


def epochs_per_fit(params: Params, space: SearchSpace) -> int:
    """The most epochs one fit of a trial may run: train.max_epochs (or its tuned maximum), capped by
    tune.max_epochs."""
    dim = space.dims.get("train.max_epochs")
    most = int(max(dim.probes())) if dim is not None else params.train.max_epochs
    return min(most, params.tune.max_epochs or most)


def max_steps(params: Params, space: SearchSpace) -> int:
    """The most intermediate values a trial reports (with tune.cv_folds: auto, as if it used every fold)."""
    folds = params.data.folds if params.tune.cv_folds == "auto" else params.tune.cv_folds
    return epochs_per_fit(params, space) * max(1, folds)


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
    location = storage_location(params, paths)
    storage = open_storage(location)
    name = existing_name(storage, arch, digest)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=DIRECTION,
        sampler=make_sampler(params.tune.sampler, params.seed, params.tune.startup_trials),
        pruner=make_pruner(pruner_of(params), max_steps(params, space)),
        load_if_exists=True,
    )
    describe(study, key, digest, params.selection.metric)
    return StudyHandle(study, name, digest, location, key)


def describe(study: optuna.Study, key: dict[str, Any], digest: str, metric: str) -> None:
    """Name the objective after `metric` and record the key as readable user attributes (once per study)."""
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
    if f"{STUDY_ATTR_PREFIX}hash" not in study.user_attrs:
        for attr, value in study_attrs(key, digest).items():  # the hash last: it marks a complete set
            study.set_user_attr(attr, value)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def finished_count(trials: list[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in trials)


def counted_failures(trials: list[FrozenTrial]) -> int:
    """FAIL trials that count toward the failure cap (not interrupted, surplus, stale or orphaned ones)."""
    return sum(t.state == TrialState.FAIL and not is_discarded(t) for t in trials)


def val_loss(trial: FrozenTrial) -> float:
    """The trial's `val_loss` user attribute; +inf when missing or not a finite number."""
    value = trial.user_attrs.get(USER_ATTR_VAL_LOSS)
    try:
        loss = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf
    return loss if math.isfinite(loss) else math.inf


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the highest value; ties go to the lowest `val_loss`, then the lowest number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -val_loss(t), -t.number)) if complete else None
