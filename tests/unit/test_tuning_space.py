"""Tuning without training: search spaces, study names, seeded samplers, the epoch reporter, storage locations and
the worker loop (budget, failures, surplus and stale trials) with a stand-in objective."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from dlpipe.config import parse_params
from dlpipe.errors import ConfigError
from dlpipe.metric_names import monitor_for
from dlpipe.paths import ProjectPaths
from dlpipe.processes import Owner
from dlpipe.tuning import study as S
from dlpipe.tuning import workers as W
from dlpipe.tuning.objective import EpochReporter, NonFiniteLoss, selection_value
from dlpipe.tuning.space import SearchSpace, encode_choice

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
DROPOUT = {"type": "float", "low": 0.0, "high": 0.5}
HIDDEN = {"type": "categorical", "choices": [[64], [128, 64]]}


def params(tune: dict | None = None, **top):
    raw = {"architectures": ["perceptron", "mlp", "cnn"], "tune": tune or {}, **top}
    return parse_params(raw)


def sampled(space: SearchSpace, n: int, sampler: optuna.samplers.BaseSampler, value=None) -> list[dict]:
    """Params of `n` trials of an in-memory study (the objective's value: `value(params)` or 0)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        real = space.suggest(trial)
        study.tell(trial, value(real) if value else 0.0)
        out.append(real)
    return out


# --- search spaces ------------------------------------------------------------------------------------------------


def test_space_merges_shared_and_architecture_entries_and_skips_keys_an_architecture_lacks():
    p = params(
        {
            "space": {"train.lr": LR, "model.dropout": DROPOUT},
            "spaces": {"mlp": {"model.hidden": HIDDEN, "train.lr": {"type": "float", "low": 0.01, "high": 0.1}}},
        }
    )
    mlp = SearchSpace.for_arch(p, "mlp")
    assert mlp.keys == ["model.dropout", "model.hidden", "train.lr"]
    assert mlp.dims["train.lr"].dim.low == 0.01 and not mlp.dims["train.lr"].dim.log  # the architecture's entry wins
    assert mlp.dims["train.lr"].where == "tune.spaces.mlp.train.lr"
    perceptron = SearchSpace.for_arch(p, "perceptron")  # no dropout: the shared key is skipped
    assert perceptron.keys == ["train.lr"]
    assert perceptron.dims["train.lr"].dim.low == 1e-4


def test_list_choices_are_offered_to_optuna_as_text_and_decoded_to_the_real_values():
    space = SearchSpace.for_arch(params({"spaces": {"mlp": {"model.hidden": HIDDEN}}}), "mlp")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        real = space.suggest(trial)
        study.tell(trial, 0.0)
        assert isinstance(trial.params["model.hidden"], str)  # what Optuna stores
        assert real["model.hidden"] in ([64], [128, 64])  # what training gets
        assert space.decode(trial.params) == real
        seen.add(trial.params["model.hidden"])
    assert seen == {"[64]", "[128, 64]"}
    assert encode_choice(0.5) == 0.5 and encode_choice("relu") == "relu" and encode_choice(None) is None


def test_every_kind_of_dimension_becomes_the_matching_optuna_distribution():
    space = SearchSpace.for_arch(
        params(
            {
                "spaces": {
                    "mlp": {
                        "train.lr": LR,
                        "train.batch_size": {"type": "int", "low": 16, "high": 128, "log": True},
                        "train.max_epochs": {"type": "int", "low": 2, "high": 10, "step": 2},
                        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
                        "model.activation": {"type": "categorical", "choices": ["relu", "tanh", "gelu"]},
                        "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
                        "train.l1": {"type": "float", "low": 1e-8, "high": 1e-4, "log": True},
                        "train.l2": {"type": "float", "low": 1e-8, "high": 1e-4, "log": True},
                    }
                }
            }
        ),
        "mlp",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    real = space.suggest(trial)
    d = trial.distributions
    assert d["train.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["train.batch_size"] == IntDistribution(16, 128, log=True)
    assert d["train.max_epochs"] == IntDistribution(2, 10, step=2)
    assert d["model.dropout"] == FloatDistribution(0.0, 0.5, step=0.1)
    assert d["model.activation"] == CategoricalDistribution(["relu", "tanh", "gelu"])
    assert isinstance(real["train.batch_size"], int) and 16 <= real["train.batch_size"] <= 128
    assert real["train.max_epochs"] in (2, 4, 6, 8, 10)
    assert 1e-8 <= real["train.l1"] <= 1e-4 and real["train.optimizer"] in ("sgd", "adam")
    space.validate(params())  # every value of this space is a valid train/model value for mlp


@pytest.mark.parametrize(
    ("dim", "key", "message"),
    [
        ({"type": "categorical", "choices": ["adam", "lbfgs"]}, "train.optimizer", "'lbfgs' is not a valid train"),
        ({"type": "float", "low": 16, "high": 101}, "train.batch_size", "58.5 is not a valid train.batch_size"),
        ({"type": "float", "low": 0.0, "high": 1.5}, "model.dropout", "1.5 is not a valid model.dropout"),
        ({"type": "categorical", "choices": [[64], []]}, "model.hidden", "[] is not a valid model.hidden"),
    ],
)
def test_validate_names_the_key_and_the_value_that_training_would_reject(dim, key, message):
    """The same check runs when params are loaded (`dlpipe check` and the check stage refuse what tuning would)."""
    with pytest.raises(ConfigError) as info:
        params({"spaces": {"mlp": {key: dim}}})
    assert str(info.value).startswith(f"params.yaml: tune.spaces.mlp.{key}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        ({"type": "int", "low": 1.5, "high": 4}, "tune.space.train.max_epochs.low: int dimensions need whole numbers"),
        ({"type": "int", "low": 2, "high": 64, "log": True, "step": 2}, "log scale and step cannot be combined"),
        ({"type": "float", "low": 1, "high": 64, "log": True, "step": 1}, "log scale and step cannot be combined"),
        ({"type": "categorical", "choices": [3, 3]}, "tune.space.train.max_epochs.choices: 3 appears more than once"),
    ],
)
def test_unusable_dimensions_are_config_errors(dim, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.for_arch(params({"space": {"train.max_epochs": dim}}), "mlp")


# --- study names --------------------------------------------------------------------------------------------------


def test_study_name_changes_with_what_shapes_the_search_and_not_with_the_budget():
    base = {"space": {"train.lr": LR}, "spaces": {"mlp": {"model.hidden": HIDDEN}}}

    def name(tune=None, **top):
        p = params({**base, **(tune or {})}, **top)
        return S.study_name(p, "mlp", SearchSpace.for_arch(p, "mlp"), "datahash")

    first = name()
    assert first.startswith("mlp-") and len(first) == len("mlp-") + 12
    assert name() == first
    for same in ({"n_trials": 50}, {"workers": 4}, {"timeout": 60.0}, {"storage": "postgresql://h/db"}):
        assert name(same) == first, same
    assert name(train={"lr": 0.5}) == first  # the base value of a tuned key does not matter
    changed = [
        name({"space": {"train.lr": {**LR, "high": 0.5}}}),
        name({"spaces": {"mlp": {}}}),
        name({"sampler": "random"}),
        name({"pruner": "hyperband"}),
        name({"cv_folds": 2}),
        name({"max_epochs": 3}),
        name(seed=1),
        name(train={"batch_size": 32}),
        name(models={"mlp": {"dropout": 0.1}}),
        name(selection={"metric": "accuracy"}),
        name(data={"val_size": 0.2}),
        name({"max_train_samples": 500}),
    ]
    assert "max_train_samples" not in S.study_key(params(base), "mlp", lr_space(), "h")  # older studies keep names
    assert first not in changed and len(set(changed)) == len(changed)
    p = params(base)
    assert S.study_name(p, "mlp", SearchSpace.for_arch(p, "mlp"), "otherdata") != first


def test_a_study_created_under_dvc_exp_run_names_its_experiment_and_is_resumed(tmp_path: Path, monkeypatch):
    """`dvc exp run` sets DVC_EXP_NAME: a new study says which experiment created it; a rerun of the experiment,
    another experiment and `dvc repro` with the same params resume it; `dvc repro` names a new study as before."""
    p = params({"sampler": "random", "spaces": {"mlp": {"train.lr": LR}}})
    space = SearchSpace.for_arch(p, "mlp")

    def opened(project: Path, experiment: str | None) -> S.StudyHandle:
        if experiment is None:
            monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        else:
            monkeypatch.setenv("DVC_EXP_NAME", experiment)
        return S.open_study(p, ProjectPaths(project), "mlp", space, "abc123")

    plain = opened(tmp_path / "repro", None)
    assert plain.name == f"mlp-{plain.hash}"  # `dvc repro`: the name of today
    assert opened(tmp_path / "repro", "later-exp").name == plain.name  # an experiment resumes the study of repro

    first = opened(tmp_path / "exp", "tidy-lynx")
    assert first.name == f"mlp-{first.hash}@tidy-lynx"
    first.study.add_trial(optuna.trial.create_trial(value=0.5))
    for experiment in ("tidy-lynx", None, "other-exp"):  # its rerun, `dvc repro`, another experiment
        again = opened(tmp_path / "exp", experiment)
        assert again.name == first.name and len(again.study.trials) == 1, experiment
    names = optuna.get_all_study_names(S.open_storage(S.storage_location(p, ProjectPaths(tmp_path / "exp"))))
    assert names == [first.name]


# --- samplers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tpe", "gp", "random", "cmaes"])
def test_seeded_samplers_repeat_their_trials_and_another_seed_changes_them(kind):
    space = SearchSpace.for_arch(
        params({"spaces": {"mlp": {"train.lr": LR, "model.dropout": DROPOUT, "model.hidden": HIDDEN}}}), "mlp"
    )

    def score(real):  # some signal so model-based samplers have something to learn
        return -abs(math.log10(real["train.lr"]) + 2) - real["model.dropout"]

    n = 6  # past the 3 random start-up trials (tune.startup_trials)
    first = sampled(space, n, S.make_sampler(kind, 42), score)
    assert sampled(space, n, S.make_sampler(kind, 42), score) == first
    other = sampled(space, n, S.make_sampler(kind, 43), score)
    assert other != first
    assert len({repr(p) for p in first}) == n  # no repeats within a study


def test_a_resumed_study_draws_what_an_uninterrupted_one_would():
    space = SearchSpace.for_arch(params({"spaces": {"mlp": {"train.lr": LR}}}), "mlp")
    uninterrupted = sampled(space, 4, S.make_sampler("random", 7))
    storage = optuna.storages.InMemoryStorage()
    resumed = []
    for _ in range(2):  # two processes, each with a new sampler, on one storage: 2 trials each
        study = optuna.create_study(
            storage=storage, study_name="s", sampler=S.make_sampler("random", 7), load_if_exists=True
        )
        for _ in range(2):
            trial = study.ask()
            resumed.append(space.suggest(trial))
            study.tell(trial, 0.0)
    assert resumed == uninterrupted  # a plain seeded sampler would repeat trials 0-1 as trials 2-3
    assert len({r["train.lr"] for r in resumed}) == 4
    assert S.trial_seed(7, 0) != S.trial_seed(7, 1) != S.trial_seed(8, 0)


def frozen(number: int, state: TrialState, start: float, end: float | None = None, **system_attrs) -> FrozenTrial:
    """A stored trial started at `start` and closed at `end` (seconds on a common clock)."""
    t0 = datetime(2025, 1, 1)
    return FrozenTrial(
        number=number,
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        datetime_start=t0 + timedelta(seconds=start),
        datetime_complete=None if end is None else t0 + timedelta(seconds=end),
        params={},
        distributions={},
        user_attrs={},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=number,
    )


def test_a_discarded_trial_gives_its_position_to_the_next_trial_and_a_real_failure_keeps_it():
    C, F = TrialState.COMPLETE, TrialState.FAIL
    sequential = [
        frozen(0, C, 0, 1),
        frozen(1, F, 1, 2, **{S.ATTR_INTERRUPTED: True}),
        frozen(2, F, 3, 3, **{S.ATTR_SURPLUS: True}),
        frozen(3, F, 4, 5, **{S.ATTR_ORPHANED: True}),
        frozen(4, C, 6, 7),
        frozen(5, F, 8, 9, **{S.ATTR_ERROR: "NonFiniteLoss: nan"}),
        frozen(6, C, 10, 11),
    ]
    assert S.sequence_positions(sequential) == {0: 0, 1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 3}
    # parallel workers: trial 2 started while trial 1 ran; trial 1 was interrupted after that, then trial 3 started
    parallel = [
        frozen(0, C, 0, 1),
        frozen(1, F, 2, 5, **{S.ATTR_STALE: True}),
        frozen(2, TrialState.RUNNING, 3),
        frozen(3, TrialState.RUNNING, 6),
        frozen(4, TrialState.WAITING, 7),
    ]
    parallel[4].datetime_start = None
    assert S.sequence_positions(parallel) == {0: 0, 1: 1, 2: 2, 3: 1}  # no two live trials share a position


def test_the_trial_that_reruns_an_interrupted_one_samples_its_params():
    space = SearchSpace.for_arch(params({"spaces": {"mlp": {"train.lr": LR, "model.hidden": HIDDEN}}}), "mlp")
    uninterrupted = sampled(space, 3, S.make_sampler("tpe", 7))
    study = optuna.create_study(direction="maximize", sampler=S.make_sampler("tpe", 7))
    resumed = []
    for interrupt in (False, True, False, False):
        trial = study.ask()
        real = space.suggest(trial)
        if interrupt:
            W.storage_of(study).set_trial_system_attr(W.trial_id(trial), S.ATTR_INTERRUPTED, True)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, 0.0)
            resumed.append(real)
    assert study.trials[1].params == study.trials[2].params
    assert resumed == uninterrupted


def test_best_trial_breaks_ties_by_validation_loss_then_number():
    study = optuna.create_study(direction="maximize")
    for value, attrs in [
        (0.9, {"val_loss": 0.1}),
        (1.0, {}),
        (1.0, {"val_loss": 0.5}),
        (1.0, {"val_loss": 0.2}),
        (1.0, {"val_loss": 0.2}),
        (1.0, {"val_loss": float("nan")}),
    ]:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"val_loss": 0.0}))
    assert S.best_trial(study).number == 3
    assert S.best_trial(optuna.create_study()) is None
    no_losses = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7, 0.7):
        no_losses.add_trial(optuna.trial.create_trial(value=value))
    assert S.best_trial(no_losses).number == 1


