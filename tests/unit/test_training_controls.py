"""Overfitting controls and optimisation options of the training core, each shown to act.

Every control is compared with a control-free twin trained with the same seed (same init, same batches), so a
difference can only come from the control. Models are small MLPs on digits: a few CPU seconds per fit.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.training import CPU, NO_EARLY_STOP, SEED, Problem, problem, spec, train, weight_matrices, weights
from lightning.pytorch.callbacks import Callback

from dlpipe.config import TrainParams, parse_params
from dlpipe.errors import ConfigError
from dlpipe.training.augmentation import BatchAugment, build_augmentation
from dlpipe.training.fit import evaluate, predict_proba
from dlpipe.training.metrics import BatchMean
from dlpipe.training.module import Classifier, make_optimizer, penalised_weights

SMALL_MLP = {"hidden": [64], "dropout": 0.0}
CHANCE = 0.1


@pytest.fixture(scope="module")
def digits() -> Problem:
    return problem("digits")


def l1_norm(module: torch.nn.Module) -> float:
    return float(sum(w.abs().sum() for w in weight_matrices(module)))


def l2_norm(module: torch.nn.Module) -> float:
    return float(sum(w.pow(2).sum() for w in weight_matrices(module)).sqrt())


def near_zero_fraction(module: torch.nn.Module, tol: float = 1e-3) -> float:
    ws = weight_matrices(module)
    return float(sum((w.abs() < tol).sum() for w in ws) / sum(w.numel() for w in ws))


def test_reported_validation_metrics_match_a_direct_computation(digits, unregularised):
    """FitResult.val is the kept model re-validated: loss and accuracy equal a direct computation on split.val."""
    val = digits.split.val
    probs = predict_proba(unregularised.module, val.X)
    assert unregularised.val["val_accuracy"] == pytest.approx((probs.argmax(1) == val.y).float().mean().item())
    assert unregularised.val["val_loss"] == pytest.approx(F.nll_loss(probs.log(), val.y).item(), rel=1e-5)
    per_epoch = [row["val_loss"] for row in unregularised.history]
    assert len(set(per_epoch)) == len(per_epoch)  # a fresh mean every epoch (the running states are reset)
    assert unregularised.val["val_loss"] == pytest.approx(per_epoch[unregularised.best_epoch], rel=1e-5)


def test_batch_mean_weights_batches_by_size_and_keeps_nan():
    mean = BatchMean()
    mean.update(torch.tensor(1.0), 3)
    mean.update(torch.tensor(3.0), 1)
    assert mean.compute().item() == pytest.approx(1.5)
    mean.reset()
    mean.update(torch.tensor(float("nan")), 3)  # a diverged model must not look finite
    mean.update(torch.tensor(3.0), 1)
    assert math.isnan(mean.compute().item())


# --- L1 / L2 ---


def test_penalty_is_l1_plus_l2_over_weight_matrices_only():
    module = spec("mlp", SMALL_MLP, l1=0.01, l2=0.1).build((1, 8, 8), 10, None)
    ws = penalised_weights(module.model)
    assert [tuple(w.shape) for w in ws] == [(64, 64), (10, 64)]  # no biases
    expected = 0.01 * sum(w.abs().sum() for w in ws) + 0.1 * sum(w.pow(2).sum() for w in ws)
    assert torch.allclose(module.penalty(), expected)
    assert spec("mlp", SMALL_MLP).build((1, 8, 8), 10, None).penalty().item() == 0.0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_loss_is_cross_entropy_plus_penalty():
    module = spec("mlp", SMALL_MLP, l1=0.01, l2=0.1).build((1, 8, 8), 10, None)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    loss = module.training_step((x, y), 0)
    assert torch.allclose(loss, F.cross_entropy(module(x), y) + module.penalty())


@pytest.fixture(scope="module")
def unregularised(digits):
    return train("mlp", digits, SMALL_MLP, max_epochs=5, lr=3e-3, **NO_EARLY_STOP)


def test_l1_drives_weights_toward_zero(digits, unregularised):
    with_l1 = train("mlp", digits, SMALL_MLP, max_epochs=5, lr=3e-3, l1=2e-3, **NO_EARLY_STOP)
    assert l1_norm(with_l1.module) < 0.85 * l1_norm(unregularised.module)
    assert near_zero_fraction(with_l1.module) > 3 * near_zero_fraction(unregularised.module)
    assert with_l1.val["val_accuracy"] > 0.8  # regularised, not destroyed


def test_l2_shrinks_the_weight_norm(digits, unregularised):
    with_l2 = train("mlp", digits, SMALL_MLP, max_epochs=5, lr=3e-3, l2=1e-2, **NO_EARLY_STOP)
    assert l2_norm(with_l2.module) < 0.85 * l2_norm(unregularised.module)
    assert with_l2.val["val_accuracy"] > 0.8


# --- dropout ---

DROPOUT_ARCHS = {
    "mlp": {"hidden": [64], "dropout": 0.5},
    "wide_deep": {"hidden": [64], "dropout": 0.5},
    "cnn": {"channels": [8], "hidden": [32], "dropout": 0.5},
    "rnn": {"hidden_size": 16, "dropout": 0.5},
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32, "dropout": 0.5},
    "resnet": {"dropout": 0.5},
}


@pytest.mark.parametrize("arch", sorted(DROPOUT_ARCHS))
def test_dropout_is_active_in_train_mode_and_off_in_eval(arch):
    torch.manual_seed(SEED)
    x = torch.randn(8, 1, 8, 8)
    module = spec(arch, DROPOUT_ARCHS[arch]).build((1, 8, 8), 10, None)
    module.train()
    with torch.no_grad():
        assert not torch.equal(module(x), module(x))
        module.eval()
        assert torch.equal(module(x), module(x))
    # the twin without dropout is deterministic in train mode too: the difference above is dropout's
    twin = spec(arch, {**DROPOUT_ARCHS[arch], "dropout": 0.0}).build((1, 8, 8), 10, None)
    twin.train()
    with torch.no_grad():
        assert torch.equal(twin(x), twin(x))


# --- early stopping ---


@pytest.mark.parametrize(("monitor", "patience"), [("val_loss", 1), ("val_loss", 3), ("val_accuracy", 2)])
def test_early_stopping_stops_when_the_monitor_stalls(digits, monitor, patience):
    # lr so tiny that no epoch improves the monitor by min_delta: the first epoch sets the best, `patience` more wait
    stalled = {"monitor": monitor, "patience": patience, "min_delta": 0.5}
    result = train("mlp", digits, SMALL_MLP, max_epochs=10, lr=1e-9, early_stopping=stalled)
    assert result.epochs == patience + 1 < 10
    control = train(
        "mlp", digits, SMALL_MLP, max_epochs=patience + 3, lr=1e-9, early_stopping={**stalled, "enabled": False}
    )
    assert control.epochs == patience + 3


def test_early_stopping_keeps_training_while_the_monitor_improves(digits):
    result = train("mlp", digits, SMALL_MLP, max_epochs=4, lr=3e-3, early_stopping={"patience": 1})
    assert result.epochs == 4
    losses = [row["val_loss"] for row in result.history]
    assert losses == sorted(losses, reverse=True)  # the improvement that kept it going
    assert result.best_epoch == 3


# --- gradient clipping ---


class GradNorms(Callback):
    """Total gradient norm (and largest |g|) before clipping (on_before_optimizer_step: Lightning clips after this
    hook) and after it (on_train_batch_end: the stepped, clipped gradients are still in .grad)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []
        self.after_max_abs: list[float] = []

    @staticmethod
    def grads(module: L.LightningModule) -> list[torch.Tensor]:
        return [p.grad.detach() for p in module.parameters() if p.grad is not None]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in self.grads(pl_module)]))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = self.grads(pl_module)
        self.after.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.after_max_abs.append(max(float(g.abs().max()) for g in grads))


