"""Text columns: a CSV's free-text column becomes token ids from a tokenizer fitted on the rows a model trains on only
(never validation, scored or test text); the sequence families read them through one token embedding (padding
masked); params that name a text column wrongly, or an architecture or baseline that cannot read text, are refused
in one line, exit 2, at `check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.project import copy_project, write_params

from dlpipe import cli
from dlpipe.config import Params, check_semantics
from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.data.store import save_dataset, save_splits
from dlpipe.data.text import TextEncoder
from dlpipe.errors import ConfigError
from dlpipe.models import build_model

FILLER = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "blue", "red", "fast", "slow", "day"]


def text_rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Filler words around one signal word: "good" makes the label pos, "bad" neg."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if i % 2 else "bad")
        texts.append(" ".join(words).capitalize() + ".")
        labels.append("pos" if i % 2 else "neg")
    return texts, labels


def write_text_csv(path: Path, n: int = 200, seed: int = 0) -> Path:
    import pandas as pd

    texts, labels = text_rows(n, seed)
    pd.DataFrame({"id": range(n), "review": texts, "sentiment": labels}).to_csv(path, index=False)
    return path


def test_the_tokenizer_of_a_fit_sees_its_training_rows_only(tmp_path):
    ds = read_csv_dataset(write_text_csv(tmp_path / "t.csv"), "sentiment", text_column="review", max_tokens=12)
    assert ds.kind == "text" and ds.text.column == "review" and ds.X.shape == (200, 0)
    splits = make_splits(ds.y.numpy(), 0.2, 3, seed=0)
    texts = list(ds.text.texts)
    for i in splits.test_idx:  # a word only test rows hold
        texts[i] += " zyzzyva"
    for i in splits.fold_indices(0)[1]:  # a word only fold 0 holds
        texts[i] += " quokka"
    ds.text = type(ds.text)(ds.text.column, tuple(texts), 12, 2000)
    data = PreparedData(ds, splits)

    holdout = data.holdout(0.1, seed=0)
    vocab = holdout.normalizer.text.vocabulary
    assert "zyzzyva" not in vocab and "quokka" in vocab  # fold 0 is training data of the final fit
    seen = [texts[i] for i in holdout.train.idx]  # exactly the training rows, not the validation slice
    assert vocab == TextEncoder.fit(seen, 2000, 12).vocabulary
    fold = data.fold(0, 0.1, seed=0)
    assert not {"zyzzyva", "quokka"} & set(fold.fit.normalizer.text.vocabulary)
    assert vocab != TextEncoder.fit(texts, 2000, 12).vocabulary  # the leak this guards against would show

    ids = data.test(holdout.normalizer).X  # test text tokenized with the training tokenizer: the word is [UNK]
    assert ids.shape == (len(splits.test_idx), 1, 12) and torch.isnan(ids[:, 0, -1]).all()
    assert (ids[:, 0, :] == holdout.normalizer.text.vocabulary["[UNK]"]).any(dim=1).all()


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "transformer", "cnn1d"])
def test_sequence_families_embed_tokens_and_ignore_padding(arch):
    torch.manual_seed(0)
    params = {"cnn1d": {"channels": [8], "kernel_sizes": [3]}}.get(arch, {})
    net = build_model(arch, {**params, "embedding_dim": 8}, (1, 6), 2, vocabulary=30).eval()
    ids = torch.tensor([[[5.0, 7.0, 9.0, np.nan, np.nan, np.nan]], [[4.0, 2.0, 3.0, 8.0, 11.0, 6.0]]])
    with torch.no_grad():
        out = net(ids)
        alone = net(ids[:1])
        unpadded = net(ids[:1, :, :3]) if arch != "transformer" else alone  # (its positions are fixed: 6 tokens)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert torch.allclose(out[0], alone[0], atol=1e-5)  # a longer text in the batch changes nothing
    assert torch.allclose(alone, unpadded, atol=1e-5)  # padding steps are never read


def test_check_refuses_text_for_families_and_baselines_that_cannot_read_it():
    base = {"data": {"name": "csv", "csv": {"path": "t.csv", "text_column": "review"}}, "baselines": {"models": []}}
    check_semantics(Params.model_validate({**base, "architectures": ["gru", "transformer", "cnn1d"]}))
    with pytest.raises(ConfigError, match=r"^architectures\.1: 'cnn' takes image input but dataset 'csv' is text; "):
        check_semantics(Params.model_validate({**base, "architectures": ["gru", "cnn"]}))
    with pytest.raises(ConfigError, match=r"^baselines\.models\.0: 'logreg' takes .* is text; allowed for text: bow"):
        check_semantics(Params.model_validate({**base, "architectures": ["gru"], "baselines": {"models": ["logreg"]}}))
    with pytest.raises(ConfigError, match=r"^data\.csv\.text_column: .*data\.name is 'digits'; allowed: null$"):
        check_semantics(Params.model_validate({"data": {"csv": {"text_column": "review"}}}))


def test_dlpipe_check_names_a_missing_text_column_in_one_line(tmp_path, monkeypatch, capsys):
    project = copy_project(tmp_path / "p")
    write_text_csv(project / "t.csv", n=60)
    csv = {"path": "t.csv", "target": "sentiment", "text_column": "body"}
    write_params(project, {"data": {"name": "csv", "csv": csv}, "architectures": ["gru"], "baselines": {"models": []}})
    monkeypatch.chdir(project)
    monkeypatch.setenv("DLPIPE_ROOT", str(project))
    assert cli.main(["check", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.csv.text_column: no column 'body' in" in err[0] and "review" in err[0], err
    write_params(project, {"data": {"name": "csv", "csv": {**csv, "max_tokens": 0}}, "architectures": ["gru"]})
    assert cli.main(["check", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.csv.max_tokens" in err[0], err
    write_params(project, {"data": {"name": "csv", "csv": {**csv, "text_columns": "review"}}, "architectures": ["gru"]})
    assert cli.main(["check", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.csv.text_columns" in err[0], err
    assert not (project / "data" / "raw").exists()


def test_fetched_text_survives_the_store_and_a_limit_subset(tmp_path):
    ds = read_csv_dataset(write_text_csv(tmp_path / "t.csv", n=60), "sentiment", text_column="review", max_tokens=9)
    save_dataset(ds, tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["kind"] == "text" and meta["text"] == {"column": "review", "max_tokens": 9, "vocab_size": 2000}
    subset = np.arange(0, 60, 2)  # data.limit's subsample: the splits index it
    splits = make_splits(ds.y.numpy()[subset], 0.2, 3, seed=0)
    save_splits(splits, subset, tmp_path / "splits.npz")
    data = PreparedData.load(tmp_path, tmp_path)
    assert data.dataset.text.texts == tuple(ds.text.texts[i] for i in subset) and len(data.dataset) == 30
    assert data.holdout(0.1, seed=0).train.X.shape[1:] == (1, 9)