def test_a_new_study_names_its_objective_and_shows_its_key_as_readable_attributes(tmp_path: Path):
    p = params({"sampler": "random", "pruner": "median", "spaces": {"mlp": {"train.lr": LR}}})
    space = SearchSpace.for_arch(p, "mlp")
    handle = S.open_study(p, ProjectPaths(tmp_path), "mlp", space, "abc123")
    study = handle.study
    assert study.metric_names == ["f1_macro"]
    attrs = study.user_attrs
    assert "dlpipe:key" not in attrs
    assert attrs["dlpipe:arch"] == "mlp" and attrs["dlpipe:metric"] == "f1_macro"
    assert attrs["dlpipe:sampler"] == "random" and attrs["dlpipe:pruner"] == "median"
    assert attrs["dlpipe:seed"] == p.seed and attrs["dlpipe:dataset_hash"] == "abc123"
    assert attrs["dlpipe:space.train.lr.high"] == 0.1 and attrs["dlpipe:space.train.lr.log"] is True
    assert attrs["dlpipe:hash"] == handle.hash and handle.name == f"mlp-{handle.hash}"
    assert all(not isinstance(v, dict) for v in attrs.values())
    again = S.open_study(p, ProjectPaths(tmp_path), "mlp", space, "abc123").study
    assert again.user_attrs == attrs and again.metric_names == ["f1_macro"]
    old = optuna.create_study(storage=S.open_storage(str(tmp_path / "old.log")), study_name=handle.name)
    assert old.metric_names is None
    S.describe(old, handle.key, handle.hash, "f1_macro")  # a study of an older version gets both
    assert old.metric_names == ["f1_macro"] and old.user_attrs == attrs


