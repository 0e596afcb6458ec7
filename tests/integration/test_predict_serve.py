"""Using the champion: a fresh process loads `models:/<name>@champion` and reproduces the test accuracy without
importing dlpipe; `mlflow models serve` answers /invocations; `dlpipe predict` reads npz, CSV and image folders,
writes class names and probabilities, and rejects inputs of the wrong shape with exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import VENV_BIN, subprocess_env
from helpers.project import copy_project, prepare_project
from helpers.servers import free_port, stop
from PIL import Image

from dlpipe import cli
from dlpipe.data.prepared import PreparedData
from dlpipe.io import write_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.stages import select, train

pytestmark = pytest.mark.slow

NAME = "dlpipe-digits"
CHAMPION = f"models:/{NAME}@champion"
STUDY = {"architectures": ["perceptron"], "train": {"max_epochs": 3, "lr": 0.01}}


@dataclass
class Served:
    root: Path
    uri: str
    X: np.ndarray  # raw test inputs, N x 1 x 8 x 8
    y: np.ndarray
    report: dict  # reports/test/perceptron.json

    @property
    def env(self) -> dict[str, str]:
        return {**subprocess_env(self.root), "MLFLOW_TRACKING_URI": self.uri}


def fake_cv_report(arch: str, folds: int) -> dict:
    """select needs a cv report; this module is about the trained model, so a hand-written one will do."""
    per_fold = {f"fold_{k}": {m: 0.8 for m in SCALAR_METRICS} for k in range(folds)}
    return {
        "architecture": arch,
        "params_hash": "hand",
        "mlflow_run_id": None,
        "folds": folds,
        "mean": {m: 0.8 for m in SCALAR_METRICS},
        "std": {m: 0.0 for m in SCALAR_METRICS},
        "per_fold": per_fold,
        "confusion_matrix": [],
        "class_names": [str(i) for i in range(10)],
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    """A perceptron trained on digits, selected and promoted to champion (once per module)."""
    root = copy_project(tmp_path_factory.mktemp("serve-study") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, STUDY)
        write_json(paths.cv_report("perceptron"), fake_cv_report("perceptron", params.data.folds))
        report = train.run(params, paths, "perceptron")
        assert select.run(params, paths)["registry"]["champion"] == 1
        data = PreparedData.load(paths.raw, paths.prepared)
        idx = torch.from_numpy(data.splits.test_idx)
        X, y = data.dataset.X[idx].numpy(), data.dataset.y[idx].numpy()
        yield Served(root, uri, X, y, report)


@pytest.fixture
def in_project(served: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    monkeypatch.chdir(served.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(served.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return served


LOAD_SCRIPT = """
import json, sys
import mlflow, numpy as np
data = np.load(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
out = model.predict(data["X"])
probs = out[[c for c in out.columns if c.startswith("prob_")]]
print(json.dumps({
    "columns": [str(c) for c in out.columns],
    "accuracy": float((out["prediction"].astype(int).to_numpy() == data["y"]).mean()),
    "argmax_agrees": bool((probs.to_numpy().argmax(axis=1) == out["prediction"].astype(int).to_numpy()).all()),
    "row_sums": probs.to_numpy().sum(axis=1).tolist(),
    "dlpipe_imported": any(m == "dlpipe" or m.startswith("dlpipe.") for m in sys.modules),
}))
"""


def test_a_fresh_process_loads_the_champion_and_reproduces_the_test_accuracy(served: Served, tmp_path: Path) -> None:
    np.savez(tmp_path / "test.npz", X=served.X, y=served.y)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "test.npz"), CHAMPION],
        env=served.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["columns"] == ["prediction"] + [f"prob_{i}" for i in range(10)]
    assert out["argmax_agrees"]  # the digits model decides by argmax
    assert out["accuracy"] == pytest.approx(served.report["accuracy"], abs=1e-6)
    assert out["accuracy"] > 0.5
    assert np.allclose(out["row_sums"], 1.0, atol=1e-5)
    assert out["dlpipe_imported"] is False  # the logged model is self-contained


def post(url: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@contextlib.contextmanager
def mlflow_serve(model_uri: str, env: dict[str, str], cwd: Path) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on a free loopback port; yields its base URL once /ping answers."""
    port = free_port()
    log_path = cwd / "serve.log"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer on /ping in 180 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base
    finally:
        stop(proc)  # the server and its uvicorn workers: the group this test started


def test_mlflow_models_serve_answers_invocations(served: Served, tmp_path: Path) -> None:
    with mlflow_serve(CHAMPION, served.env, tmp_path) as base:
        status, body = post(f"{base}/invocations", {"inputs": served.X.tolist()})
        assert status == 200, body
        answer = pd.DataFrame(body["predictions"])
        assert list(answer.columns) == ["prediction"] + [f"prob_{i}" for i in range(10)]
        assert len(answer) == len(served.y)
        accuracy = float((answer["prediction"].astype(int).to_numpy() == served.y).mean())
        assert accuracy == pytest.approx(served.report["accuracy"], abs=1e-6)
        status, body = post(f"{base}/invocations", {"inputs": [[0.0] * 60]})
        message = body.get("message", "")
        assert status == 400 and "(-1, 1, 8, 8)" in message
        assert len(message) < 400, message  # MLflow quotes the request twice: summarised, not 60 numbers each time
        # a NaN pixel is refused (not answered with class "0" and NaN probabilities), the reason first
        pixels = served.X[:2].copy()
        pixels[1, 0, 3, 4] = np.nan
        status, body = post(f"{base}/invocations", {"inputs": pixels.tolist()})
        assert status == 400, body
        assert body["message"].startswith("input holds 1 NaN or infinite value(s) (row(s) 1)"), body["message"]
        assert len(body["message"]) < 300


def predict_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", "--model", CHAMPION, *args])
    out, err = capsys.readouterr()
    return code, out, err


def check_frame(frame: pd.DataFrame, n: int) -> np.ndarray:
    prob_cols = [f"prob_{i}" for i in range(10)]
    assert [c for c in frame.columns if c != "file"] == ["prediction", *prob_cols]
    assert len(frame) == n
    assert np.allclose(frame[prob_cols].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    best = frame[prob_cols].to_numpy().argmax(axis=1)
    assert (frame["prediction"].astype(str).to_numpy() == np.array([str(i) for i in best])).all()
    return frame["prediction"].astype(int).to_numpy()


def test_dlpipe_predict_writes_class_names_and_probabilities(in_project: Served, tmp_path: Path, capsys) -> None:
    s = in_project
    np.savez(tmp_path / "x.npz", X=s.X)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "p.csv"))
    assert code == 0, err
    from_npz = check_frame(pd.read_csv(tmp_path / "p.csv"), len(s.y))
    assert (from_npz == s.y).mean() == pytest.approx(s.report["accuracy"], abs=1e-6)

    flat = s.X.reshape(len(s.X), -1)
    np.savetxt(tmp_path / "flat.csv", flat, delimiter=",")  # flattened pixels, no header
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "flat.csv"))
    assert code == 0, err
    assert (check_frame(pd.read_csv(io.StringIO(out)), len(s.y)) == from_npz).all()

    header = pd.DataFrame(flat, columns=[f"px{i}" for i in range(64)]).assign(target=s.y)
    header.to_csv(tmp_path / "named.csv", index=False)  # a header row and a label column to drop
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "named.csv"), "--drop", "target")
    assert code == 0, err
    assert (check_frame(pd.read_csv(io.StringIO(out)), len(s.y)) == from_npz).all()

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.round(s.X[i, 0] * 255).astype(np.uint8), mode="L").save(folder / f"digit{i}.png")
    code, out, err = predict_cli(capsys, "--input", str(folder))
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame["file"]) == [f"digit{i}.png" for i in range(5)]
    check_frame(frame, 5)


