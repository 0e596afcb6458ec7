"""The training core's contracts: the best epoch's weights kept in memory, reproducible fits, epoch metrics computed
once per epoch, metric values as clamped Python floats, one interrupt guard for every Trainer call, and no
process-wide thread setting behind the caller's back.

Models are small MLPs on digits: a second or two of CPU per fit.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.training import CPU, NO_EARLY_STOP, SEED, Problem, problem, spec, train, weights
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from dlpipe.config import TrainerParams
from dlpipe.interrupts import interrupted_exit, interrupts_kept
from dlpipe.metric_names import SCALAR_METRICS, metric_value
from dlpipe.training.batching import TensorLoader
from dlpipe.training.fit import evaluate, predict_proba
from dlpipe.training.metrics import report
from dlpipe.training.threads import apply_cpu_threads
from dlpipe.training.trainer import BestWeights, find_callback, make_trainer

SMALL_MLP = {"hidden": [64], "dropout": 0.0}


@pytest.fixture(scope="module")
def digits() -> Problem:
    return problem("digits")


# --- the best epoch, kept in memory ---


class EpochWeights(Callback):
    """The weights after each epoch's validation, and what the temporary directory held when training ended."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.tmp_at_end: list[str] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        self.states.append(weights(pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self.tmp_at_end = os.listdir(tempfile.gettempdir())


class SpoilLastEpoch(EpochWeights):
    """Also zeroes every weight after the last training step of the last epoch: its val_loss becomes ln 10."""

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.is_last_batch and trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.zero_()


def test_fit_ends_with_the_best_epochs_weights_without_a_file(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    spoil = SpoilLastEpoch()
    result = train("mlp", digits, SMALL_MLP, max_epochs=3, lr=3e-3, callbacks=[spoil], **NO_EARLY_STOP)
    losses = [row["val_loss"] for row in result.history]
    assert losses[-1] == pytest.approx(math.log(10), rel=1e-5)
    assert result.best_epoch == losses.index(min(losses)) < 2  # an earlier epoch, not the spoiled last one
    kept = weights(result.module)
    assert all(torch.equal(kept[k], spoil.states[result.best_epoch][k]) for k in kept)
    # FitResult.val is that epoch's validation, i.e. the kept weights' (no second validation pass)
    assert result.val == {k: v for k, v in result.history[result.best_epoch].items() if k.startswith("val_")}
    probs = predict_proba(result.module, digits.split.val.X)
    assert result.val["val_loss"] == pytest.approx(F.nll_loss(probs.log(), digits.split.val.y).item(), rel=1e-5)
    assert spoil.tmp_at_end == []  # no checkpoint file


class ScriptedMonitor(L.LightningModule):
    """A one-weight module whose every validation logs the next value of `script` as `val_loss`; training steps move
    the weight, so each epoch ends with different weights."""

    def __init__(self, script: list[float]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script = script

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0 - self.current_epoch).pow(2).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val_loss", torch.tensor(self.script[self.current_epoch]), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


SCRIPTS = {
    "improving": [0.9, 0.8, 0.7],
    "best first": [0.5, 0.6, 0.7],
    "tie is no improvement": [0.8, 0.5, 0.5, 0.6],
    "nan never improves": [0.8, float("nan"), 0.9, 0.7],
    "anything improves on nan": [float("nan"), 0.9, 1.0],
    "all nan": [float("nan"), float("nan")],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_best_weights_keeps_the_epoch_model_checkpoint_kept(name, tmp_path):
    """The in-memory best epoch is the one Lightning's ModelCheckpoint(save_top_k=1) chose from the same monitor."""
    script = SCRIPTS[name]
    loader = TensorLoader(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 2)
    kept = {}
    for keeper in ("checkpoint", "memory"):
        L.seed_everything(SEED, verbose=False)
        module = ScriptedMonitor(script)
        recorder = EpochWeights()
        if keeper == "checkpoint":
            keep: Callback = ModelCheckpoint(tmp_path / "ckpt", monitor="val_loss", mode="min", save_top_k=1)
        else:
            keep = BestWeights("val_loss", "min")
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=len(script),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            enable_checkpointing=keeper == "checkpoint",
            callbacks=[recorder, keep],
        )
        trainer.fit(module, loader, loader)
        if keeper == "checkpoint":
            kept[keeper] = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)["epoch"]
        else:
            best = find_callback(trainer, BestWeights)
            kept[keeper] = best.epoch
            assert torch.equal(module.w.detach(), recorder.states[best.epoch]["w"])
    assert kept["memory"] == kept["checkpoint"]


