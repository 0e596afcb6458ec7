"""The params.yaml schema: every key the pipeline reads, with its default, type and range.

`load_params` validates a file and raises `ConfigError` whose message has one line per problem, each naming the
dotted key and what is allowed. Cross-section rules (dataset kind vs architecture, search-space keys) are checked
after the field types, by `check_semantics`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from dlpipe.data import DATASETS, get_dataset_info
from dlpipe.errors import ConfigError
from dlpipe.metric_names import MONITORS, SELECTION_METRICS, is_positive_metric, monitor_mode
from dlpipe.models import ARCHITECTURES, get_architecture


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CsvParams(Section):
    path: str | None = Field(None, description="CSV file, relative to the project root")
    target: str = Field("target", min_length=1, description="name of the label column")
    categorical: list[str] = Field(
        [], description="feature columns read as categories even when numeric (text columns always are)"
    )
    text_column: str | None = Field(
        None,
        min_length=1,
        description="a free-text column: the CSV becomes text data (token sequences; null = tabular data)",
    )
    max_tokens: int = Field(64, ge=1, le=4096, description="text data: tokens kept of each text (the rest is cut)")
    vocab_size: int = Field(2000, ge=16, le=100_000, description="text data: most tokens the tokenizer learns")


class ImagesParams(Section):
    path: str | None = Field(None, description="folder with one sub-folder per class, relative to the project root")
    size: int = Field(32, ge=4, le=512, description="side of the square images: shorter side resized, centre cropped")
    channels: Literal["gray", "rgb"] = Field("rgb", description="images converted to grayscale (1) or RGB (3)")


class DataParams(Section):
    name: str = Field("digits", description="dataset from the registry (`dlpipe list`)")
    csv: CsvParams = CsvParams()
    split: Literal["random", "official"] = Field(
        "random",
        description="random: a stratified data.test_size holdout; official: the dataset's own test set is the "
        "holdout and the folds split its official training part",
    )
    images: ImagesParams = ImagesParams()
    test_size: float = Field(0.2, gt=0.0, lt=1.0, description="fraction held out as the test set")
    folds: int = Field(5, ge=2, le=20, description="stratified folds over the training part")
    val_size: float = Field(0.1, gt=0.0, lt=0.5, description="validation slice of the training part (train/tune)")
    normalize: bool = Field(True, description="standardise with statistics of the training data only")
    limit: int | None = Field(None, ge=20, description="stratified subsample of this many samples (quick runs)")
    znormalize: bool = Field(
        False, description="sequences: z-normalise each series on its own (per channel), in training and serving"
    )
    labeled_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="of every training part, the stratified fraction that keeps its labels "
        "(label-efficient studies); validation, scored folds and the test set keep all",
    )


class AugmentationParams(Section):
    enabled: bool = False
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation in degrees")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max shift as a fraction of the image side")
    scale_min: float = Field(1.0, gt=0.0, le=1.0)
    scale_max: float = Field(1.0, ge=1.0, le=3.0)
    hflip: bool = Field(False, description="random horizontal flips (p=0.5)")
    vflip: bool = Field(False, description="random vertical flips (p=0.5)")
    crop_padding: int = Field(0, ge=0, description="pad by this many pixels, then random-crop back to size")
    jitter: float = Field(0.0, ge=0.0, description="series: std of Gaussian noise added to every step")
    scaling: float = Field(0.0, ge=0.0, lt=1.0, description="series: std of a random factor around 1 per channel")
    window_slice: float = Field(
        1.0, gt=0.0, le=1.0, description="series: fraction of each series kept in a random window, stretched back"
    )

    @property
    def series_options(self) -> list[str]:
        return [
            k for k in ("jitter", "scaling", "window_slice") if getattr(self, k) != type(self).model_fields[k].default
        ]

    @property
    def image_options(self) -> list[str]:
        names = ("rotation", "translate", "scale_min", "scale_max", "hflip", "vflip", "crop_padding")
        return [k for k in names if getattr(self, k) != type(self).model_fields[k].default]


class EarlyStoppingParams(Section):
    enabled: bool = True
    monitor: Literal[MONITORS] = "val_loss"  # type: ignore[valid-type]
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)

    @property
    def mode(self) -> str:
        return monitor_mode(self.monitor)


class TrainParams(Section):
    max_epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="for momentum and rmsprop")
    nesterov: bool = Field(False, description="Nesterov momentum (optimizer: momentum)")
    weight_decay: float = Field(0.0, ge=0.0, description="optimizer weight decay (decoupled with adamw)")
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on weights, added to the loss")
    l2: float = Field(0.0, ge=0.0, description="L2 penalty (sum of squared weights), added to the loss")
    scheduler: Literal["none", "step", "cosine", "plateau", "onecycle"] = "none"
    step_size: int = Field(10, ge=1, description="epochs between LR drops (scheduler: step)")
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="LR factor (step and plateau)")
    gradient_clip_val: float = Field(0.0, ge=0.0, description="0 = no clipping")
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    calibration: Literal["none", "temperature"] = Field(
        "none", description="temperature scaling fitted on the validation slice (probabilities only, never argmax)"
    )
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    augmentation: AugmentationParams = AugmentationParams()


class TrainerParams(Section):
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = Field(1, description="number of devices, or auto")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"] = "32-true"
    deterministic: bool = True
    progress_bar: bool | None = Field(None, description="null = on when the output is a terminal")
    data_on_device: bool = Field(
        True,
        description="keep in-memory data on the GPU (one copy per process) when it fits, else pinned-memory batches",
    )
    cpu_threads: int | None = Field(
        1, ge=1, description="PyTorch CPU threads per process; small models run fastest on 1; null = all cores"
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="parallel worker processes for folds, trials and final fits; auto = cores / cpu_threads, "
        "or one per GPU",
    )

    @property
    def distributed(self) -> bool:
        """DDP or several nodes: every rank runs the study's units in one fixed order (no worker processes)."""
        many = self.devices == "auto" or self.devices > 1
        return self.num_nodes > 1 or many or self.strategy != "auto"


