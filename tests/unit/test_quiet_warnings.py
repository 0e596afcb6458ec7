"""Normal use prints no Python warning that is not the user's to act on: exporting a recurrent model (torch's
`rnn._flat_weights` notice) and importing MLflow's server (Starlette's deprecation of its WSGI middleware)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dlpipe.data.splits import Normalizer
from dlpipe.models import build_model
from dlpipe.tracking.model_logging import export_program


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_exporting_a_recurrent_model_warns_of_nothing(tmp_path: Path, arch: str) -> None:
    net = build_model(arch, {}, (1, 8, 8), 3).eval()
    X = torch.rand(6, 1, 8, 8)
    gc.collect()  # an earlier test's unclosed file is reported when collected: not this export's warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_program(net, Normalizer.fit(X), X[:4], tmp_path / "model.pt2", check=X)
    assert [str(w.message)[:120] for w in caught] == []


def test_make_ui_and_serve_start_mlflows_server_without_starlettes_warning() -> None:
    """The filter the Makefile gives `mlflow ui` and `mlflow models serve` silences exactly that warning (and MLflow
    still raises it without the filter, so the filter is still needed)."""
    from helpers.project import REPO_ROOT

    line = next(x for x in (REPO_ROOT / "Makefile").read_text().splitlines() if x.startswith("QUIET_MLFLOW :="))
    filters = line.split("PYTHONWARNINGS=", 1)[1].strip()
    code = "import mlflow.server.fastapi_app"
    for env, expected in (({"PYTHONWARNINGS": "default"}, 1), ({"PYTHONWARNINGS": filters}, 0)):
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stderr.count("StarletteDeprecationWarning") == expected, proc.stderr[-2000:]
