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
