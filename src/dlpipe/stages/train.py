"""Final training, the study stage's last phase: retrain with the tuned params, evaluate once on the held-out test
set, export and log the model.

Normalisation: the model trains on the training part minus a stratified validation slice (`data.val_size`, for
early stopping and keeping the best epoch). Its normaliser is fitted on exactly those training samples, and the same
normaliser transforms the validation slice, the test set and, inside the exported model, every input at serving
time: train, validation, test and serving all see one transform.

Outputs:
- `models/<arch>/` (written into a temporary folder, then renamed): `model.pt` (the network's state_dict),
  `model.pt2` (torch.export program: raw input -> probabilities, normaliser included) and `params.json` (arch,
  model and train params, class names, input shape, normaliser mean/std, dataset and params hashes).
- `reports/test/<arch>.json`: test metrics (scalar, per class, confusion matrix), parameter count, training time,
  CPU inference latency, the MLflow run and logged model; `reports/test/<arch>.predictions.csv`: actual,predicted.
- MLflow: a `train-<arch>` run with params, per-epoch metrics, `test_*` metrics, figures and the model (pyfunc).

A rerun with the same params hash whose outputs are still in place (and whose MLflow run finished) reuses them.
On a remote executor (`study.executor` not local) the outputs are also logged under the run's `outputs/` artifact
folder before it is tagged recorded: a retried unit whose earlier attempt recorded the fit (its node died before the
files came back) downloads them from that run instead of training again.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from dlpipe.config import Params
from dlpipe.data.prepared import Part, TrainValSplit
from dlpipe.evaluation import plots
from dlpipe.evaluation.calibration import calibrated_probs, expected_calibration_error, fit_temperature, logits_of
from dlpipe.evaluation.operating_point import OperatingPoint, argmax_point, decide
from dlpipe.evaluation.reports import report_from_predictions
from dlpipe.io import atomic_dir, check_writable, read_json, write_json, write_text
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.profile import timed
from dlpipe.stages.common import StageContext, model_spec, worker_context
from dlpipe.stages.cv import run_params
from dlpipe.tracking import model_logging
from dlpipe.tracking.callbacks import EpochMetricsLogger
from dlpipe.tracking.runs import RECORDED_TAG, is_global_zero, log_metrics, log_params, tracked_run
from dlpipe.training.fit import EVAL_BATCH, FitResult, ModelSpec, fit
from dlpipe.training.metrics import logits_report

log = logging.getLogger(__name__)
STAGE = "train"
LATENCY_SAMPLES = 100
OUTPUTS = "outputs"  # the train run's artifact folder holding the unit's output files (remote executors only)


@dataclass
class TrainJob:
    """The final fit of one architecture (picklable: it travels to a worker process)."""

    params: Params
    paths: ProjectPaths
    arch: str


@dataclass
class Trained:
    """What the final fit produced, for the steps that evaluate, export and record it."""

    spec: ModelSpec
    phash: str
    split: TrainValSplit
    test: Part
    result: FitResult
    net: nn.Module  # the kept network on the CPU, in eval mode
    temperature: float  # train.calibration: temperature fitted on the validation slice (1 = none)
    decision: OperatingPoint  # chosen on the out-of-fold predictions of cross-validation

    @functools.cached_property
    def test_logits(self) -> torch.Tensor:
        """The kept network's outputs on the test set: the one pass over it (report, probabilities, calibration)."""
        return logits_of(self.net, self.test.X)

    def test_probs(self) -> np.ndarray:
        return calibrated_probs(self.test_logits, self.temperature)

    def predicted_classes(self) -> np.ndarray:
        return decide(self.test_probs(), self.decision, self.result.module.class_names)


def operating_point(ctx: StageContext, arch: str) -> OperatingPoint:
    """The decision rule `arch` is deployed with: argmax, known without cross-validation (so the final fit may run
    beside the folds), or the threshold cross-validation chose on its out-of-fold predictions."""
    if not needs_cv(ctx.params):
        return argmax_point(ctx.data.dataset.class_names, ctx.params.selection.positive_class)
    path = ctx.paths.cv_report(arch)
    return OperatingPoint.from_dict(read_json(path).get("oof", {}).get("operating_point") if path.is_file() else None)


def needs_cv(params: Params) -> bool:
    """Whether the final fit needs cross-validation's results: a threshold chosen on its out-of-fold predictions."""
    return params.selection.operating_point != "argmax"


def params_hash(ctx: StageContext, arch: str) -> str:
    return ctx.spec_hash(
        model_spec(ctx.params, ctx.paths, arch),
        STAGE,
        val_size=ctx.params.data.val_size,
        log_models=ctx.params.mlflow.log_models,
        decision=operating_point(ctx, arch).to_dict(),
    )