def test_pruners_follow_params():
    assert isinstance(S.make_pruner("none", 10), optuna.pruners.NopPruner)
    assert isinstance(S.make_pruner("median", 10), optuna.pruners.MedianPruner)
    assert isinstance(S.make_pruner("successive_halving", 10), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(S.make_pruner("hyperband", 10), optuna.pruners.HyperbandPruner)
    p = params({"cv_folds": 3, "max_epochs": 4})
    assert S.max_steps(p, SearchSpace.for_arch(p, "mlp")) == 12


# --- objective pieces ---------------------------------------------------------------------------------------------


class StubTrial:
    def __init__(self, prune_at: int | None = None):
        self.reports: list[tuple[int, float]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][0] >= self.prune_at


def epoch_end(reporter: EpochReporter, epoch: int, **metrics: float) -> None:
    trainer = SimpleNamespace(current_epoch=epoch, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})
    reporter.on_train_epoch_end(trainer, None)


def test_reporter_reports_the_monitor_with_the_fold_offset_and_prunes():
    trial, logged = StubTrial(prune_at=11), []
    reporter = EpochReporter(trial, "val_f1_macro", offset=10, on_epoch=lambda step, m: logged.append((step, m)))
    epoch_end(reporter, 0, val_f1_macro=0.5, val_loss=1.0, train_loss=1.2)
    with pytest.raises(optuna.TrialPruned):
        epoch_end(reporter, 1, val_f1_macro=0.25, val_loss=1.1, train_loss=1.0)
    assert trial.reports == [(10, 0.5), (11, 0.25)]
    assert [s for s, _ in logged] == [10, 11] and logged[0][1]["val_loss"] == 1.0
    assert reporter.epochs == 2


