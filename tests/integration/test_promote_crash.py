"""Crash-safe promotion: a real `dlpipe promote` process SIGKILLs itself at each step of a champion move
($DLPIPE_TEST_KILL_AT), and the next promote, rollback or registration completes (or discards) the record, so the
champion's version tags, `champion_history` and `champion_audit` agree with the alias and --rollback works.
The registry holds three versions of a stand-in model source: moves with --force and rollbacks never load them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.processes import VENV_BIN, subprocess_env
from mlflow.tracking import MlflowClient

from dlpipe import cli
from dlpipe.tracking import registry

pytestmark = pytest.mark.slow

NAME = "dlpipe-digits"  # the repository params' data.name is digits


@pytest.fixture
def client(project: Path, mlflow_store: str) -> MlflowClient:
    """The project's store with registered model NAME, versions 1-3, and version 1 as champion."""
    c = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    c.create_registered_model(NAME)
    for _ in range(3):
        c.create_model_version(NAME, source=(project / "stand-in-model").as_uri())
    assert cli.main(["promote", "--version", "1", "--force"]) == 0
    return c


def champion(c: MlflowClient) -> int:
    return int(c.get_registered_model(NAME).aliases["champion"])


def model_tags(c: MlflowClient) -> dict[str, str]:
    return c.get_registered_model(NAME).tags


def actions(c: MlflowClient) -> list[str]:
    return [r["action"] for r in json.loads(model_tags(c)[registry.AUDIT_TAG])]


def history(c: MlflowClient) -> list[int]:
    return json.loads(model_tags(c)[registry.HISTORY_TAG])


def killed_promote(project: Path, step: str, *args: str) -> None:
    """`dlpipe promote ARGS` in a real process that SIGKILLs itself at `step`."""
    env = {**subprocess_env(project), registry.KILL_ENV: step}
    proc = subprocess.run(
        [str(VENV_BIN / "dlpipe"), "promote", *args], env=env, cwd=project, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def promote_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["promote", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_promoted_2_over_1(c: MlflowClient) -> None:
    assert champion(c) == 2
    tags = c.get_model_version(NAME, "2").tags
    assert tags["promoted_at"] and tags["promoted_by"] == "dlpipe promote"
    assert tags["previous_champion"] == "1" and tags["promotion_forced"] == "true"
    assert c.get_model_version(NAME, "1").tags["replaced_by"] == "2"
    assert history(c) == [1, 2]
    assert registry.PENDING_TAG not in model_tags(c)
    last = json.loads(model_tags(c)[registry.AUDIT_TAG])[-1]
    assert last["action"] == "promoted" and last["version"] == 2 and last["previous"] == 1 and last["forced"]


@pytest.mark.parametrize("step", registry.KILL_STEPS)
def test_a_promotion_killed_at_any_step_is_completed_by_the_next_promote(client, project, capsys, step) -> None:
    killed_promote(project, f"promote:{step}", "--version", "2", "--force")
    moved = step != "intent_recorded"
    assert champion(client) == (2 if moved else 1)
    assert registry.PENDING_TAG in model_tags(client)  # the intent survived the kill
    if step in ("intent_recorded", "alias_moved"):
        assert "promoted_at" not in client.get_model_version(NAME, "2").tags  # today's half-done state
        assert history(client) == [1]

    code, out, _ = promote_cli(capsys, "--version", "2", "--force")
    assert code == 0
    if moved:
        assert "already champion" in out and "completed the record of the interrupted promotion of version 2" in out
        assert actions(client) == ["promoted", "promoted"]  # the interrupted move recorded once, not twice
    else:
        assert out.startswith("promoted (forced)") and "discarded the interrupted promotion of version 2" in out
        assert actions(client) == ["promoted", "abandoned", "promoted"]
    assert_promoted_2_over_1(client)

    code, out, _ = promote_cli(capsys, "--rollback")
    assert code == 0 and champion(client) == 1 and history(client) == [1]
    assert client.get_model_version(NAME, "2").tags["rolled_back_to"] == "1"
    assert actions(client)[-1] == "rolled_back"


def test_a_killed_rollback_is_completed_once_not_repeated(client, project, capsys) -> None:
    for version in ("2", "3"):
        assert promote_cli(capsys, "--version", version, "--force")[0] == 0
    assert history(client) == [1, 2, 3]
    killed_promote(project, "rollback:alias_moved", "--rollback")
    assert champion(client) == 2 and history(client) == [1, 2, 3]  # moved, not recorded

    code, out, _ = promote_cli(capsys, "--rollback")  # the user retries the rollback
    assert code == 0 and "completed the record of the interrupted rollback of version 2" in out
    assert champion(client) == 2 and history(client) == [1, 2]  # one rollback, not two
    assert client.get_model_version(NAME, "3").tags["rolled_back_to"] == "2"
    assert client.get_model_version(NAME, "2").tags["restored_from"] == "3"
    assert actions(client) == ["promoted", "promoted", "promoted", "rolled_back"]
    assert registry.PENDING_TAG not in model_tags(client)

    code, out, _ = promote_cli(capsys, "--rollback")
    assert code == 0 and champion(client) == 1 and history(client) == [1]


def test_registering_a_challenger_completes_an_interrupted_promotion(client, project) -> None:
    """What the select stage does first (also without auto_promote)."""
    killed_promote(project, "promote:alias_moved", "--version", "2", "--force")
    registry.register_challenger(NAME, (project / "another-model").as_uri(), None, {"architecture": "mlp"})
    assert_promoted_2_over_1(client)
    assert int(client.get_registered_model(NAME).aliases["challenger"]) == 4


def test_a_champion_moved_outside_dlpipe_is_adopted_into_the_record(client, capsys) -> None:
    client.set_registered_model_alias(NAME, "champion", "3")
    code, out, _ = promote_cli(capsys, "--rollback")
    assert code == 0 and "recorded version 3 as champion (moved without a dlpipe record)" in out
    assert champion(client) == 1 and history(client) == [1]
    assert actions(client) == ["promoted", "adopted", "rolled_back"]