# --- reproducible ---


def test_the_same_seed_gives_the_same_weights_history_and_metrics(digits):
    runs = [train("mlp", digits, SMALL_MLP, max_epochs=3, lr=3e-3, early_stopping={"patience": 1}) for _ in range(2)]
    a, b = (weights(r.module) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history == runs[1].history
    assert runs[0].val == runs[1].val and runs[0].best_epoch == runs[1].best_epoch
    assert evaluate(runs[0].module, digits.test, CPU) == evaluate(runs[1].module, digits.test, CPU)


# --- epoch metrics ---


def test_history_holds_train_loss_accuracy_and_every_validation_metric_as_floats(digits):
    result = train("mlp", digits, SMALL_MLP, max_epochs=2, **NO_EARLY_STOP)
    expected = {"epoch", "train_loss", "train_accuracy", "val_loss", *(f"val_{m}" for m in SCALAR_METRICS)}
    for row in result.history:
        assert set(row) == expected
        assert all(type(v) is float for k, v in row.items() if k != "epoch")
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if k not in ("epoch", "train_loss", "val_loss"))


def test_epoch_train_metrics_cover_every_training_sample_of_the_epoch(digits):
    """With a learning rate too small to move the weights, the epoch's train accuracy and loss equal the initial
    model's on the whole training part: every batch counted once, weighted by its size (the last one is short)."""
    assert len(digits.split.train) % 64 != 0
    seen = {}

    class Initial(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["probs"] = predict_proba(pl_module, digits.split.train.X)
            pl_module.train()

    result = train(
        "mlp", digits, SMALL_MLP, max_epochs=1, optimizer="sgd", lr=1e-12, callbacks=[Initial()], **NO_EARLY_STOP
    )
    probs, y = seen["probs"], digits.split.train.y
    row = result.history[0]
    correct = int((probs.argmax(1) == y).sum())
    assert round(row["train_accuracy"] * len(y)) == correct  # float32 division: compare counts
    assert row["train_accuracy"] == pytest.approx(correct / len(y), abs=1e-7)
    assert row["train_loss"] == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-5)


# --- metric values ---


def test_metric_value_clamps_float32_rounding_above_one():
    rounded = torch.tensor(1.0000001, dtype=torch.float32)
    assert rounded.item() > 1.0  # the stored study value this guards against: 1.0000001192092896
    for name in ("f1_macro", "val_f1_macro", "test_accuracy", "train_accuracy", "f1", "recall_positive"):
        value = metric_value(name, rounded)
        assert value == 1.0 and type(value) is float
    assert metric_value("precision_weighted", torch.tensor(-1e-8)) == 0.0
    assert metric_value("val_accuracy", torch.tensor(0.25, dtype=torch.float32)) == 0.25


def test_metric_value_converts_losses_without_clamping():
    assert metric_value("val_loss", torch.tensor(2.5)) == 2.5
    assert math.isnan(metric_value("train_loss", torch.tensor(float("nan"))))
    assert metric_value("loss", torch.tensor(float("inf"))) == math.inf
    assert type(metric_value("val_loss", torch.tensor(0.5, dtype=torch.float64))) is float


def test_metric_value_rejects_a_range_metric_far_outside_its_range():
    with pytest.raises(ValueError, match=r"val_f1_macro = 1\.5 is outside \[0, 1\]"):
        metric_value("val_f1_macro", torch.tensor(1.5))
    assert math.isnan(metric_value("f1_macro", torch.tensor(float("nan"))))  # NaN is not clamped to a number