def test_reporter_fails_a_trial_whose_loss_is_not_finite():
    reporter = EpochReporter(StubTrial(), "val_f1_macro")
    with pytest.raises(NonFiniteLoss, match="val_loss is nan"):
        epoch_end(reporter, 0, val_f1_macro=0.1, val_loss=float("nan"), train_loss=2.0)
    reporter = EpochReporter(StubTrial(), "val_f1_macro")  # the optimised loss (with L1/L2) of one batch
    reporter.on_train_batch_end(None, None, {"loss": torch.tensor(1.0)}, None, 0)
    reporter.on_train_batch_end(None, None, {"loss": torch.tensor(float("inf"))}, None, 1)
    with pytest.raises(NonFiniteLoss, match="not finite in epoch 0"):
        epoch_end(reporter, 0, val_f1_macro=0.1, val_loss=2.0, train_loss=2.0)


def test_monitor_and_selection_value_follow_the_selection_metric():
    assert monitor_for("f1_macro") == "val_f1_macro"
    assert monitor_for("recall_weighted") == "val_recall_weighted"
    assert monitor_for("f1_positive") == "val_accuracy"
    report = {"accuracy": 0.9, "f1_macro": 0.8, "per_class": {"yes": {"precision": 0.7, "recall": 0.6, "f1": 0.65}}}
    assert selection_value(report, "f1_macro", None) == 0.8
    assert selection_value(report, "recall_positive", "yes") == 0.6