class SearchDim(Section):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_is_usable(self) -> SearchDim:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        elif not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class TuneParams(Section):
    enabled: bool = Field(True, description="false: the tune stage records the params as they are")
    n_trials: int = Field(10, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds; stop starting trials after this")
    sampler: Literal["tpe", "gp", "random", "cmaes"] = "tpe"
    startup_trials: int = Field(
        3, ge=0, description="random trials before a model-based sampler (tpe, gp, cmaes) learns from the others"
    )
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    cv_folds: int | Literal["auto"] = Field(
        "auto",
        description="0 = one validation slice; k = mean over the first k folds; auto = every fold when the "
        "validation slice holds fewer than 10 samples of some class, else 0",
    )
    max_epochs: int | None = Field(5, ge=1, description="cap on epochs per trial (null = train.max_epochs)")
    max_train_samples: int | None = Field(
        None,
        ge=100,
        description="trials train on a stratified subsample of at most this many rows of their training part "
        "(null = all); validation, the cv folds and the final fit keep every row",
    )
    workers: int = Field(
        1, ge=1, description="study workers running trials of one study at once (at most trainer.workers)"
    )
    storage: str | None = Field(None, description="null = journal file under optuna/; or postgresql://...")
    space: dict[str, SearchDim] = Field(
        default_factory=lambda: {
            "train.lr": SearchDim(type="float", low=0.0003, high=0.01, log=True),
            "train.batch_size": SearchDim(type="categorical", choices=[32, 64, 128]),
        },
        description="shared by every architecture",
    )
    spaces: dict[str, dict[str, SearchDim]] = Field(
        default_factory=lambda: {
            name: {key: SearchDim.model_validate(dim) for key, dim in arch.space.items()}
            for name, arch in ARCHITECTURES.items()
        },
        description="per architecture (each family's default is registered with it)",
    )


class SelectionParams(Section):
    metric: Literal[SELECTION_METRICS] = "f1_macro"  # type: ignore[valid-type]
    positive_class: str | None = Field(None, description="class name for *_positive metrics (binary tasks)")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance level of the fold-aware t-test")
    rule: Literal["best", "smallest_within_rope"] = Field(
        "best", description="best CV mean, or the smallest model practically equivalent to the best"
    )
    rope: float = Field(0.005, ge=0.0, lt=1.0, description="region of practical equivalence of the selection metric")
    equivalence: float = Field(
        0.95, gt=0.5, lt=1.0, description="smallest_within_rope: P(not practically worse than the best) needed"
    )
    operating_point: str = Field(
        "argmax", description="argmax | max_f1 | precision>=X | recall>=X (binary: threshold on the positive class)"
    )

    @field_validator("operating_point")
    @classmethod
    def _operating_point_parses(cls, value: str) -> str:
        from dlpipe.evaluation.operating_point import parse_rule

        parse_rule(value)
        return value.replace(" ", "")


class BaselinesParams(Section):
    models: list[str] = Field(
        ["logreg", "svc", "random_forest", "knn", "hist_gradient_boosting"],
        description="scikit-learn baselines scored on the same folds",
    )
    max_train_samples: int | None = Field(
        20000, ge=100, description="fit on a stratified subsample of a larger training part (null = all)"
    )


class MlflowParams(Section):
    tracking_uri: str | None = Field(None, description="null = sqlite store in the project's mlruns/")
    experiment: str | None = Field(None, description="null = dlpipe/<dataset>")
    log_models: bool = True


EXECUTORS = ("local", "ray")  # study.executor: dlpipe.executors registers a pool factory under each name


class BudgetParams(Section):
    epochs: int | None = Field(
        None,
        ge=1,
        description="the most epochs each architecture's tuning trains, its trials summed; null = no budget "
        "(every trial runs, no architecture is dropped)",
    )
    drop_after_folds: int = Field(
        2, ge=1, description="under a budget: folds scored before an architecture may be dropped (below data.folds)"
    )
    drop_margin: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="under a budget: an architecture whose CV mean of the selection metric over its first "
        "drop_after_folds folds is below the leader's over the same folds by more than this is dropped",
    )

    @property
    def enabled(self) -> bool:
        return self.epochs is not None


