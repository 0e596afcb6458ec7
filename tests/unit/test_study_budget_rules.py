"""study.budget: its params (one-line errors naming the key), the pruner and study name it changes (nothing when
there is no budget, the default), and the drop rule over the folds scored so far."""

from __future__ import annotations

import pytest

from dlpipe.config import Params, parse_params
from dlpipe.errors import ConfigError
from dlpipe.evaluation.cv import drops
from dlpipe.tuning.space import SearchSpace
from dlpipe.tuning.study import pruner_of, study_key


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({"epochs": 0}, "study.budget.epochs: Input should be greater than or equal to 1 (got 0)"),
        ({"epochs": 9, "drop_after_folds": 5}, "study.budget.drop_after_folds: 5 folds before a drop but data.folds"),
        ({"drop_margin": 0}, "study.budget.drop_margin: Input should be greater than 0"),
        ({"minutes": 3}, "study.budget.minutes: unknown key; allowed: epochs, drop_after_folds, drop_margin"),
    ],
)
def test_bad_budget_params_name_the_key(budget: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params({"study": {"budget": budget}})
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_no_budget_is_the_default_and_changes_nothing() -> None:
    plain = Params()
    assert plain.study.budget.epochs is None and not plain.study.budget.enabled
    assert pruner_of(plain) == plain.tune.pruner == "median"
    budgeted = parse_params({"study": {"budget": {"epochs": 20}}})
    assert pruner_of(budgeted) == "successive_halving"
    hyperband = parse_params({"study": {"budget": {"epochs": 20}}, "tune": {"pruner": "hyperband"}})
    assert pruner_of(hyperband) == "hyperband"
    space = SearchSpace.for_arch(plain, "mlp")
    assert study_key(plain, "mlp", space, "h")["pruner"] == "median"  # the unbudgeted study keeps its name


def test_an_architecture_far_below_the_leader_on_its_first_folds_is_dropped() -> None:
    scores = {"cnn": {0: 0.95, 1: 0.97}, "mlp": {0: 0.9, 1: 0.9}, "perceptron": {0: 0.5, 1: 0.6, 2: 0.9}}
    out = drops(scores, {"mlp", "perceptron"}, after=2, margin=0.1)
    assert list(out) == ["perceptron"]  # mlp is 0.06 below: within the margin
    assert out["perceptron"]["leader"] == "cnn" and out["perceptron"]["mean"] == pytest.approx(0.55)
    assert drops(scores, {"perceptron"}, after=3, margin=0.1) == {}  # no other architecture has 3 folds yet
    assert drops(scores, {"mlp"}, after=2, margin=0.01)["mlp"]["leader"] == "cnn"
    assert drops(scores, {"cnn"}, after=2, margin=0.01) == {}  # the leader is never dropped


def test_under_a_budget_a_final_fit_starts_once_no_drop_can_reach_its_architecture() -> None:
    """In parallel, the final fit of an argmax study runs beside the folds; under a budget only once every
    architecture still in the study has its first drop_after_folds folds scored (the leader is known)."""
    from types import SimpleNamespace

    from dlpipe.stages.scheduler import Study, _Arch

    study = Study.__new__(Study)
    study.archs = {a: _Arch(a) for a in ("cnn", "mlp", "perceptron")}
    study.started = []
    study.start_train = study.started.append  # records instead of queueing the unit
    study.archs["perceptron"].dropped = {"reason": "far below"}
    study.archs["cnn"].cv_plan = SimpleNamespace(done={0: "reused"})
    study.start_undroppable(after=1)
    assert study.started == []  # mlp is still tuning: it may yet lead, or be dropped
    study.archs["mlp"].cv_plan = SimpleNamespace(done={})
    study.archs["mlp"].folds = {1: "scored"}
    study.start_undroppable(after=1)
    assert study.started == []  # fold 1 is not among the first folds the rule compares
    study.archs["mlp"].folds[0] = "scored"
    study.start_undroppable(after=1)
    assert study.started == ["cnn", "mlp"]  # never the dropped perceptron


def _study_with_a_finished_trial(epochs: int):
    """An in-memory study whose one finished trial trained `epochs` epochs."""
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    done = study.ask()
    done.set_user_attr("epochs", epochs)
    study.tell(done, 0.9)
    return study


def test_the_epoch_budget_counts_finished_reported_and_running_epochs() -> None:
    from dlpipe.tuning.study import epochs_committed, epochs_spent

    study = _study_with_a_finished_trial(epochs=3)
    running = study.ask()
    for step in range(2):
        running.report(0.5, step)
    starting = study.ask()  # no epoch reported yet, its first under way
    trials = study.get_trials(deepcopy=False)
    assert epochs_spent(trials) == 3
    assert epochs_committed(trials) == 3 + (2 + 1) + (0 + 1)
    assert epochs_committed(trials, own=running.number) == 3 + 2 + 1  # at its epoch's end: that epoch is reported
    assert epochs_committed(trials, own=starting.number) == 3 + 3 + 0


def test_a_trial_stops_at_the_end_of_the_epoch_that_spends_the_budget() -> None:
    from types import SimpleNamespace

    import torch

    from dlpipe.tuning.objective import EpochReporter

    study = _study_with_a_finished_trial(epochs=3)
    trial = study.ask()
    reporter = EpochReporter(trial, "val_f1_macro", budget_epochs=5)
    trainer = SimpleNamespace(current_epoch=0, should_stop=False, callback_metrics={"val_f1_macro": torch.tensor(0.7)})
    reporter.on_train_epoch_end(trainer, None)
    assert not trainer.should_stop  # 4 of 5 epochs
    trainer.current_epoch = 1
    reporter.on_train_epoch_end(trainer, None)
    assert trainer.should_stop and reporter.epochs == 2
    unbudgeted = EpochReporter(study.ask(), "val_f1_macro")
    trainer.should_stop = False
    unbudgeted.on_train_epoch_end(trainer, None)
    assert not trainer.should_stop


def test_no_trial_starts_while_the_running_ones_take_the_rest_of_the_epoch_budget(tmp_path, monkeypatch) -> None:
    """A worker whose budget of epochs is taken by another worker's running trial waits for it instead of starting a
    trial that would train past the budget; then it stops."""
    from types import SimpleNamespace

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from dlpipe.tuning import workers as W

    def journal() -> optuna.Study:
        storage = JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
        return optuna.create_study(storage=storage, study_name="s", direction="maximize", load_if_exists=True)

    study, other = journal(), journal()
    first = other.ask()
    first.set_user_attr("epochs", 3)
    other.tell(first, 0.8)
    running = other.ask()  # another worker's trial: 1 epoch reported, its 2nd under way
    other._storage.set_trial_system_attr(running._trial_id, W.ATTR_OWNER, W.owner_record())
    running.report(0.7, 0)

    class Runner:
        budget = 10

        def __init__(self) -> None:
            self.study = study

        def run_next(self):
            raise AssertionError("a trial started with 4 of 5 epochs spent or under way")

    def sleep(seconds: float) -> None:  # the other trial ends after its 2nd epoch, the 5th of the budget
        running.report(0.75, 1)
        running.set_user_attr("epochs", 2)
        other.tell(running, 0.75)

    monkeypatch.setattr(W, "time", SimpleNamespace(time=W.time.time, monotonic=W.time.monotonic, sleep=sleep))
    assert W.run_trials(Runner(), epochs=5) == "epochs"


def test_under_a_budget_the_folds_that_decide_drops_start_before_the_later_folds(monkeypatch) -> None:
    """Every architecture's first drop_after_folds folds, and the tuning that leads to them, start before any later
    fold: a drop is decided before the work it saves. Without a budget the folds keep their order."""
    from types import SimpleNamespace

    from dlpipe.stages import scheduler
    from dlpipe.stages.scheduler import Study, _Arch

    def queued(params: Params) -> list[str]:
        study = Study.__new__(Study)
        study.ctx = SimpleNamespace(params=params, paths=None)
        study.archs = {a: _Arch(a) for a in ("cnn", "mlp")}
        study.ready, study.after, study._seq, study.serial = [], {}, 0, False
        study.cost, study.train_beside_cv = {"cnn": 2.0, "mlp": 1.0}, False
        jobs = [SimpleNamespace(k=k) for k in range(3)]
        plan = SimpleNamespace(opened=False, done={}, jobs=lambda *_: jobs)
        monkeypatch.setattr(scheduler.cv, "plan", lambda ctx, arch: plan)
        study.start_cv("cnn")
        study.submit("mlp", "tune", scheduler.Task("tune mlp summary", print, ()), print)
        study.start_cv("mlp")
        return [item[3].key for item in study.ready]

    budget = parse_params({"data": {"folds": 3}, "study": {"budget": {"epochs": 9, "drop_after_folds": 1}}})
    assert queued(budget) == [
        "cv cnn fold0",
        "cv mlp fold0",
        "tune mlp summary",
        "cv cnn fold1",
        "cv cnn fold2",
        "cv mlp fold1",
        "cv mlp fold2",
    ]
    plain = queued(parse_params({"data": {"folds": 3}}))
    assert plain[:3] == ["cv cnn fold0", "cv cnn fold1", "cv cnn fold2"] and plain[-1] == "tune mlp summary"