# --- storage ------------------------------------------------------------------------------------------------------


def test_storage_location_defaults_to_the_projects_journal_even_from_a_dvc_temp_copy(tmp_path: Path):
    p = params()
    assert S.storage_location(p, ProjectPaths(tmp_path)) == str(tmp_path / "optuna" / "journal.log")
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert S.storage_location(p, ProjectPaths(copy)) == str(tmp_path.resolve() / "optuna" / "journal.log")
    p = params({"storage": "studies/j.log"})
    assert S.storage_location(p, ProjectPaths(tmp_path)) == str(tmp_path / "studies" / "j.log")
    p = params({"storage": "postgres://u:secret@db:5432/optuna"})
    location = S.storage_location(p, ProjectPaths(tmp_path))
    assert location == "postgresql://u:secret@db:5432/optuna"
    assert S.redact(location) == "postgresql://u:***@db:5432/optuna"
    assert S.redact("/x/journal.log") == "/x/journal.log"


# --- the worker loop, with a stand-in objective -------------------------------------------------------------------


class FakeObjective:
    """What TrialRunner needs of an Objective; `fn(trial, real_params)` gives the value or raises."""

    arch, metric = "mlp", "f1_macro"

    def __init__(self, space: SearchSpace, fn):
        self.space, self.fn, self.epochs = space, fn, 0

    def __call__(self, trial, on_epoch=None):
        real = self.space.suggest(trial)
        self.epochs = 2
        return self.fn(trial, real)


def journal_study(path: Path, kind: str = "random") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(
        storage=storage, study_name="s", direction="maximize", sampler=S.make_sampler(kind, 0), load_if_exists=True
    )


def lr_space() -> SearchSpace:
    return SearchSpace.for_arch(params({"spaces": {"mlp": {"train.lr": LR}}}), "mlp")