def reusable(ctx: StageContext, arch: str) -> dict | None:
    """The test report of an earlier fit with the same params hash, when its model and MLflow run are intact."""
    report_path, meta_path = ctx.paths.test_report(arch), ctx.paths.model_dir(arch) / "params.json"
    if not (report_path.is_file() and meta_path.is_file() and ctx.paths.test_predictions(arch).is_file()):
        return None
    phash = params_hash(ctx, arch)
    report = read_json(report_path)
    if report.get("params_hash") != phash or read_json(meta_path).get("params_hash") != phash:
        return None
    try:
        if mlflow.MlflowClient().get_run(report["mlflow_run_id"]).info.status != "FINISHED":
            return None
    except (MlflowException, KeyError, TypeError):
        return None
    log.info("train %s: reusing the finished fit of run %s (same params)", arch, report["mlflow_run_id"])
    return report


def output_files(paths: ProjectPaths, arch: str) -> list[Path]:
    """What a final fit writes: its model folder's files, then its test predictions and (last) its test report."""
    model = sorted(p for p in paths.model_dir(arch).iterdir() if p.is_file())
    return [*model, paths.test_predictions(arch), paths.test_report(arch)]


def log_outputs(run_id: str, paths: ProjectPaths, arch: str) -> None:
    """The unit's output files as artifacts under `OUTPUTS/`, at their paths in the project."""
    for path in output_files(paths, arch):
        rel = path.parent.relative_to(paths.root).as_posix()
        mlflow.MlflowClient().log_artifact(run_id, str(path), f"{OUTPUTS}/{rel}")


def recorded_fit(ctx: StageContext, arch: str, phash: str) -> tuple[str, dict] | None:
    """(run id, test report) of a recorded train run with this params hash that holds the unit's outputs, which are
    then installed in the project: an earlier attempt of the same unit whose files never came back (Ray retries a
    task whose node died after the fit was recorded)."""
    if ctx.experiment_id is None:
        return None
    clause = f"tags.stage = '{STAGE}' and tags.architecture = '{arch}' and tags.params_hash = '{phash}'"
    clause += f" and tags.`{RECORDED_TAG}` = 'true'"
    for run in mlflow.MlflowClient().search_runs([ctx.experiment_id], clause, max_results=100):
        if run.info.status not in ("FINISHED", "RUNNING"):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                got = Path(
                    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=OUTPUTS, dst_path=tmp)
                )
                report = read_json(got / ctx.paths.test_report(arch).relative_to(ctx.paths.root))
            except Exception:  # no outputs (a local-executor run), or unreadable ones
                continue
            if report.get("params_hash") != phash or report.get("mlflow_run_id") != run.info.run_id:
                continue
            if is_global_zero():
                install_outputs(ctx.paths, arch, got)
        return run.info.run_id, report
    return None


def install_outputs(paths: ProjectPaths, arch: str, got: Path) -> None:
    """Put downloaded outputs in place: the model folder atomically, the predictions, then the report last."""
    src = got / paths.model_dir(arch).relative_to(paths.root)
    with atomic_dir(paths.model_dir(arch)) as out:
        for f in src.iterdir():
            shutil.copy2(f, out / f.name)
    for dest in (paths.test_predictions(arch), paths.test_report(arch)):
        write_text(dest, (got / dest.relative_to(paths.root)).read_text())


def train_unit(job: TrainJob) -> dict:
    """Fit, evaluate once on the test set, export, log and write the reports of `job.arch` (on a remote executor,
    first reuse a fit an earlier attempt of this unit recorded)."""
    params, paths, arch = job.params, job.paths, job.arch
    ctx = worker_context(params, paths)
    check_writable(paths.model_dir(arch).parent, paths.test_report(arch).parent)
    spec = model_spec(params, paths, arch)
    phash = params_hash(ctx, arch)
    zero = is_global_zero()
    remote = params.study.executor != "local"
    if remote and (earlier := reusable(ctx, arch)) is not None:
        return earlier
    if remote and (found := recorded_fit(ctx, arch, phash)):
        log.info("train %s: reusing run %s, which recorded it (an earlier attempt)", arch, found[0])
        return found[1] if zero else {}
    tags = ctx.tags(STAGE, arch, phash)
    with tracked_run(run_name=f"train-{arch}", tags=tags) if zero else contextlib.nullcontext() as run:
        run_id = run.info.run_id if run else None
        if run_id:
            log_params(run_id, run_params(params, spec))
            ctx.log_dataset(run_id)
        trained = fit_final(ctx, spec, phash, [EpochMetricsLogger(run_id)] if run_id else [])
        if not zero:
            return {}
        with timed("evaluate"):  # the one look at the test set
            summary = test_summary(ctx, trained, run_id)
        with timed("export"):
            save_model(ctx, trained, summary)
        log_results(run_id, summary, trained.result.history, arch)
        write_reports(ctx, arch, summary, trained.predicted_classes())
        if remote:
            with timed("logging"):
                log_outputs(run_id, paths, arch)
    mlflow.flush_async_logging()
    log.info(
        "train %s: test accuracy %.4f f1_macro %.4f (%d params, %d epochs, %.1fs, %.3f ms/sample on CPU)",
        arch,
        summary["accuracy"],
        summary["f1_macro"],
        summary["n_params"],
        summary["epochs"],
        summary["train_seconds"],
        summary["latency_ms_per_sample"],
    )
    return summary