def clipped_run(prob: Problem, **train_overrides) -> GradNorms:
    norms = GradNorms()
    train("mlp", prob, SMALL_MLP, max_epochs=1, lr=3e-3, callbacks=[norms], **NO_EARLY_STOP, **train_overrides)
    assert len(norms.before) == len(norms.after) == math.ceil(len(prob.split.train) / 64)
    return norms


def test_gradient_clipping_by_norm_bounds_the_total_norm(digits):
    clip = 0.1
    free = clipped_run(digits)
    assert max(free.after) > 5 * clip  # without clipping, gradients are far larger than the bound
    assert free.after == pytest.approx(free.before)  # and nothing touches them between hook and step
    clipped = clipped_run(digits, gradient_clip_val=clip)
    assert max(clipped.after) <= clip + 1e-5
    assert max(clipped.before) > 5 * clip  # the raw gradients did exceed the bound: clipping acted
    assert min(clipped.after) > clip / 2  # scaled to the bound, not zeroed


def test_gradient_clipping_by_value_bounds_each_component(digits):
    clip = 0.01
    free = clipped_run(digits)
    assert max(free.after_max_abs) > 5 * clip
    clipped = clipped_run(digits, gradient_clip_val=clip, gradient_clip_algorithm="value")
    assert max(clipped.after_max_abs) <= clip + 1e-7