def test_report_values_are_clamped_python_floats():
    over = torch.tensor(1.0000001, dtype=torch.float32)
    scalars = {m: over for m in SCALAR_METRICS}
    detailed = {f"{m}_per_class": torch.stack([over, torch.tensor(0.5)]) for m in ("precision", "recall", "f1")}
    detailed["confusion_matrix"] = torch.tensor([[3, 0], [1, 2]])
    out = report(scalars, detailed, ["a", "b"])
    assert all(out[m] == 1.0 and type(out[m]) is float for m in SCALAR_METRICS)
    assert out["per_class"] == {
        "a": {"precision": 1.0, "recall": 1.0, "f1": 1.0},
        "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
    }
    assert out["confusion_matrix"] == [[3, 0], [1, 2]]


# --- interrupts: one guard for fit, validate and test ---


class InterruptAt(Callback):
    """Raises a real KeyboardInterrupt (what Ctrl-C, or dlpipe's SIGTERM handler, raises) at the first batch of
    `stage`; `exc` raises something else instead."""

    def __init__(self, stage: str, exc: BaseException | None = None):
        self.stage = stage
        self.exc = exc

    def _maybe_raise(self, stage: str) -> None:
        if stage == self.stage:
            raise self.exc if self.exc is not None else KeyboardInterrupt("interrupted in a callback")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_raise("fit")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe_raise("validate")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe_raise("test")


def run_trainer_call(stage: str, prob: Problem, callback: InterruptAt) -> None:
    """One Trainer call through dlpipe: `fit` and `evaluate` guard themselves; `validate` runs in the guard."""
    if stage == "fit":
        train("mlp", prob, SMALL_MLP, max_epochs=1, callbacks=[callback])
        return
    s = spec("mlp", SMALL_MLP)
    module = s.build(tuple(prob.split.train.X.shape[1:]), 10, prob.class_names)
    if stage == "test":
        evaluate(module, prob.test, CPU, callbacks=[callback])
        return
    trainer = make_trainer(CPU, s.train, callbacks=[callback])
    with interrupts_kept():
        trainer.validate(module, TensorLoader(prob.split.val.X, prob.split.val.y, 64), verbose=False)


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_an_interrupt_inside_a_trainer_call_surfaces_as_keyboard_interrupt(digits, keep_signal_handlers, stage):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt, match="interrupted in a callback") as err:
        run_trainer_call(stage, digits, InterruptAt(stage))
    assert interrupted_exit(err.value.__cause__)  # it went through Lightning's sys.exit(1) and back
    # Lightning left SIGINT ignored; the guard put the handler back, so a second Ctrl-C still interrupts
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("stage", ["fit", "test"])
def test_other_exits_and_errors_pass_the_guard_unchanged(digits, stage):
    with pytest.raises(SystemExit) as err:
        run_trainer_call(stage, digits, InterruptAt(stage, SystemExit(3)))
    assert err.value.code == 3
    with pytest.raises(RuntimeError, match="boom"):
        run_trainer_call(stage, digits, InterruptAt(stage, RuntimeError("boom")))


# --- no hidden process state ---


def test_make_trainer_leaves_torch_threads_alone_and_apply_cpu_threads_sets_them():
    before = torch.get_num_threads()
    try:
        make_trainer(TrainerParams(accelerator="cpu", cpu_threads=before + 1), spec("mlp").train)
        assert torch.get_num_threads() == before
        apply_cpu_threads(TrainerParams(cpu_threads=before + 1))
        assert torch.get_num_threads() == before + 1
        apply_cpu_threads(TrainerParams(cpu_threads=None))  # null: leave torch's setting
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_fit_restores_the_uninitialised_memory_fill_setting(digits):
    assert torch.utils.deterministic.fill_uninitialized_memory
    train("mlp", digits, SMALL_MLP, max_epochs=1, seed=SEED)
    assert torch.utils.deterministic.fill_uninitialized_memory