def fit_final(ctx: StageContext, spec: ModelSpec, phash: str, callbacks: list) -> Trained:
    params = ctx.params
    split = ctx.data.holdout(params.data.val_size, params.seed)
    with timed("fit"):
        result = fit(spec, split, ctx.data.dataset.class_names, params.trainer, params.seed, callbacks=callbacks)
    net = copy.deepcopy(result.module.model).cpu().eval()
    temperature = 1.0
    if spec.train.calibration == "temperature":
        temperature = fit_temperature(logits_of(net, split.val.X), split.val.y)
    return Trained(
        spec,
        phash,
        split,
        ctx.data.test(split.normalizer),
        result,
        net,
        temperature,
        operating_point(ctx, spec.arch),
    )


def test_summary(ctx: StageContext, trained: Trained, run_id: str | None) -> dict[str, Any]:
    """reports/test/<arch>.json: identity, test metrics (under the operating point), calibration, size, speed, the
    run and (later) the logged model."""
    result = trained.result
    probs, y = trained.test_probs(), trained.test.y.numpy()
    if trained.decision.threshold is not None:  # the deployed decision, not the argmax, is what the test reports
        report = report_from_predictions(y, trained.predicted_classes(), result.module.class_names)
    else:
        report = logits_report(trained.test_logits, trained.test.y, result.module.class_names)
    return {
        **identity(ctx, trained),
        "n_train": len(trained.split.train),
        "n_val": len(trained.split.val),
        "n_test": len(trained.test),
        **{m: report[m] for m in SCALAR_METRICS},
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "class_names": report["class_names"],
        "operating_point": trained.decision.to_dict(),
        "temperature": trained.temperature,
        "ece": expected_calibration_error(probs, y),
        "ece_uncalibrated": expected_calibration_error(calibrated_probs(trained.test_logits), y),
        "train_seconds": result.seconds,
        "epochs": result.epochs,
        **cpu_latency(trained.net, trained.test.X),
        "val": result.val,
        "mlflow_run_id": run_id,
        "model_uri": None,
        "model_id": None,
    }


def identity(ctx: StageContext, trained: Trained) -> dict[str, Any]:
    """What identifies a final model; shared by its test report and its params.json."""
    return {
        "architecture": trained.spec.arch,
        "params_hash": trained.phash,
        "dataset": ctx.params.data.name,
        "dataset_hash": ctx.dataset_hash,
        "git_commit": ctx.commit,
        "n_params": int(sum(p.numel() for p in trained.net.parameters())),
        "best_epoch": trained.result.best_epoch,
    }


def save_model(ctx: StageContext, trained: Trained, summary: dict) -> None:
    """models/<arch>/ (state_dict, exported program, params.json), and the logged MLflow model."""
    ds, arch = ctx.data.dataset, trained.spec.arch
    norm = trained.split.normalizer
    raw_test = ctx.data.raw(trained.test.idx, norm)  # text: the token ids of the model's own tokenizer
    input_shape = tuple(raw_test.shape[1:])
    meta = {
        **identity(ctx, trained),
        "model": trained.spec.model.model_dump(mode="json"),
        "train": trained.spec.train.model_dump(mode="json"),
        "class_names": list(ds.class_names),
        "kind": ds.kind,
        "input_shape": list(input_shape),
        "normalizer": {"mean": norm.mean.tolist(), "std": norm.std.tolist()},
        "seed": ctx.params.seed,
        "val_size": ctx.params.data.val_size,
        "temperature": trained.temperature,
        "operating_point": trained.decision.to_dict(),
        "torch_version": torch.__version__,
    }
    with atomic_dir(ctx.paths.model_dir(arch)) as out:
        torch.save(trained.net.state_dict(), out / "model.pt")
        program = out / model_logging.PROGRAM_FILE
        model_logging.export_program(trained.net, norm, raw_test[:4], program, trained.temperature, check=raw_test)
        write_json(out / "params.json", meta)
        if ctx.params.mlflow.log_models:
            kept = kept_epoch(trained.result.best_epoch, trained.result.epochs)
            mlflow.set_tags(kept)  # the train run: which epoch's weights its model holds
            info = model_logging.log_classifier(
                program,
                list(ds.class_names),
                input_shape,
                example_inputs(ctx, trained.split.train.idx[:5]),
                name=arch,
                step=trained.result.best_epoch or 0,
                decision=trained.decision.to_dict(),
                params={"architecture": arch, "params_hash": trained.phash, **kept},
                tags={
                    "architecture": arch,
                    "dataset": ctx.params.data.name,
                    "experiment": ctx.params.experiment_name,
                    **kept,
                },
                feature_names=ds.feature_names,
                text=None if ds.text is None else (ds.text.column, norm.text),
            )
            summary["model_uri"], summary["model_id"] = info.model_uri, info.model_id