# --- augmentation ---


class InputSpy(Callback):
    """Pairs each raw batch from the loader with the tensor the network's forward actually received."""

    def __init__(self) -> None:
        self.raw: list[tuple[str, torch.Tensor]] = []
        self.pairs: list[tuple[str, torch.Tensor, torch.Tensor, bool]] = []  # stage, raw, seen, training flag
        self.handle = None

    def attach(self, module: Classifier) -> None:
        def hook(net, args):
            stage, raw = self.raw[-1]
            self.pairs.append((stage, raw, args[0].detach().clone(), net.training))

        self.handle = module.model.register_forward_pre_hook(hook)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.attach(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.raw.append(("train", batch[0].clone()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.raw.append(("val", batch[0].clone()))

    def stage(self, name: str) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        return [(raw, seen, training) for stage, raw, seen, training in self.pairs if stage == name]


AUGMENT = {"enabled": True, "rotation": 20.0, "translate": 0.15, "crop_padding": 1}


def test_augmentation_changes_training_inputs_and_never_validation_inputs(digits):
    spy = InputSpy()
    result = train("mlp", digits, SMALL_MLP, max_epochs=2, callbacks=[spy], augmentation=AUGMENT, **NO_EARLY_STOP)
    train_pairs, val_pairs = spy.stage("train"), spy.stage("val")
    assert len(train_pairs) == 2 * math.ceil(len(digits.split.train) / 64)
    assert len(val_pairs) >= 2  # every epoch's validation
    for raw, seen, training in train_pairs:
        assert training and seen.shape == raw.shape
        changed = (seen != raw).flatten(1).any(dim=1).float().mean()
        assert changed > 0.9  # (almost) every sample transformed
    for raw, seen, training in val_pairs:
        assert not training and torch.equal(seen, raw)
    # the held-out evaluation is never augmented either
    test_spy = InputSpy()
    test_spy.attach(result.module)
    test_spy.raw.append(("test", digits.test.X))
    evaluate(result.module, digits.test, CPU)
    seen = torch.cat([seen for _, seen, _ in test_spy.stage("test")])  # the test batches, in order
    assert torch.equal(seen, digits.test.X)


def test_without_augmentation_training_inputs_are_the_raw_batches(digits):
    spy = InputSpy()
    train(
        "mlp",
        digits,
        SMALL_MLP,
        max_epochs=1,
        callbacks=[spy],
        augmentation={**AUGMENT, "enabled": False},
        **NO_EARLY_STOP,
    )
    assert spy.stage("train") and all(torch.equal(raw, seen) for raw, seen, _ in spy.stage("train"))


def test_augmentation_draws_fresh_randomness_per_sample():
    aug = build_augmentation(TrainParams.model_validate({"augmentation": AUGMENT}).augmentation, (1, 8, 8))
    assert isinstance(aug, BatchAugment)
    torch.manual_seed(0)
    image = torch.rand(1, 1, 8, 8)
    out = aug(image.repeat(16, 1, 1, 1))
    assert out.shape == (16, 1, 8, 8)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 12  # one image, many different views


@pytest.mark.parametrize(
    ("params", "input_shape"),
    [
        ({"enabled": False, "rotation": 10.0}, (1, 8, 8)),
        ({"enabled": True}, (1, 8, 8)),
        ({"enabled": True, "rotation": 10.0}, (30,)),
    ],
)
def test_augmentation_is_off_when_disabled_empty_or_not_images(params, input_shape):
    assert build_augmentation(TrainParams.model_validate({"augmentation": params}).augmentation, input_shape) is None


# --- kinds: rejected before training ---


def test_architecture_that_cannot_take_the_dataset_kind_is_rejected_at_validation():
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"name": "breast_cancer"}, "architectures": ["mlp", "cnn"]})
    message = str(err.value)
    assert "architectures.1: 'cnn' takes image input but dataset 'breast_cancer' is tabular" in message
    assert "allowed for tabular: perceptron, mlp, wide_deep" in message
    assert "architectures.0" not in message  # mlp takes tabular data
    with pytest.raises(ConfigError, match=r"architectures\.0: 'cnn'"):
        parse_params({"data": {"name": "breast_cancer"}, "architectures": ["cnn"]})
    parse_params({"data": {"name": "digits"}, "architectures": ["cnn", "mlp"]})  # images suit both


# --- optimizers ---

