"""A researcher's image folder through the pipeline: 60 PNG/JPEG images of mixed sizes in 3 class folders (the
class is the colour) checked, fetched (uint8 cache -> [0, 1] float, as mnist and cifar10), prepared, a tiny cnn
trained and logged; `dlpipe predict` on a folder of new images of other sizes gives their classes, and a CMYK image
there is refused in one line with exit 2."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers.images import COLOURS, make_folder
from helpers.project import write_params
from PIL import Image
from test_predict_serve import fake_cv_report

from dlpipe import cli
from dlpipe.config import load_params
from dlpipe.data.store import load_saved_dataset
from dlpipe.io import read_json, write_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import check, fetch, prepare, train

pytestmark = pytest.mark.slow

STUDY = {
    "data": {"name": "images", "images": {"path": "imgs", "size": 12, "channels": "rgb"}, "folds": 3},
    "architectures": ["cnn"],
    "models": {"cnn": {"channels": [8], "hidden": [16]}},
    "train": {"max_epochs": 6, "lr": 0.01, "early_stopping": {"enabled": False}},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "baselines": {"models": []},
}


def test_an_image_folder_trains_a_cnn_and_predicts_new_images_of_any_size(
    project: Path, mlflow_store: str, tmp_path: Path, capsys
) -> None:
    make_folder(project / "imgs", per_class=20)
    write_params(project, STUDY)
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    inputs = check.run(paths.params, paths)
    assert inputs["images"]["path"] == "imgs"
    fetch.run(params, paths)
    prepare.run(params, paths)
    ds = load_saved_dataset(paths.raw)
    assert ds.class_names == sorted(COLOURS) and ds.input_shape == (3, 12, 12) and len(ds) == 60
    cache = next((paths.downloads / "image-cache").glob("images-*.npz"))
    with np.load(cache) as npz:  # fetch read check's uint8 cache; the fetched data keeps its 8-bit pixels
        assert npz["X"].dtype == np.uint8 and np.array_equal(ds.X.numpy(), npz["X"])
        assert np.allclose(ds.inputs().numpy(), npz["X"] / 255.0)  # what a model sees
    write_json(paths.cv_report("cnn"), fake_cv_report("cnn", params.data.folds))
    report = train.run(params, paths, "cnn")
    assert report["accuracy"] >= 0.9, report["accuracy"]
    assert read_json(paths.model_dir("cnn") / "params.json")["input_shape"] == [3, 12, 12]
    schema = mlflow.pyfunc.load_model(report["model_uri"]).metadata.get_input_schema()
    assert schema.is_tensor_spec()  # served like every image model: a float32 N x C x H x W tensor in [0, 1]
    assert schema.inputs[0].shape == (-1, 3, 12, 12) and schema.inputs[0].type == np.dtype("float32")

    new = tmp_path / "new"
    new.mkdir()
    expected = {}
    for i, (name, rgb) in enumerate(sorted(COLOURS.items())):
        size = [(50, 30), (13, 41), (12, 12)][i]  # none, or one, of them the model's size
        Image.new("RGB", size, rgb).save(new / f"{name}.{'png' if i % 2 else 'jpg'}")
        expected[f"{name}.{'png' if i % 2 else 'jpg'}"] = name
    out = tmp_path / "predictions.csv"
    code = cli.main(["predict", "--model", report["model_uri"], "--input", str(new), "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    frame = pd.read_csv(out)
    assert dict(zip(frame["file"], frame["prediction"], strict=True)) == expected

    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(new / "print.jpg")
    capsys.readouterr()
    code = cli.main(["predict", "--model", report["model_uri"], "--input", str(new)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "print.jpg" in err[0] and "CMYK image" in err[0], err