class StudyParams(Section):
    executor: Literal[EXECUTORS] = Field(  # type: ignore[valid-type]
        "local", description="where the study's units run: local worker processes, or tasks on a Ray cluster"
    )
    ray_address: str | None = Field(
        None, description="the Ray cluster (host:port of its head); null = $RAY_ADDRESS, else a Ray started here"
    )
    budget: BudgetParams = BudgetParams()


class RegistryParams(Section):
    model_name: str | None = Field(
        None, description="registered model; null = dlpipe-<dataset>, dlpipe-csv-<file stem> for a CSV"
    )
    auto_promote: bool = Field(True, description="promote the challenger after select when it beats the champion")


ModelsParams = create_model(  # one field per registered architecture, each with its own schema
    "ModelsParams",
    __base__=Section,
    **{name: (arch.params, arch.params()) for name, arch in ARCHITECTURES.items()},
)


class Params(Section):
    seed: int = Field(42, ge=0, description="drives Python, NumPy, torch, the splits and the sampler")
    data: DataParams = DataParams()
    architectures: list[str] = Field(
        ["perceptron", "mlp", "wide_deep", "cnn", "lstm", "gru", "transformer", "resnet"], min_length=1
    )
    models: ModelsParams = ModelsParams()  # type: ignore[valid-type]
    train: TrainParams = TrainParams()
    trainer: TrainerParams = TrainerParams()
    tune: TuneParams = TuneParams()
    selection: SelectionParams = SelectionParams()
    baselines: BaselinesParams = BaselinesParams()
    mlflow: MlflowParams = MlflowParams()
    study: StudyParams = StudyParams()
    registry: RegistryParams = RegistryParams()

    def model_params(self, arch: str) -> BaseModel:
        return getattr(self.models, arch)

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or f"dlpipe/{self.data.name}"

    @property
    def registered_model_name(self) -> str:
        """registry.model_name, or one per data set: dlpipe-<dataset>, dlpipe-csv-<file stem> for a CSV and
        dlpipe-images-<folder name> for an image folder (each file or folder has its own champion; a champion is
        compared only with models of the same data)."""
        if self.registry.model_name:
            return self.registry.model_name
        if self.data.name == "csv" and self.data.csv.path:
            stem = re.sub(r"[^\w.-]+", "-", Path(self.data.csv.path).stem).strip("-.") or "data"
            return f"dlpipe-csv-{stem}"
        if self.data.name == "images" and self.data.images.path:
            stem = re.sub(r"[^\w.-]+", "-", Path(self.data.images.path).name).strip("-.") or "folder"
            return f"dlpipe-images-{stem}"
        return f"dlpipe-{self.data.name}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names allowed where an unknown key `loc` was found."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return list(model.model_fields)


