"""params.yaml schema: loading, validation messages that name the dotted key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlpipe.config import (
    DataParams,
    Params,
    apply_overrides,
    flatten,
    load_params,
    params_hash,
    parse_params,
    tunable_keys,
)
from dlpipe.data import DATASETS
from dlpipe.errors import BadInputError, ConfigError
from dlpipe.models import ARCHITECTURES

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_DATASETS = "digits, breast_cancer, csv, mnist, fashion_mnist, cifar10"
ALL_ARCHS = "perceptron, mlp, wide_deep, cnn, cnn1d, rnn, lstm, gru, transformer, resnet"


def config_error(raw, source: str = "p.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, source)
    return str(info.value)


def test_repo_params_yaml_is_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.seed == 42
    assert params.data.name == "digits"
    assert params.data.folds == 5
    assert params.data.test_size == pytest.approx(0.2)
    # the default study: every registered architecture that takes images, except the plain rnn
    assert params.architectures == ["perceptron", "mlp", "wide_deep", "cnn", "lstm", "gru", "transformer", "resnet"]
    assert params.tune.n_trials >= 10 and params.tune.pruner != "none"
    assert params.experiment_name == "dlpipe/digits"
    assert params.registered_model_name == "dlpipe-digits"
    # rnn, lstm and gru start from the same settings, written out (no YAML anchors: `dvc exp run -S` edits one)
    assert params.models.rnn.model_dump() == params.models.lstm.model_dump() == params.models.gru.model_dump()


def test_no_params_at_all_are_the_defaults():
    assert parse_params(None).model_dump() == Params().model_dump()


def test_an_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_params(path) == Params()


def test_params_yaml_states_exactly_the_schema_defaults():
    """One source of defaults: params.yaml is the schema's defaults written out, every key with its comment."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert Params.model_validate(raw) == Params()

    def keys(data, prefix=""):
        out = set()
        for key, value in data.items():
            if isinstance(value, dict) and value and not prefix.startswith("tune.space"):
                out |= keys(value, f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")
        return out

    schema = keys(Params().model_dump(mode="json"))
    assert keys(raw) == schema


def test_config_error_is_bad_input_with_exit_code_2():
    assert issubclass(ConfigError, BadInputError)
    assert ConfigError.exit_code == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"train": {"lrr": 0.1}},
            ["p.yaml: train.lrr: unknown key; allowed: max_epochs, batch_size, optimizer, lr,", "early_stopping"],
            id="unknown-key",
        ),
        pytest.param(
            {"foo": 1},
            ["p.yaml: foo: unknown key; allowed: seed, data, architectures, models, train, trainer, tune"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            {"models": {"mlp": {"hiden": [8]}}},
            ["models.mlp.hiden: unknown key; allowed:", "hidden", "dropout", "activation"],
            id="unknown-model-key",
        ),
        pytest.param(
            {"train": {"batch_size": "abc"}},
            ["p.yaml: train.batch_size: Input should be a valid integer", "(got 'abc')"],
            id="wrong-type",
        ),
        pytest.param(
            {"data": {"test_size": 1.5}},
            ["p.yaml: data.test_size: Input should be less than 1 (got 1.5)"],
            id="out-of-range",
        ),
        pytest.param(
            {"data": {"folds": 1}},
            ["data.folds: Input should be greater than or equal to 2 (got 1)"],
            id="too-few-folds",
        ),
        pytest.param(
            {"data": {"limit": 5}},
            ["data.limit: Input should be greater than or equal to 20 (got 5)"],
            id="limit-too-small",
        ),
        pytest.param(
            {"tune": {"max_train_samples": 50}},
            ["tune.max_train_samples: Input should be greater than or equal to 100 (got 50)"],
            id="tuning-subsample-too-small",
        ),
        pytest.param(
            {"train": {"optimizer": "adamm"}},
            ["train.optimizer: Input should be 'sgd', 'momentum', 'adagrad', 'rmsprop', 'adam' or 'adamw'"],
            id="bad-choice",
        ),
        pytest.param(
            {"data": {"name": "nope"}},
            [f"p.yaml: data.name: unknown dataset 'nope'; allowed: {ALL_DATASETS}"],
            id="unknown-dataset",
        ),
        pytest.param(
            {"architectures": ["mlp", "nonet"]},
            [f"p.yaml: architectures.1: unknown architecture 'nonet'; allowed: {ALL_ARCHS}"],
            id="unknown-architecture",
        ),
        pytest.param(
            {"data": {"name": "breast_cancer"}, "architectures": ["cnn"]},
            [
                "p.yaml: architectures.0: 'cnn' takes image input but dataset 'breast_cancer' is tabular; "
                "allowed for tabular: perceptron, mlp, wide_deep"
            ],
            id="architecture-incompatible-with-dataset",
        ),
        pytest.param(
            {"architectures": []},
            ["architectures: List should have at least 1 item"],
            id="no-architecture",
        ),
        pytest.param(
            {"architectures": ["mlp", "mlp"]},
            ["architectures: each architecture may appear once"],
            id="duplicate-architecture",
        ),
        pytest.param(
            {"tune": {"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}}},
            ["p.yaml: tune.space.train.lr: empty range: low (0.1) must be below high (0.01)"],
            id="empty-range",
        ),
        pytest.param(
            {"tune": {"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}},
            ["tune.space.train.lr: log scale needs low > 0"],
            id="log-range-at-zero",
        ),
        pytest.param(
            {"tune": {"space": {"model.activation": {"type": "categorical"}}}},
            ["tune.space.model.activation: categorical needs a non-empty 'choices' list"],
            id="categorical-without-choices",
        ),
        pytest.param(
            {"tune": {"space": {"train.lr": {"type": "int"}}}},
            ["tune.space.train.lr: int needs 'low' and 'high'"],
            id="range-without-bounds",
        ),
        pytest.param(
            {"tune": {"space": {"model.nope": {"type": "int", "low": 1, "high": 3}}}},
            ["p.yaml: tune.space.model.nope: unknown hyperparameter; allowed:", "model.hidden", "train.lr"],
            id="unknown-hyperparameter",
        ),
        pytest.param(
            {"tune": {"spaces": {"mlp": {"model.channels": {"type": "int", "low": 8, "high": 64}}}}},
            ["tune.spaces.mlp.model.channels: unknown hyperparameter; allowed:", "model.dropout"],
            id="hyperparameter-of-another-architecture",
        ),
        pytest.param(
            {"tune": {"spaces": {"nonet": {}}}},
            [f"tune.spaces.nonet: unknown architecture; allowed: {ALL_ARCHS}"],
            id="space-for-unknown-architecture",
        ),
        pytest.param(
            {"data": {"name": "csv"}, "architectures": ["mlp"]},
            ["p.yaml: data.csv.path: required when data.name is 'csv'"],
            id="csv-without-path",
        ),
        pytest.param(
            {"selection": {"metric": "f1_positive"}},
            ["selection.positive_class: required for selection.metric 'f1_positive'"],
            id="positive-metric-without-class",
        ),
        pytest.param(
            ["a", "b"],
            ["p.yaml: expected a mapping of keys at the top level, got list"],
            id="not-a-mapping",
        ),
    ],
)
def test_bad_params_name_the_key(raw, expected):
    message = config_error(raw)
    for part in expected:
        assert part in message


def test_every_problem_gets_its_own_line():
    message = config_error({"seed": -1, "train": {"lr": 0, "batch_size": 0}})
    lines = message.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("p.yaml: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"seed", "train.lr", "train.batch_size"}


def test_semantic_problems_are_all_reported():
    message = config_error({"data": {"name": "breast_cancer"}, "architectures": ["mlp", "cnn", "nonet", "lstm"]})
    lines = message.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["architectures.1", "architectures.2", "architectures.3"]


def test_every_architecture_accepts_image_data_and_only_dense_ones_tabular():
    for name in ARCHITECTURES:
        if name != "cnn1d":  # 1-D convolutions take series only
            parse_params({"architectures": [name]})  # digits is image data
    assert "architectures.0: 'cnn1d' takes sequence/text input" in config_error({"architectures": ["cnn1d"]})
    tabular_ok = {name for name, arch in ARCHITECTURES.items() if "tabular" in arch.kinds}
    assert tabular_ok == {"perceptron", "mlp", "wide_deep", "autoencoder"}
    for name in ARCHITECTURES:
        raw = {"data": {"name": "breast_cancer"}, "architectures": [name]}
        if name in tabular_ok:
            parse_params(raw)
        else:
            assert "architectures.0" in config_error(raw)


def test_load_params_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="params file not found") as info:
        load_params(missing)
    assert str(missing) in str(info.value)


def test_load_params_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [\n  name: digits\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML (")
    assert "\n" not in message


def test_load_params_prefixes_the_file_name(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump({"train": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"custom\.yaml: train\.lrr: unknown key"):
        load_params(path)


def test_valid_overrides_and_values(tmp_path):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["seed"] = 7
    raw["data"].update(name="breast_cancer", folds=3, limit=100)
    raw["architectures"] = ["wide_deep", "mlp"]
    raw["train"]["lr"] = 0.01
    raw["train"]["early_stopping"]["monitor"] = "val_f1_macro"
    raw["tune"]["spaces"]["mlp"] = {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5}}
    raw["data"].pop("test_size")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    assert (params.seed, params.data.name, params.data.folds, params.data.limit) == (7, "breast_cancer", 3, 100)
    assert params.architectures == ["wide_deep", "mlp"]
    assert params.train.lr == pytest.approx(0.01)
    assert params.train.early_stopping.mode == "max"
    assert Params().train.early_stopping.mode == "min"
    assert params.tune.spaces["mlp"]["model.dropout"].high == 0.5
    assert params.data.test_size == pytest.approx(0.2)  # untouched keys keep their defaults


def test_tunable_keys_cover_train_and_model_fields():
    keys = tunable_keys(Params(), "cnn")
    assert "train.lr" in keys and "model.channels" in keys and "model.kernel_size" in keys
    assert "train.early_stopping" not in keys and "train.augmentation" not in keys  # sections are not tunable
    assert "model.channels" not in tunable_keys(Params(), "mlp")


def test_apply_overrides():
    params = parse_params({"models": {"mlp": {"dropout": 0.2}}, "train": {"lr": 0.001}})
    model, train = apply_overrides(params, "mlp", {"model.dropout": 0.4, "train.lr": 0.05})
    assert model.dropout == pytest.approx(0.4)
    assert train.lr == pytest.approx(0.05)
    assert params.models.mlp.dropout == pytest.approx(0.2)  # the params themselves are unchanged
    assert params.train.lr == pytest.approx(0.001)
    with pytest.raises(ConfigError, match=r"optim\.lr: overrides must be train\.<key> or model\.<key>"):
        apply_overrides(Params(), "mlp", {"optim.lr": 0.1})
    with pytest.raises(ConfigError, match=r"lr: Input should be greater than 0"):
        apply_overrides(Params(), "mlp", {"train.lr": -1.0})


def test_params_hash_is_stable_and_sensitive():
    a, b = Params(), Params()
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 12
    assert params_hash(a) != params_hash(parse_params({"seed": 1}))
    assert params_hash({"x": 1, "y": 2}) == params_hash({"y": 2, "x": 1})


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    flat = flatten(Params())
    assert flat["data.name"] == "digits"
    assert flat["train.early_stopping.patience"] == 3
    assert flat["models.cnn.channels"] == [32, 64]


def test_data_params_defaults_match_the_registry():
    assert DataParams().name in DATASETS


def test_union_typed_key_is_named_once_without_pydantic_member_tags():
    message = config_error({"trainer": {"devices": "two"}})
    lines = message.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("p.yaml: trainer.devices: ")
    assert "'auto'" in lines[0] and "(got 'two')" in lines[0]


def test_flatten_expands_models_nested_in_dicts():
    flat = flatten({"arch": "mlp", "train": Params().train, "model": {"hidden": [8]}})
    assert flat["train.lr"] == 0.001
    assert flat["train.early_stopping.monitor"] == "val_loss"
    assert flat["model.hidden"] == [8]
    assert "train" not in flat


def test_override_errors_name_the_section_and_key():
    with pytest.raises(ConfigError, match=r"^models\.transformer: d_model \(64\) must be divisible by nhead \(3\)$"):
        apply_overrides(Params(), "transformer", {"model.nhead": 3})
    with pytest.raises(ConfigError, match=r"^train\.lr: "):
        apply_overrides(Params(), "mlp", {"train.lr": -1})
    with pytest.raises(ConfigError, match=r"^models\.mlp\.dropout: "):
        apply_overrides(Params(), "mlp", {"model.dropout": 2})


@pytest.mark.parametrize(
    ("raw", "key", "allowed"),
    [
        ({"train": {"gradient_clip_val": 1.0}}, "train.gradient_clip_val", "allowed with gan: 0"),
        ({"train": {"scheduler": "cosine"}}, "train.scheduler", "allowed with gan: none"),
        ({"trainer": {"strategy": "ddp", "devices": 2}}, "trainer.strategy", "ddp_find_unused_parameters_true"),
    ],
)
def test_gan_refuses_what_its_manual_optimisation_cannot_do(raw, key, allowed):
    message = config_error({"architectures": ["gan"], **raw})
    assert message.splitlines() == [line for line in message.splitlines() if line.startswith(f"p.yaml: {key}: ")]
    assert allowed in message
    parse_params({"architectures": ["cnn"], **raw})  # the other architectures take it


def test_autoencoder_bce_needs_image_data():
    raw = {"data": {"name": "breast_cancer"}, "architectures": ["autoencoder"]}
    message = config_error({**raw, "models": {"autoencoder": {"reconstruction": "bce"}}})
    assert message == (
        "p.yaml: models.autoencoder.reconstruction: bce reconstructs raw inputs in [0, 1] (image data); "
        "dataset 'breast_cancer' is tabular; allowed: mse"
    )
    parse_params(raw)  # mse is fine on tabular data
    parse_params({"architectures": ["autoencoder"], "models": {"autoencoder": {"reconstruction": "bce"}}})


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("churn.csv", "dlpipe-csv-churn"),
        ("data/My Churn (v2).csv", "dlpipe-csv-My-Churn-v2"),
        ("données/clients.2024.csv", "dlpipe-csv-clients.2024"),
        ("../???.csv", "dlpipe-csv-data"),
    ],
)
def test_each_csv_file_names_its_own_registered_model(path: str, name: str) -> None:
    params = Params.model_validate({"data": {"name": "csv", "csv": {"path": path}}})
    assert params.registered_model_name == name
    chosen = Params.model_validate({"data": {"name": "csv", "csv": {"path": path}}, "registry": {"model_name": "m"}})
    assert chosen.registered_model_name == "m"
