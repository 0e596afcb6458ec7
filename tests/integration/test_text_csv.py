"""Text end to end: a CSV whose label depends on one word of a free-text column, fetched and prepared by the
stages, a gru trained by the train stage (tokenizer fitted on its training rows), selected and promoted. The
champion learned the word (test accuracy far above chance); `dlpipe predict` on a CSV of raw text and the loaded
pyfunc on a DataFrame of raw text give the train stage's test predictions; the bag-of-words baseline scores on the
same folds; the tokenizer saved with the model knows no word that only test rows hold."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project
from integration.test_predict_series import fake_cv_report
from unit.test_text_data import text_rows

from dlpipe import cli
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.evaluation.baselines import run_baseline
from dlpipe.paths import ProjectPaths
from dlpipe.stages import select, train
from dlpipe.stages.promote import load_test_set, model_input

pytestmark = pytest.mark.slow

CHAMPION = "models:/dlpipe-csv-reviews@champion"
STUDY = {
    "data": {
        "name": "csv",
        "csv": {"path": "reviews.csv", "target": "sentiment", "text_column": "review", "max_tokens": 16},
        "limit": None,
    },
    "architectures": ["gru"],
    "models": {"gru": {"hidden_size": 16, "embedding_dim": 8}},
    "train": {"max_epochs": 8, "lr": 0.02, "batch_size": 32},
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("text-study") / "project")
    texts, labels = text_rows(200, seed=1)
    frame = pd.DataFrame({"review": texts, "sentiment": labels})
    # the rows prepare will hold out (its split of these labels with the study's seed) get a word of their own
    test_rows = make_splits(pd.factorize(frame["sentiment"], sort=True)[0], 0.2, 3, seed=42).test_idx
    frame.loc[test_rows, "review"] += " zyzzyva"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        frame.to_csv(root / "reviews.csv", index=False)
        params, paths = prepare_project(root, STUDY)
        data = PreparedData.load(paths.raw, paths.prepared)
        assert (data.splits.test_idx == test_rows).all() and params.seed == 42
        write_json_report = fake_cv_report(params.data.folds, data.dataset.class_names)
        paths.cv_report("gru").parent.mkdir(parents=True, exist_ok=True)
        paths.cv_report("gru").write_text(json.dumps(write_json_report))
        report = train.run(params, paths, "gru")
        assert select.run(params, paths)["registry"]["champion"] == 1
        yield root, frame.iloc[test_rows].reset_index(drop=True), report, uri, data, params


def test_the_champion_learned_the_word_and_takes_raw_text(champion, tmp_path, capsys, monkeypatch):
    root, test, report, uri, _, params = champion
    monkeypatch.chdir(root)
    monkeypatch.setenv("DLPIPE_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert len(test) == 40 and report["accuracy"] >= 0.9  # chance is 0.5: one word decides the label
    test[["review"]].to_csv(tmp_path / "new.csv", index=False)
    code = cli.main(["predict", "--model", CHAMPION, "--input", str(tmp_path / "new.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    predicted = pd.read_csv(io.StringIO(out))["prediction"].astype(str).to_numpy()
    assert (predicted == test["sentiment"].to_numpy()).mean() == pytest.approx(report["accuracy"], abs=1e-6)

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(CHAMPION)  # what `mlflow models serve` loads
    assert model.metadata.get_input_schema().input_names() == ["review"]
    assert "unknown_categories" not in model.metadata.get_output_schema().input_names()
    served = model.predict(pd.DataFrame({"review": [*test["review"], "", "GOOD!!", "unheard-of words bad"]}))
    assert (served["prediction"].to_numpy()[:40] == predicted).all()
    assert len(served) == 43 and np.isfinite(served[["prob_neg", "prob_pos"]].to_numpy()).all()
    gate_set = load_test_set(params, ProjectPaths(root))  # what the promotion gate scores a version on
    gated = model.predict(model_input(model, gate_set))["prediction"].to_numpy()
    assert (gated == predicted).all()


def test_the_saved_tokenizer_knows_no_word_only_test_rows_hold(champion):
    _, test, _, uri, data, _ = champion
    mlflow.set_tracking_uri(uri)
    meta_path = Path(mlflow.artifacts.download_artifacts(f"{CHAMPION}"))
    meta = json.loads(next(meta_path.rglob("serving.json")).read_text())
    vocab = set(json.loads(meta["text"]["tokenizer"])["model"]["vocab"])
    train_words = {w.strip(".").lower() for i in data.splits.train_idx for w in data.dataset.text.texts[i].split()}
    assert "zyzzyva" in " ".join(test["review"]) and "zyzzyva" not in train_words
    assert "zyzzyva" not in vocab and "good" in vocab and vocab - {"[PAD]", "[UNK]", "."} <= train_words
    assert meta["text"]["column"] == "review" and meta["text"]["max_tokens"] == 16
    assert "tokenizers==" in next(meta_path.rglob("requirements.txt")).read_text()


def test_bag_of_words_baseline_scores_on_the_same_folds(champion):
    _, _, _, _, data, params = champion
    result = run_baseline("bow_logreg", data, params.seed)
    assert len(result.per_fold) == params.data.folds and result.test["accuracy"] >= 0.9