def test_run_trials_finishes_exactly_the_budget_of_complete_and_pruned_trials(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    calls = []

    def fn(trial, real):
        calls.append(trial.number)
        if trial.number % 3 == 1:
            raise optuna.TrialPruned
        if trial.number % 3 == 2:
            raise RuntimeError("boom")
        return real["train.lr"]

    runner = W.TrialRunner(study, FakeObjective(lr_space(), fn), 5, "w0")
    assert W.run_trials(runner) == "budget"
    counts = S.state_counts(study)
    assert counts["COMPLETE"] + counts["PRUNED"] == 5 and counts["FAIL"] == 2
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.system_attrs[S.ATTR_ERROR] == "RuntimeError: boom" for t in failed)
    assert all(t.user_attrs == {"worker": "w0", "epochs": 2} for t in study.trials)
    assert W.run_trials(runner) == "budget" and len(calls) == 7  # a finished study runs nothing more


def test_run_trials_gives_up_after_too_many_failures(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    runner = W.TrialRunner(study, FakeObjective(lr_space(), lambda t, r: float("nan")), 4, "w0")
    assert W.run_trials(runner) == "failures"
    assert S.state_counts(study)["FAIL"] == W.max_failures(4) == 4


def test_a_trial_that_loses_the_race_for_the_last_slot_is_closed_as_surplus(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    other = journal_study(tmp_path / "j.log")  # another worker holding the last slot
    running = other.ask()
    runner = W.TrialRunner(study, FakeObjective(lr_space(), lambda t, r: 1.0), 1, "w0")
    assert runner.run_next() is None
    surplus = study.trials[1]
    assert surplus.state == TrialState.FAIL and surplus.system_attrs[S.ATTR_SURPLUS] is True
    assert surplus.params == {}  # closed before sampling
    assert S.counted_failures(study.trials) == 0
    other.tell(running, 0.5)
    assert W.run_trials(runner) == "budget" and S.state_counts(study)["COMPLETE"] == 1


def test_a_worker_waiting_for_another_workers_last_trial_looks_again_soon_then_less_often(tmp_path: Path, monkeypatch):
    study = journal_study(tmp_path / "j.log")
    other = journal_study(tmp_path / "j.log")  # another worker runs the study's last trial
    running = other.ask()
    other._storage.set_trial_system_attr(running._trial_id, S.ATTR_OWNER, W.owner_record())  # alive: this process
    sleeps = []

    def sleep(seconds: float) -> None:  # the other worker's trial ends while this one waits for the 6th time
        sleeps.append(seconds)
        if len(sleeps) == 6:
            other.tell(running, 0.5)

    monkeypatch.setattr(W, "time", SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep))
    runner = W.TrialRunner(study, FakeObjective(lr_space(), lambda t, r: 1.0), 1, "w0")
    assert W.run_trials(runner) == "budget"
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, W.POLL_SECONDS] and W.POLL_SECONDS == 1.0
    assert S.state_counts(study)["COMPLETE"] == 1


def test_a_stale_running_trial_is_failed_so_it_cannot_block_the_budget(tmp_path: Path, monkeypatch):
    study = journal_study(tmp_path / "j.log")
    dead = journal_study(tmp_path / "j.log").ask()  # its process "died": no heartbeat since
    study._storage.set_trial_system_attr(dead._trial_id, S.ATTR_HEARTBEAT, time.time() - 60)
    monkeypatch.setattr(W, "STALE_SECONDS", 30.0)
    runner = W.TrialRunner(study, FakeObjective(lr_space(), lambda t, r: 1.0), 1, "w0")
    assert W.run_trials(runner, poll=0.01) == "budget"
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.system_attrs[S.ATTR_STALE] is True
    assert S.state_counts(study)["COMPLETE"] == 1