def _field_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` without pydantic's union-member tags (`trainer.devices.int` -> `trainer.devices`)."""
    out: list[Any] = []
    current: Any = model
    for part in loc:
        if _is_section(current):
            out.append(part)
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        elif not _is_union_tag(part):
            out.append(part)
    return tuple(out)


def _is_union_tag(part: Any) -> bool:
    text = str(part)
    return text in {"int", "float", "str", "bool", "none"} or text.startswith(("literal[", "list[", "dict["))


def format_validation_error(exc: ValidationError, model: type[BaseModel] = Params) -> str:
    lines: list[str] = []
    union_keys: dict[str, int] = {}  # a union (int | "auto") fails once per member: report the key once
    for err in exc.errors():
        loc = _field_loc(model, tuple(err["loc"]))
        key = _dotted(loc)
        if len(loc) < len(err["loc"]):
            if key in union_keys:
                lines[union_keys[key]] += f"; or {err['msg']}"
                continue
            union_keys[key] = len(lines)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{key}: unknown key{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r})"
            lines.append(f"{key}: {msg}{shown}")
    return "\n".join(lines)


def check_semantics(params: Params) -> None:
    """Rules that span sections: dataset and architecture names, input kinds, search-space keys."""
    problems: list[str] = []
    try:
        kind = dataset_kind(params.data)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    if params.data.name == "csv" and not params.data.csv.path:
        problems.append("data.csv.path: required when data.name is 'csv'")
    if params.data.csv.text_column is not None and params.data.name != "csv":
        problems.append(
            f"data.csv.text_column: a text column of the CSV (data.name csv); data.name is "
            f"{params.data.name!r}; allowed: null"
        )
    problems += _data_problems(params.data, kind)
    problems += _augmentation_problems(params.train.augmentation, kind)
    if params.data.name == "images" and not params.data.images.path:
        problems.append("data.images.path: required when data.name is 'images'")
    if len(set(params.architectures)) != len(params.architectures):
        problems.append("architectures: each architecture may appear once")
    for i, name in enumerate(params.architectures):
        if name not in ARCHITECTURES:
            problems.append(f"architectures.{i}: unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
            continue
        arch = get_architecture(name)
        if kind not in arch.kinds:
            fits = [a.name for a in ARCHITECTURES.values() if kind in a.kinds]
            problems.append(
                f"architectures.{i}: {name!r} takes {'/'.join(sorted(arch.kinds))} input but dataset "
                f"{params.data.name!r} is {kind}; allowed for {kind}: {', '.join(fits)}"
            )
    problems += _family_problems(params, kind)
    problems += _check_space(params, "tune.space", params.tune.space, params.architectures)
    for arch_name, space in params.tune.spaces.items():
        if arch_name not in ARCHITECTURES:
            problems.append(f"tune.spaces.{arch_name}: unknown architecture; allowed: {', '.join(ARCHITECTURES)}")
        else:
            problems += _check_space(params, f"tune.spaces.{arch_name}", space, [arch_name])
    if is_positive_metric(params.selection.metric) and params.selection.positive_class is None:
        problems.append(f"selection.positive_class: required for selection.metric {params.selection.metric!r}")
    if params.selection.operating_point != "argmax" and params.selection.positive_class is None:
        problems.append(
            f"selection.positive_class: required for selection.operating_point "
            f"{params.selection.operating_point!r} (a threshold on the positive class)"
        )
    from dlpipe.evaluation.baselines import BASELINES

    for i, name in enumerate(params.baselines.models):
        if name not in BASELINES:
            problems.append(f"baselines.models.{i}: unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
        elif kind not in BASELINES[name].kinds:
            fits = [b for b, spec in BASELINES.items() if kind in spec.kinds]
            problems.append(
                f"baselines.models.{i}: {name!r} takes {'/'.join(sorted(BASELINES[name].kinds))} input but dataset "
                f"{params.data.name!r} is {kind}; allowed for {kind}: {', '.join(fits)}"
            )
    if isinstance(params.tune.cv_folds, int) and not 0 <= params.tune.cv_folds <= params.data.folds:
        problems.append(
            f"tune.cv_folds: {params.tune.cv_folds} folds asked but data.folds is {params.data.folds}; "
            f"allowed: 0 to {params.data.folds}, or auto"
        )
    budget = params.study.budget
    if budget.enabled and budget.drop_after_folds >= params.data.folds:
        problems.append(
            f"study.budget.drop_after_folds: {budget.drop_after_folds} folds before a drop but data.folds is "
            f"{params.data.folds}; allowed: 1 to {params.data.folds - 1}"
        )
    if not problems:
        problems += _check_space_values(params)
    if problems:
        raise ConfigError("\n".join(problems))


def dataset_kind(data: DataParams) -> str:
    """The input kind of the data these params name: the registry's, or text for a CSV with a text column."""
    if data.name == "csv" and data.csv.text_column is not None:
        return "text"
    return get_dataset_info(data.name).kind


def _data_problems(data: DataParams, kind: str) -> list[str]:
    """data.split and data.znormalize against what the dataset has."""
    problems = []
    if data.split == "official" and not get_dataset_info(data.name).official_split:
        having = [name for name, info in DATASETS.items() if info.official_split]
        problems.append(
            f"data.split: dataset {data.name!r} has no official test set; allowed: random (official for "
            f"{', '.join(having)})"
        )
    if data.znormalize and kind != "sequence":
        problems.append(f"data.znormalize: z-normalises each series; dataset {data.name!r} is {kind}; allowed: false")
    return problems


def _augmentation_problems(augmentation: AugmentationParams, kind: str) -> list[str]:
    """Image options on series, or series options on images, would silently do nothing."""
    if not augmentation.enabled:
        return []
    if kind == "text":
        return ["train.augmentation.enabled: no augmentation of token sequences (text data); allowed: false"]
    wrong = augmentation.image_options if kind == "sequence" else augmentation.series_options
    allowed = "jitter, scaling, window_slice" if kind == "sequence" else "the image options"
    return [f"train.augmentation.{key}: not for {kind} data; allowed: {allowed}" for key in wrong]


def _family_problems(params: Params, kind: str) -> list[str]:
    """Settings the autoencoder and GAN families cannot train with."""
    problems = []
    archs = set(params.architectures)
    if "autoencoder" in archs and params.models.autoencoder.reconstruction == "bce" and kind != "image":
        problems.append(
            f"models.autoencoder.reconstruction: bce reconstructs raw inputs in [0, 1] (image data); "
            f"dataset {params.data.name!r} is {kind}; allowed: mse"
        )
    if "gan" in archs:
        train, trainer = params.train, params.trainer
        if train.gradient_clip_val:
            problems.append(
                "train.gradient_clip_val: the gan trains with manual optimisation, which Lightning does "
                "not clip; allowed with gan: 0"
            )
        if train.scheduler != "none":
            problems.append(
                f"train.scheduler: the gan steps its own two Adam optimisers and no scheduler "
                f"(got {train.scheduler!r}); allowed with gan: none"
            )
        if trainer.strategy == "ddp":
            problems.append(
                "trainer.strategy: under ddp the gan's generator step leaves the discriminator's "
                "gradients unused; allowed with gan: auto, ddp_find_unused_parameters_true"
            )
    return problems


def _check_space_values(params: Params) -> list[str]:
    """Every value a search space can produce must be valid where it lands (what the tune phase would refuse)."""
    from dlpipe.tuning.space import SearchSpace  # the search space module builds on this one

    archs_of: dict[str, list[str]] = {}  # a problem, its architecture left out -> the architectures it has
    for arch in params.architectures:
        try:
            SearchSpace.for_arch(params, arch).validate(params)
        except ConfigError as exc:
            for line in str(exc).splitlines():  # a bad value in the shared tune.space: one line, not one per arch
                archs_of.setdefault(line.replace(f" for {arch} (", " for \0 (", 1), []).append(arch)
    return [line.replace("\0", ", ".join(archs)) for line, archs in archs_of.items()]


def tunable_keys(params: Params, arch: str) -> list[str]:
    """Every key a search space may name for `arch`: train.<field> and model.<field>."""
    train = [f"train.{f}" for f, info in TrainParams.model_fields.items() if not _is_section(info.annotation)]
    model = [f"model.{f}" for f in get_architecture(arch).params.model_fields]
    return train + model


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_space(params: Params, where: str, space: dict[str, SearchDim], archs: list[str]) -> list[str]:
    problems = []
    known = {arch: set(tunable_keys(params, arch)) for arch in archs if arch in ARCHITECTURES}
    for key in space:
        if known and not any(key in keys for keys in known.values()):
            allowed = sorted(set().union(*known.values()))
            problems.append(f"{where}.{key}: unknown hyperparameter; allowed: {', '.join(allowed)}")
    return problems


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError with one line per problem, each prefixed by `source`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
        check_semantics(params)
    except ValidationError as exc:
        raise ConfigError(_prefix(source, format_validation_error(exc))) from None
    except ConfigError as exc:
        raise ConfigError(_prefix(source, str(exc))) from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file, so not a params file ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_params(raw, str(path))


def _prefix(source: str, text: str) -> str:
    return "\n".join(f"{source}: {line}" for line in text.splitlines())


def apply_overrides(params: Params, arch: str, overrides: dict[str, Any]) -> tuple[BaseModel, TrainParams]:
    """The (model params, train params) of `arch` after `train.x` / `model.x` overrides, validated."""
    model = params.model_params(arch).model_dump()
    train = params.train.model_dump()
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        target = {"model": model, "train": train}.get(section)
        if target is None or not field:
            raise ConfigError(f"{key}: overrides must be train.<key> or model.<key>")
        target[field] = value
    arch_cls = get_architecture(arch).params
    return _validate_section(arch_cls, model, f"models.{arch}"), _validate_section(TrainParams, train, "train")


def _validate_section(cls: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, cls).splitlines()
        top = "(top level)"
        raise ConfigError(
            "\n".join(where + line[len(top) :] if line.startswith(top) else f"{where}.{line}" for line in lines)
        ) from None


def params_hash(*parts: Any) -> str:
    """A short, stable hash of pydantic models and plain data (JSON with sorted keys)."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` through nested dicts and pydantic models; lists stay values (MLflow)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel) or (isinstance(value, dict) and value):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


__all__ = [
    "DATASETS",
    "ConfigError",
    "DataParams",
    "Params",
    "TrainParams",
    "TrainerParams",
    "TuneParams",
    "apply_overrides",
    "flatten",
    "load_params",
    "params_hash",
    "parse_params",
]