def test_dlpipe_predict_rejects_wrong_shapes_with_exit_code_2(in_project: Served, tmp_path: Path, capsys) -> None:
    s = in_project
    np.savetxt(tmp_path / "short.csv", s.X.reshape(len(s.X), -1)[:, :60], delimiter=",")
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "short.csv"))
    assert code == 2
    assert "(60, 60)" in err and "expected (N, 1, 8, 8) or 64 values per row" in err

    np.savez(tmp_path / "wrong.npz", X=np.zeros((3, 1, 9, 9), dtype=np.float32))
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "wrong.npz"))
    assert code == 2 and "(3, 1, 9, 9)" in err and "(N, 1, 8, 8)" in err

    folder = tmp_path / "big_images"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), mode="L").save(folder / "a.png")
    code, out, err = predict_cli(capsys, "--input", str(folder))  # resized to 8x8, as training images are
    assert code == 0 and list(pd.read_csv(io.StringIO(out))["file"]) == ["a.png"], err
    Image.new("CMYK", (8, 8)).save(folder / "b.jpg")
    code, _, err = predict_cli(capsys, "--input", str(folder))
    assert code == 2 and "b.jpg" in err and "CMYK image" in err

    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in err

    pixels = s.X[:3].copy()
    pixels[2, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", X=pixels)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "inf.npz"))
    assert code == 2 and out == "" and "input holds 1 NaN or infinite value(s) (row(s) 2)" in err


def test_dlpipe_predict_console_script(served: Served, tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", X=served.X[:7])
    env = subprocess_env(served.root)
    env.pop("MLFLOW_TRACKING_URI", None)  # resolved from the project in DLPIPE_ROOT
    proc = subprocess.run(
        [str(VENV_BIN / "dlpipe"), "predict", "--model", CHAMPION, "--input", "x.npz", "--output", "out.csv"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_frame(pd.read_csv(tmp_path / "out.csv"), 7)
    assert "7 predictions written to out.csv" in proc.stderr


def test_dlpipe_predict_unreadable_inputs_exit_2_with_one_line(in_project: Served, tmp_path: Path, capsys) -> None:
    s = in_project
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, X=s.X)
    os.truncate(truncated, truncated.stat().st_size // 2)
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    header_only = tmp_path / "header_only.csv"
    header_only.write_text(",".join(f"px{i}" for i in range(64)) + "\n")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").write_text("ignored")
    cases = {
        truncated: "damaged .npz archive",
        noise: "not a NumPy .npz archive",
        header_only: "no data rows, only a header row",
        folder: "not image file(s) notes.txt",
    }
    for path, expected in cases.items():
        code, out, err = predict_cli(capsys, "--input", str(path))
        assert code == 2 and out == "", (path, err)
        assert len(err.strip().splitlines()) == 1 and str(path) in err and expected in err, err
        assert "Traceback" not in err and "allow_pickle" not in err and "non-numeric" not in err


def test_unknown_alias_version_or_model_exit_2_naming_what_exists(in_project: Served, tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "x.npz", X=in_project.X[:3])
    cases = {
        f"models:/{NAME}@nope": f"registered model '{NAME}' has no alias 'nope'; aliases: challenger (version 1), "
        f"champion (version 1)",
        f"models:/{NAME}/999": f"registered model '{NAME}' has no version 999; versions: 1",
        "models:/nobody@champion": f"no registered model 'nobody' in the MLflow store; registered models: {NAME}",
    }
    for uri, expected in cases.items():
        code, out, err = cli.main(["predict", "--model", uri, "--input", str(tmp_path / "x.npz")]), *capsys.readouterr()
        assert code == 2 and out == "", (uri, err)
        assert expected in err and len(err.strip().splitlines()) == 1, err
