"""The promotion gate compares two registered versions only on rows neither trained on: versions held out on
different test sets (another seed or data) are not compared, and the decision is left to the user in one plain line
and the audit; versions held out on the same test set are compared on it. The stand-in versions are never loaded:
no prepared data, so the gate compares the test scores they recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dlpipe import cli
from dlpipe.config import load_params
from dlpipe.paths import ProjectPaths
from dlpipe.stages import promote
from dlpipe.tracking import registry

NAME = "dlpipe-digits"
DVC = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())


@pytest.fixture
def client(project: Path, mlflow_store: str) -> MlflowClient:
    """NAME with champion version 1 (test set A, f1 0.80)."""
    c = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    c.create_registered_model(NAME)
    add_version(c, project, "A", 0.80)
    assert cli.main(["promote", "--version", "1", "--force"]) == 0
    return c


def add_version(c: MlflowClient, project: Path, test_set: str, f1: float) -> int:
    tags = {"test_set_hash": test_set, "test_f1_macro": str(f1)}
    return int(c.create_model_version(NAME, source=(project / "stand-in").as_uri(), tags=tags).version)


def gate(project: Path, version: int) -> registry.Decision:
    return promote.promote_version(load_params(project / "params.yaml"), ProjectPaths(project), version=version)


def test_versions_held_out_on_different_test_sets_are_not_compared(client, project, capsys) -> None:
    better_elsewhere = add_version(client, project, "B", 0.99)  # a higher score, on rows the champion trained on
    decision = gate(project, better_elsewhere)
    assert decision.action == "not_compared" and not decision.promoted
    assert decision.score is None and decision.previous_score is None  # no numbers that would read as a verdict
    assert client.get_registered_model(NAME).aliases["champion"] == 1
    assert decision.message.startswith(f"not compared: {NAME} version 2 and champion version 1 were tested on")
    assert "different held-out test sets" in decision.message
    assert decision.message.endswith("To promote version 2 all the same: dlpipe promote --version 2 --force")
    assert client.get_model_version(NAME, "2").tags["promotion_undecided"] == decision.message
    audit = json.loads(client.get_registered_model(NAME).tags[registry.AUDIT_TAG])
    assert audit[-1]["action"] == "not_compared" and audit[-1]["version"] == 2 and audit[-1]["champion"] == 1
    # the CLI says the same in one line, exits 0, and --force promotes
    assert cli.main(["promote", "--version", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("not compared:") and len(out.strip().splitlines()) == 1
    assert cli.main(["promote", "--version", "2", "--force"]) == 0
    assert client.get_registered_model(NAME).aliases["champion"] == 2


def test_a_version_without_a_recorded_test_set_is_not_compared(client, project) -> None:
    version = int(client.create_model_version(NAME, source=(project / "stand-in").as_uri()).version)
    decision = gate(project, version)
    assert decision.action == "not_compared" and "records no held-out test set" in decision.message


def test_versions_held_out_on_the_same_test_set_are_compared(client, project) -> None:
    worse, better = add_version(client, project, "A", 0.70), add_version(client, project, "A", 0.90)
    assert gate(project, worse).action == "refused"
    decision = gate(project, better)
    assert decision.action == "promoted" and (decision.score, decision.previous_score) == (0.90, 0.80)


def test_select_keeps_its_outputs_when_it_fails() -> None:
    """DVC deletes a stage's outputs before it runs unless they persist: a select that fails keeps the last verdict."""
    select = DVC["stages"]["select"]
    outs = [next(iter(o.items())) for o in select["outs"] + select["metrics"]]
    assert all(spec.get("persist") is True for _, spec in outs), outs
