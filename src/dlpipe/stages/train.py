"""train@<arch>: the final model. Retrain with the tuned params, evaluate once on the held-out test set, save it.

Normalisation: the model trains on the training part minus a stratified validation slice (`data.val_size`, for
early stopping and keeping the best epoch). Its normaliser is fitted on exactly those training samples (what
`PreparedData.holdout` does), and the same normaliser transforms the validation slice, the test set and, inside the
exported model, every input at serving time. `PreparedData.train_test()` would normalise the test set with the
statistics of the whole training part (validation slice included), which the network never trained on; it is not
used here, so train, validation, test and serving all see one consistent transform.

Outputs:
- `models/<arch>/` (written into a temporary directory, then renamed): `model.pt` (the network's state_dict),
  `model.pt2` (torch.export program: raw input -> probabilities, normaliser included) and `params.json` (arch,
  model and train params, class names, input shape, normaliser mean/std, dataset and params hashes).
- `reports/test/<arch>.json`: test metrics (scalar, per class, confusion matrix), parameter count, training time,
  CPU inference latency, the MLflow run and logged model; `reports/test/<arch>.predictions.csv`: actual,predicted.
- MLflow: a `train-<arch>` run with params, per-epoch metrics, `test_*` metrics, figures and the model (pyfunc).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from dlpipe.config import Params, flatten
from dlpipe.data.prepared import Part, PreparedData
from dlpipe.data.splits import carve_validation
from dlpipe.evaluation import plots
from dlpipe.io import write_json, write_text
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext, model_spec
from dlpipe.tracking import model_logging
from dlpipe.tracking.runs import EpochMetricsLogger, is_global_zero, log_metrics, log_params, set_tags, tracked_run
from dlpipe.training.fit import evaluate, fit
from dlpipe.training.metrics import SCALAR_METRICS

log = logging.getLogger(__name__)
LATENCY_SAMPLES = 100


def report_path(paths: ProjectPaths, arch: str) -> Path:
    return paths.reports / "test" / f"{arch}.json"


def predictions_path(paths: ProjectPaths, arch: str) -> Path:
    return paths.reports / "test" / f"{arch}.predictions.csv"


def model_dir(paths: ProjectPaths, arch: str) -> Path:
    return paths.models / arch


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    ctx = StageContext.load(params, paths)
    spec = model_spec(params, paths, arch)
    phash = ctx.spec_hash(spec, "train", val_size=params.data.val_size)
    tags = ctx.tags("train", arch, phash)
    zero = is_global_zero()
    data = ctx.data
    ds = data.dataset
    split = data.holdout(params.data.val_size, params.seed)
    norm = split.normalizer
    test_idx = torch.from_numpy(data.splits.test_idx)
    raw_test = ds.X[test_idx]
    test = Part(norm(raw_test), ds.y[test_idx])

    with tracked_run(run_name=f"train-{arch}") if zero else contextlib.nullcontext() as run_:
        run_id = run_.info.run_id if run_ else None
        callbacks = []
        if zero:
            set_tags(run_id, tags)
            log_params(run_id, flatten({"arch": arch, "model": spec.model, "train": spec.train, "data": params.data,
                                        "seed": params.seed, "trainer": params.trainer}))  # fmt: skip
            ctx.log_dataset()
            callbacks.append(EpochMetricsLogger(run_id))
        result = fit(spec, split, ds.class_names, params.trainer, params.seed, callbacks=callbacks)
        report = evaluate(result.module, test, params.trainer)  # the one look at the test set
        if not zero:
            return {}
        net = copy.deepcopy(result.module.model).cpu().eval()
        n_params = sum(p.numel() for p in net.parameters())
        latency = cpu_latency(net, test.X)
        with torch.no_grad():
            predicted = net(test.X).argmax(dim=1).numpy()
        summary = {
            "architecture": arch,
            "params_hash": phash,
            "dataset": params.data.name,
            "dataset_hash": ctx.dataset_hash,
            "git_commit": ctx.commit,
            "n_train": len(split.train),
            "n_val": len(split.val),
            "n_test": len(test),
            **{m: report[m] for m in SCALAR_METRICS},
            "per_class": report["per_class"],
            "confusion_matrix": report["confusion_matrix"],
            "class_names": report["class_names"],
            "n_params": int(n_params),
            "train_seconds": result.seconds,
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            **latency,
            "val": result.val,
            "mlflow_run_id": run_id,
            "model_uri": None,
            "model_id": None,
        }
        meta = {
            "architecture": arch,
            "model": spec.model.model_dump(mode="json"),
            "train": spec.train.model_dump(mode="json"),
            "class_names": list(ds.class_names),
            "kind": ds.kind,
            "input_shape": list(ds.input_shape),
            "normalizer": {"mean": norm.mean.tolist(), "std": norm.std.tolist()},
            "dataset": params.data.name,
            "dataset_hash": ctx.dataset_hash,
            "params_hash": phash,
            "seed": params.seed,
            "val_size": params.data.val_size,
            "n_params": int(n_params),
            "best_epoch": result.best_epoch,
            "torch_version": torch.__version__,
        }
        with atomic_dir(model_dir(paths, arch)) as out:
            torch.save(net.state_dict(), out / "model.pt")
            model_logging.export_program(net, norm, raw_test[:4], out / model_logging.PROGRAM_FILE)
            _check_exported(out / model_logging.PROGRAM_FILE, raw_test, predicted)
            write_json(out / "params.json", meta)
            if params.mlflow.log_models:
                info = model_logging.log_classifier(
                    out / model_logging.PROGRAM_FILE, list(ds.class_names), ds.input_shape,
                    ds.X[torch.from_numpy(split_train_indices(data, params))[:5]].numpy(),
                    params={"architecture": arch, "params_hash": phash}, tags={"architecture": arch},
                )  # fmt: skip
                summary["model_uri"], summary["model_id"] = info.model_uri, info.model_id
        _log_results(run_id, summary, result.history, arch)

    write_json(report_path(paths, arch), summary)
    names = np.asarray(ds.class_names, dtype=object)
    frame = pd.DataFrame({"actual": names[test.y.numpy()], "predicted": names[predicted]})
    write_text(predictions_path(paths, arch), frame.to_csv(index=False))
    mlflow.flush_async_logging()
    log.info("train %s: test accuracy %.4f f1_macro %.4f (%d params, %d epochs, %.1fs, %.3f ms/sample on CPU)",
             arch, summary["accuracy"], summary["f1_macro"], n_params, result.epochs, result.seconds,
             summary["latency_ms_per_sample"])  # fmt: skip
    return summary


def split_train_indices(data: PreparedData, params: Params) -> np.ndarray:
    """Indices of the samples the final model trains on (for the logged input example: raw training samples)."""
    train, _ = carve_validation(data.y_numpy, data.splits.train_idx, params.data.val_size, params.seed)
    return train


def _check_exported(path: Path, raw: torch.Tensor, predicted: np.ndarray) -> None:
    """The exported program (raw input, normaliser inside) predicts what the evaluated network predicted."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        exported = program(raw).argmax(dim=1).numpy()
    disagree = int((exported != predicted).sum())
    if disagree:
        log.warning("exported model disagrees with the trained network on %d of %d test samples", disagree,
                    len(predicted))  # fmt: skip


