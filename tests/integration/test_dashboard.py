"""`dlpipe dashboard` (what `make dashboard` runs): optuna-dashboard on the project's study storage, bound to
127.0.0.1, serving a journal that dlpipe's own tuning storage wrote; one-line errors for what cannot be served."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.processes import VENV_BIN, subprocess_env
from helpers.project import write_params
from helpers.servers import free_port

from dlpipe import cli

pytestmark = pytest.mark.slow
STUDY = "dlpipe-test-perceptron"


def make_journal(project: Path) -> None:
    """A finished 3-trial study in the project's storage, through dlpipe.tuning (as the tune stage opens it)."""
    import optuna

    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths
    from dlpipe.tuning.study import open_storage, storage_location

    location = storage_location(load_params(project / "params.yaml"), ProjectPaths(project))
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=STUDY, storage=open_storage(location), direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=3)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_dashboard_serves_the_projects_journal_on_loopback(project: Path) -> None:
    make_journal(project)
    port = free_port()
    env = {**subprocess_env(project), "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
    # started as from a terminal, with SIGINT at its default: a test run in the background of a non-interactive
    # shell (`make test &`) inherits SIGINT ignored, and an ignored disposition survives exec
    dashboard = [str(VENV_BIN / "dlpipe"), "dashboard", "--port", str(port)]
    as_from_a_terminal = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, *dashboard],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = None
        deadline = time.monotonic() + 120  # it imports torch (params validation) before it listens
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None else "no answer in 120 s"
        assert [s["study_name"] for s in studies["study_summaries"]] == [STUDY]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies['study_summaries'][0]['study_id']}")
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            masks = "; ".join(line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
            proc.send_signal(signal.SIGABRT)  # never leave a server behind; the test fails below, with its stacks
            _, err = proc.communicate()
            err = f"{masks}\n{err}"
    assert proc.returncode == 0, err[:8000]  # Ctrl-C stops the server cleanly (else: signal masks, thread stacks)
    assert err.splitlines()[0] == (
        f"dlpipe dashboard: {project.resolve()}/optuna/journal.log on http://127.0.0.1:{port}/ (Ctrl-C stops it)"
    )


def test_no_study_yet_is_one_line_naming_the_storage(project: Path, capsys) -> None:
    write_params(project, {"tune": {"storage": "studies/shared.log"}})
    assert cli.main(["dashboard"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [
        f"dlpipe dashboard: error: {project.resolve()}/studies/shared.log: no Optuna studies yet; run the study stage "
        "first (dvc repro study)"
    ]


def test_a_port_in_use_is_one_line(project: Path, capsys) -> None:
    make_journal(project)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["dashboard", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"dlpipe dashboard: error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use); "
        "choose another --port"
    )
