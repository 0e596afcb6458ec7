"""The MLflow UI as a researcher opens it: `mlflow ui` as `make ui` starts it, on loopback, over a study's store, read
by a real headless Chromium with a fresh profile (what the page shows, from the DOM after its scripts ran).

The study's store is made through dlpipe's own tracking code (the experiment `store.configure` creates, the marks
and pictures the select stage leaves, a registered champion), with the default study's plot files: no training.
Screenshots go to the folder the `screenshots` fixture names (tmp_path/screenshots, or $DLPIPE_SCREENSHOTS).
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import capabilities
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, load_script
from helpers.servers import free_port

from dlpipe import views
from dlpipe.tracking import store

pytestmark = pytest.mark.slow

EXPERIMENT = "dlpipe/digits"
MODEL = "dlpipe-digits"
ARCHS = ("cnn", "mlp")


render_plots = load_script("render_plots")


@dataclass
class Study:
    root: Path
    experiment_id: str
    select_run: str
    champion_runs: dict[str, str]
    version: str


def make_study(root: Path, template: Path) -> Study:
    """A study's MLflow store as the stages leave it: runs per architecture, the marked select run with its
    leaderboard note and plot pictures, and the champion registered with alias champion."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from dlpipe.tracking import marks, store

    install_mlflow_store(root, template)
    experiment_id = store.configure(None, root, EXPERIMENT)
    client = MlflowClient()
    runs: dict[str, dict[str, str | None]] = {}
    for i, arch in enumerate(ARCHS):
        runs[arch] = {"tune": None}
        for stage in ("cv", "train"):
            rid = client.create_run(experiment_id, run_name=f"{stage}-{arch}", tags={"stage": stage}).info.run_id
            client.log_metric(rid, "f1_macro", 0.99 - 0.02 * i)
            client.set_terminated(rid)
            runs[arch][stage] = rid
    select = client.create_run(experiment_id, run_name="select", tags={"stage": "select"}).info.run_id
    summary = {"winner": "cnn", "runs": runs, "sentence": "Champion: **cnn** on the cross-validated F1 (macro)."}
    marks.mark_study(client, select, summary, (REPO_ROOT / "reports" / "leaderboard.md").read_text())
    marks.log_plot_images(client, select, REPO_ROOT / "reports" / "plots", "cnn", [str(c) for c in range(10)])
    client.set_terminated(select)
    train = runs["cnn"]["train"]
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{train}/cnn", run_id=train).version
    client.set_registered_model_alias(MODEL, "champion", version)
    mlflow.set_tracking_uri(None)
    (root / "reports").mkdir(exist_ok=True)  # what `dlpipe runs` reads
    selection = {"winner": "cnn", "mlflow_run_id": select, "runs": runs, "registry": None}
    (root / "reports" / "selection.json").write_text(json.dumps(selection))
    return Study(root, experiment_id, select, {s: runs["cnn"][s] for s in ("cv", "train")}, str(version))


def make_ui_command(port: int) -> list[str]:
    """`make ui`'s mlflow command line (its environment assignments apart), on `port`."""
    text = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    target = text.split("\nui: ", 1)[1].split("\n\n", 1)[0]
    line = next(x for x in target.splitlines() if "mlflow ui" in x)
    words = shlex.split(line.replace("$(QUIET_MLFLOW)", "").replace("$(BIN)/", str(Path(sys.executable).parent) + "/"))
    words = [w for w in words if "=" not in w or w.startswith("-")]
    return [w.replace("5000", str(port)) for w in words]