def example_inputs(ctx: StageContext, idx: np.ndarray) -> np.ndarray:
    """What a logged model's input example holds: the raw inputs of rows `idx` (for text, the raw text)."""
    text = ctx.data.dataset.text
    return np.asarray(text.take(idx), dtype=object) if text is not None else ctx.data.raw(idx).numpy()


def kept_epoch(best_epoch: int | None, epochs: int) -> dict[str, str]:
    """Which epoch's weights a final model keeps (early stopping's best): counted from 1, and as the step of the
    run's per-epoch metrics (from 0), out of the epochs trained."""
    step = best_epoch or 0
    return {"kept_epoch": str(step + 1), "kept_step": str(step), "epochs_trained": str(epochs)}


def write_reports(ctx: StageContext, arch: str, summary: dict, predicted: np.ndarray) -> None:
    names = np.asarray(ctx.data.dataset.class_names, dtype=object)
    actual = ctx.data.dataset.y[torch.from_numpy(ctx.data.splits.test_idx)].numpy()
    frame = pd.DataFrame({"actual": names[actual], "predicted": names[predicted]})
    write_text(ctx.paths.test_predictions(arch), frame.to_csv(index=False))
    write_json(ctx.paths.test_report(arch), summary)


def cpu_latency(net: nn.Module, X: torch.Tensor, samples: int = LATENCY_SAMPLES) -> dict[str, float]:
    """Inference time on CPU: median over single-sample calls, and per sample in one batch of (at most EVAL_BATCH)
    test samples, the batch the study evaluates with."""
    net = net.cpu().eval()
    X = X[:EVAL_BATCH].cpu()
    n = min(samples, len(X))
    with torch.inference_mode():
        for i in range(min(5, n)):  # warm-up
            net(X[i : i + 1])
        single = []
        for i in range(n):
            start = time.perf_counter()
            net(X[i : i + 1])
            single.append(time.perf_counter() - start)
        net(X)  # warm-up for the batch shape
        batch = []
        for _ in range(3):
            start = time.perf_counter()
            net(X)
            batch.append(time.perf_counter() - start)
    return {
        "latency_ms_per_sample": 1000 * statistics.median(single) if single else 0.0,
        "batch_ms_per_sample": 1000 * min(batch) / max(1, len(X)),
        "latency_threads": torch.get_num_threads(),
    }


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def log_results(run_id: str, summary: dict, history: list[dict], arch: str) -> None:
    metrics = {f"test_{m}": summary[m] for m in SCALAR_METRICS}
    for name, per in summary["per_class"].items():
        metrics |= {f"test_{m}_class_{_metric_safe(name)}": v for m, v in per.items()}
    extra = {
        k: summary[k]
        for k in (
            "n_params",
            "train_seconds",
            "epochs",
            "latency_ms_per_sample",
            "batch_ms_per_sample",
            "ece",
            "temperature",
        )
    }
    log_metrics(run_id, {**metrics, **extra})
    if summary["model_id"]:  # the model page shows its test metrics beside the kept epoch's (linked at log time)
        mlflow.log_metrics(
            {f"test_{m}": summary[m] for m in SCALAR_METRICS}, run_id=run_id, model_id=summary["model_id"]
        )
    with timed("figures"):
        fig = plots.confusion_matrix_figure(
            summary["confusion_matrix"], summary["class_names"], f"{arch}: test set confusion"
        )
        mlflow.log_figure(fig, "plots/confusion_matrix.png")
        plots.close(fig)
        if history:
            fig = plots.learning_curves_figure(history, f"train {arch}")
            mlflow.log_figure(fig, "plots/learning_curves.png")
            plots.close(fig)
    with timed("logging"):
        mlflow.log_dict(summary, "test_report.json")


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    """Train `arch` in this process (or reuse an identical earlier fit); returns the test report."""
    ctx = worker_context(params, paths)
    ctx.close_orphans(STAGE)
    return reusable(ctx, arch) or train_unit(TrainJob(params, paths, arch))