def test_a_running_trial_of_a_dead_local_process_is_failed_at_once_as_orphaned(tmp_path: Path, monkeypatch):
    study = journal_study(tmp_path / "j.log")
    storage = W.storage_of(study)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = study.ask()  # its process is killed (and reaped)
    storage.set_trial_system_attr(W.trial_id(dead), S.ATTR_OWNER, W.owner_record(child.pid))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    reused = study.ask()  # its pid now runs another process (this one)
    storage.set_trial_system_attr(W.trial_id(reused), S.ATTR_OWNER, {**W.owner_record(), "started": 1.0})
    alive = study.ask()  # this process: alive
    storage.set_trial_system_attr(W.trial_id(alive), S.ATTR_OWNER, W.owner_record())
    remote = study.ask()  # another host: only its heartbeat tells, and it is fresh
    storage.set_trial_system_attr(W.trial_id(remote), S.ATTR_OWNER, {**W.owner_record(), "host": "elsewhere"})
    storage.set_trial_system_attr(W.trial_id(remote), S.ATTR_HEARTBEAT, time.time())
    assert W.fail_orphaned_trials(study) == [0, 1]
    assert W.fail_stale_trials(study) == []
    monkeypatch.setattr(W, "STALE_SECONDS", 0.0)
    assert W.fail_stale_trials(study) == [3]  # the alive local trial is never judged by its heartbeat
    states = [(t.state, sorted(k for k in t.system_attrs if k in S.NOT_A_FAILURE)) for t in study.trials]
    assert states == [
        (TrialState.FAIL, [S.ATTR_ORPHANED]),
        (TrialState.FAIL, [S.ATTR_ORPHANED]),
        (TrialState.RUNNING, []),
        (TrialState.FAIL, [S.ATTR_STALE]),
    ]
    assert S.counted_failures(study.trials) == 0
    assert W.owner_record()["host"] == socket.gethostname()


def test_run_trials_records_the_owner_of_its_trials(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    runner = W.TrialRunner(study, FakeObjective(lr_space(), lambda t, r: 1.0), 1, "w0")
    assert W.run_trials(runner) == "budget"
    owner = Owner.from_record(study.trials[0].system_attrs[S.ATTR_OWNER])
    assert owner.pid == os.getpid() and owner.is_local and not owner.is_dead()


def test_heartbeat_stamps_the_running_trial(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    trial = study.ask()
    before = time.time()
    with W.Heartbeat(study, trial._trial_id, interval=0.05):
        time.sleep(0.2)
    beat = study.trials[0].system_attrs[S.ATTR_HEARTBEAT]
    assert beat >= before and W.last_alive(study.trials[0]) == beat


def test_rendezvous_waits_for_every_worker_of_a_launch(tmp_path: Path):
    study = journal_study(tmp_path / "j.log")
    assert W.rendezvous(study, "tok:2", 0, timeout=0.3) is False  # alone: gives up
    journal_study(tmp_path / "j.log").set_user_attr(f"{W.RENDEZVOUS_ATTR}:tok2:1", 0.0)
    assert W.rendezvous(study, "tok2:2", 0, timeout=5) is True
    with pytest.raises(ValueError):
        W.rendezvous(study, "nocount", 0)


def test_each_worker_sees_one_gpu_round_robin():
    from dlpipe.parallel import worker_env

    assert worker_env(3, ["0", "1"])["CUDA_VISIBLE_DEVICES"] == "1"
    assert worker_env(2, ["4", "5", "6"])["CUDA_VISIBLE_DEVICES"] == "6"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, [])


def test_trial_epochs_are_the_trials_own_max_epochs_capped_by_tune_max_epochs():
    from dlpipe.config import parse_params
    from dlpipe.tuning.objective import Objective
    from dlpipe.tuning.space import SearchSpace
    from dlpipe.tuning.study import epochs_per_fit

    tuned = {"train.max_epochs": {"type": "int", "low": 2, "high": 3}}
    params = parse_params(
        {
            "architectures": ["resnet"],
            "train": {"max_epochs": 15},
            "tune": {"max_epochs": 5, "spaces": {"resnet": tuned}},
        }
    )
    space = SearchSpace.for_arch(params, "resnet")
    assert epochs_per_fit(params, space) == 3  # the space's most, under the cap of 5
    objective = Objective(params, "resnet", space, data=None)
    assert objective.epochs_for(objective.spec({"train.max_epochs": 2})) == 2
    assert objective.epochs_for(objective.spec({"train.max_epochs": 9})) == 5  # capped
    untuned = parse_params({"train": {"max_epochs": 15}, "tune": {"max_epochs": 5}})
    assert epochs_per_fit(untuned, SearchSpace.for_arch(untuned, "mlp")) == 5
    uncapped = parse_params({"train": {"max_epochs": 7}, "tune": {"max_epochs": None}})
    assert epochs_per_fit(uncapped, SearchSpace.for_arch(uncapped, "mlp")) == 7