@pytest.fixture(scope="module")
def browser() -> str:
    capabilities.need("chromium")
    return render_plots.find_chromium()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Iterator[tuple[Study, str]]:
    root = tmp_path_factory.mktemp("ui") / "project"
    with pytest.MonkeyPatch.context() as mp:
        # an earlier in-process test in this worker may have left MLflow's exported store URIs: this study's own
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", store.CONFIGURED_ENV):
            mp.delenv(name, raising=False)
        study = make_study(root, mlflow_template_db)
    port = free_port()
    log_path = root / "ui.log"
    env = {**subprocess_env(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            make_ui_command(port), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"mlflow ui exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow ui not up in 180 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield study, base
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in the terminal that ran `make ui`
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("DLPIPE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page(browser: str, url: str, shot: Path | None = None, budget_ms: int = 15000) -> str:
    """The page's text (tags stripped) after its scripts ran, in a fresh profile; a screenshot to `shot`."""
    args = [f"--virtual-time-budget={budget_ms}", "--window-size=1400,1000"]
    if shot is not None:
        render_plots.run_chromium(url, *args, f"--screenshot={shot}", browser=browser, offline=False, timeout=180)
    dom = render_plots.run_chromium(url, *args, "--dump-dom", browser=browser, offline=False, timeout=180)
    return dom


def text_of(dom: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_the_printed_link_opens_the_study_in_model_training_mode(served, browser: str, screenshots: Path) -> None:
    study, base = served
    link = views.experiment_link(base, study.experiment_id)
    dom = page(browser, link, screenshots / "experiment.png")
    text = text_of(dom)
    assert "select (champion: cnn)" in text and "train-cnn (champion)" in text, text[:3000]
    assert "Detect Issues" not in text
    plain = text_of(page(browser, f"{base}/#/experiments/{study.experiment_id}", screenshots / "experiment-plain.png"))
    assert "select (champion: cnn)" not in plain  # without the mode in the URL MLflow 3.17 opens GenAI pages


def hrefs(dom: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a\b[^>]*\bhref="([^"]+)"', dom)]


def click(base: str, dom: str, pattern: str) -> str:
    """The URL a click on the first link whose href matches `pattern` opens (hash routes under `base`)."""
    found = next((h for h in hrefs(dom) if re.search(pattern, h)), None)
    assert found is not None, f"no link matching {pattern!r} among {hrefs(dom)[:40]}"
    return f"{base}/{found}" if found.startswith("#") else found


def test_make_uis_printed_link_opens_the_study_in_model_training_mode(served, browser: str) -> None:
    """`make ui` prints `dlpipe runs --link`: the study's own page (MLflow's experiment list links drop the mode)."""
    study, base = served
    target = (REPO_ROOT / "Makefile").read_text().split("\nui: ", 1)[1].split("\n\n", 1)[0]
    assert "dlpipe runs --link" in target
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dlpipe"), "runs", "--link", "--ui-url", base],
        cwd=study.root,
        env={**subprocess_env(study.root), "DLPIPE_ROOT": str(study.root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    link = proc.stdout.strip()
    assert link == f"{base}/#/experiments/{study.experiment_id}?workflowType=machine_learning"
    text = text_of(page(browser, link))
    assert "select (champion: cnn)" in text and "train-cnn (champion)" in text, text[:3000]
    listing = page(browser, link.replace(f"/experiments/{study.experiment_id}?", "/experiments?"))
    through_list = click(base, listing, rf"^#/experiments/{study.experiment_id}\b")
    assert "workflowType" not in through_list  # why the hint is the study's page, not the list


def test_the_select_run_shows_the_leaderboard_and_its_plots_as_pictures(served, browser, screenshots) -> None:
    study, base = served
    run = text_of(
        page(browser, views.run_link(base, study.experiment_id, study.select_run), screenshots / "select.png")
    )
    assert "select (champion: cnn)" in run and "Champion: cnn" in run and "Leaderboard" in run, run[:3000]
    for name in ("comparison", "confusion"):
        route = f"experiments/{study.experiment_id}/runs/{study.select_run}/artifacts/plots/{name}.png"
        dom = page(browser, views.ui_link(base, route), screenshots / f"select-{name}.png")
        assert re.search(rf'<img alt="plots/{name}.png" src="blob:', dom), text_of(dom)[:2000]


def test_the_champion_version_is_two_clicks_from_the_study(served, browser: str, screenshots: Path) -> None:
    study, base = served
    start = page(browser, views.experiment_link(base, study.experiment_id))
    registry = click(base, start, r"^#/models$")  # click 1: the sidebar's Model registry
    models = page(browser, registry, screenshots / "registry.png")
    assert MODEL in text_of(models) and "champion" in text_of(models)
    version = click(base, models, rf"^#/models/{MODEL}/versions/{study.version}$")  # click 2: @champion's version
    text = text_of(page(browser, version, screenshots / "champion-version.png"))
    assert f"Version {study.version}" in text and "champion" in text, text[:3000]
