"""An image folder under `dvc repro` (a fresh git + DVC project, up to prepare): an added image reruns fetch and
prepare (the check stage's folder hash in data/inputs.json), an unchanged folder reruns nothing, and a corrupt image
stops the repro at the check stage, named in one line, with data/raw as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers.images import COLOURS, make_folder
from helpers.processes import subprocess_env
from helpers.project import copy_dvc_study, git_dvc_init
from PIL import Image

pytestmark = pytest.mark.slow

OVERRIDE = {
    "data": {"name": "images", "images": {"path": "photos", "size": 10, "channels": "gray"}, "folds": 2},
    "architectures": ["cnn"],
    "baselines": {"models": []},
}


def run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(cwd), capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def samples(root: Path) -> int:
    return json.loads((root / "data" / "raw" / "dataset.json").read_text())["n_samples"]


def test_an_added_image_reruns_fetch_and_a_corrupt_one_stops_at_check(tmp_path: Path) -> None:
    root = copy_dvc_study(tmp_path / "study", OVERRIDE)
    make_folder(root / "photos", per_class=8)
    for cmd in git_dvc_init("study"):
        run(cmd, root)
    run(["dvc", "repro", "prepare"], root)
    meta = json.loads((root / "data" / "raw" / "dataset.json").read_text())
    assert meta["input_shape"] == [1, 10, 10] and meta["class_names"] == sorted(COLOURS) and meta["n_samples"] == 24

    unchanged = run(["dvc", "repro", "prepare"], root).stdout
    assert "Running stage 'fetch'" not in unchanged, unchanged

    Image.new("RGB", (33, 21), COLOURS["green"]).save(root / "photos" / "green" / "added.png")
    added = run(["dvc", "repro", "prepare"], root).stdout
    assert "Running stage 'fetch'" in added and "Running stage 'prepare'" in added, added
    assert samples(root) == 25

    (root / "photos" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    failed = run(["dvc", "repro", "prepare"], root, ok=False)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("dlpipe check: error")]
    assert len(errors) == 1 and "red/broken.jpg (" in errors[0], failed.stderr
    assert samples(root) == 25  # fetch never ran: data/raw is what it was