def cpu_latency(net: nn.Module, X: torch.Tensor, samples: int = LATENCY_SAMPLES) -> dict[str, float]:
    """Inference time on CPU: median over single-sample calls, and per sample in one batch of the test set."""
    net = net.cpu().eval()
    X = X.cpu()
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


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `dest`; it replaces `dest` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def _log_results(run_id: str, summary: dict, history: list[dict], arch: str) -> None:
    metrics = {f"test_{m}": summary[m] for m in SCALAR_METRICS}
    for name, per in summary["per_class"].items():
        metrics |= {f"test_{m}_class_{_metric_safe(name)}": v for m, v in per.items()}
    extra = {k: summary[k] for k in ("n_params", "train_seconds", "epochs", "latency_ms_per_sample",
                                     "batch_ms_per_sample")}  # fmt: skip
    log_metrics(run_id, {**metrics, **extra})
    if summary["model_id"]:
        mlflow.log_metrics({f"test_{m}": summary[m] for m in SCALAR_METRICS}, run_id=run_id,
                           model_id=summary["model_id"])  # fmt: skip
    fig = plots.confusion_matrix_figure(summary["confusion_matrix"], summary["class_names"],
                                        f"{arch}: test set confusion")  # fmt: skip
    mlflow.log_figure(fig, "plots/confusion_matrix.png")
    plots.close(fig)
    if history:
        fig = plots.learning_curves_figure(history, f"train {arch}")
        mlflow.log_figure(fig, "plots/learning_curves.png")
        plots.close(fig)
    mlflow.log_dict(summary, "test_report.json")