OPTIMIZERS = {  # name: (lr that learns in two epochs, expected torch class)
    "sgd": (0.1, torch.optim.SGD),
    "momentum": (0.05, torch.optim.SGD),
    "adagrad": (0.02, torch.optim.Adagrad),
    "rmsprop": (1e-3, torch.optim.RMSprop),
    "adam": (3e-3, torch.optim.Adam),
    "adamw": (3e-3, torch.optim.AdamW),
}


class InitialWeights(Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        self.weights = weights(pl_module)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains(digits, name):
    lr, cls = OPTIMIZERS[name]
    params = {"optimizer": name, "lr": lr, "nesterov": name == "momentum", "weight_decay": 1e-4}
    optimizer = spec("mlp", SMALL_MLP, **params).build((1, 8, 8), 10, None).configure_optimizers()
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == lr and group["weight_decay"] == 1e-4
    if name == "momentum":
        assert group["momentum"] == 0.9 and group["nesterov"] is True
    if name == "sgd":
        assert group["momentum"] == 0
    init = InitialWeights()
    result = train("mlp", digits, SMALL_MLP, max_epochs=2, callbacks=[init], **params, **NO_EARLY_STOP)
    after = weights(result.module)
    assert all(not torch.equal(after[k], init.weights[k]) for k in after)  # every tensor moved
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert result.val["val_accuracy"] > 5 * CHANCE


def test_adamw_weight_decay_is_decoupled_from_the_gradient():
    """With a zero gradient, AdamW shrinks weights by exactly lr * wd; Adam's L2-style decay goes through the
    adaptive scaling instead (a step of about lr in the sign direction)."""
    lr, wd = 0.01, 0.1
    w0 = torch.tensor([2.0, -0.5, 0.25])
    stepped = {}
    for name in ("adamw", "adam"):
        w = torch.nn.Parameter(w0.clone())
        opt = make_optimizer(TrainParams(optimizer=name, lr=lr, weight_decay=wd), [w])
        w.grad = torch.zeros_like(w)
        opt.step()
        stepped[name] = w.detach()
    assert torch.allclose(stepped["adamw"], w0 * (1 - lr * wd))
    assert torch.allclose(stepped["adam"], w0 - lr * w0.sign(), atol=1e-6)


# --- schedulers ---


class LrRecorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.steps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "plateau", "onecycle"])
def test_every_scheduler_runs_and_sets_the_lr(digits, scheduler):
    lr, epochs = 4e-3, 3
    lrs, init = LrRecorder(), InitialWeights()
    result = train(
        "mlp",
        digits,
        SMALL_MLP,
        max_epochs=epochs,
        callbacks=[lrs, init],
        lr=lr,
        scheduler=scheduler,
        step_size=1,
        gamma=0.5,
        **NO_EARLY_STOP,
    )
    assert result.epochs == epochs
    after = weights(result.module)
    assert all(not torch.equal(after[k], init.weights[k]) for k in after)
    assert result.val["val_accuracy"] > 5 * CHANCE
    if scheduler in ("none", "plateau"):  # plateau: the loss keeps improving, so the lr stays
        assert lrs.epochs == [lr] * epochs
    elif scheduler == "step":
        assert lrs.epochs == pytest.approx([lr, lr / 2, lr / 4])
    elif scheduler == "cosine":  # T_max = max_epochs
        assert lrs.epochs == pytest.approx([lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)])
    else:  # onecycle: stepped every batch, warming up from lr/25 to lr, then annealing far below it
        steps = lrs.steps
        assert len(steps) == epochs * math.ceil(len(digits.split.train) / 64)
        assert steps[0] == pytest.approx(lr / 25)
        peak = steps.index(max(steps))
        assert max(steps) == pytest.approx(lr, rel=0.01) and 0.2 < peak / len(steps) < 0.4
        assert steps[-1] < lr / 100


def test_plateau_scheduler_cuts_the_lr_when_val_loss_stalls(digits):
    lrs = LrRecorder()
    # SGD at 1e-6 leaves val_loss within ReduceLROnPlateau's 1e-4 relative threshold, yet the lr is large enough
    # for the cut to exceed the scheduler's eps (1e-8): smaller cuts are silently skipped
    lr = 1e-6
    train(
        "mlp",
        digits,
        SMALL_MLP,
        max_epochs=5,
        callbacks=[lrs],
        optimizer="sgd",
        lr=lr,
        scheduler="plateau",
        gamma=0.5,
        **NO_EARLY_STOP,
    )
    # epoch 0 sets the best; epochs 1-3 are bad; after the third (> patience 2) the lr is halved
    assert lrs.epochs == pytest.approx([lr, lr, lr, lr, lr / 2])
