"""Training overhead: dlpipe's `fit` beside plain PyTorch loops, measured in the same run.

For the MLP and the CNN of dlpipe's registry (default params) on MNIST-sized synthetic data (N x 1 x 28 x 28,
10 classes), one table compares five loops that train the same network from the same initial weights (same
seed) with the same optimizer (Adam, lr 1e-3) and batch size:

- `dlpipe`: `dlpipe.training.fit.fit` (Lightning Trainer, TensorLoader, torchmetrics), early stopping off, validating
  on a tiny split (512 samples) after each epoch, keeping the best epoch's weights, at its defaults (deterministic
  algorithms on; the plain loops leave them off);
- `tutorial`: `for xb, yb in DataLoader(TensorDataset(X, y), batch_size, shuffle=True)` with `loss.item()` each
  step, as tutorials write it; the shuffle's sampler gets a generator seeded like dlpipe's (see below);
- `plain-best`: the leanest loop found: each batch's rows of the epoch's permutation taken with `index_select`,
  `zero_grad(set_to_none)`, the loss accumulated on the tensor side (no per-step host sync);
- `plain-gather`: the same, but one gather of the whole epoch into a fresh tensor, then contiguous slices (the
  previous plain-best; here a fresh 63 MB tensor every epoch costs ~25 ms of first-touch page faults, and the gather
  `X[perm]` ~40 ms in all against ~5 ms for the per-batch `index_select`s: ~10% of a small MLP's epoch);
- `lightning-bare`: Lightning's own floor: a LightningModule whose `training_step` returns the loss and nothing else,
  on the same TensorLoader, in a Trainer with every optional feature off (no logger, checkpoint, progress bar,
  summary, validation) and dlpipe's deterministic setting: what any Lightning loop pays per step before dlpipe adds
  anything.

One row per model, the loops side by side: epoch seconds (mean over epochs, the fastest of --repeats interleaved runs;
dlpipe's from epoch start to epoch end, its tiny validation included), each loop's time relative to plain-best, and
the mean training loss of epoch 1 (plain-best's, with the largest relative difference of the other loops). Before
timing, each loop runs once untimed on a small slice (`warm_up`, and a tiny `fit`), so that no one-time cost of the
process (lazy initialisation, first-call caches) lands in a timed epoch. With --clock cpu the times are the
process's CPU seconds instead of wall seconds: steadier on a shared machine.

All loops run in one process, after `import lightning`: Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, and on a
machine without a GPU every Adam step then retries loading NVML (torch's CUDA graph-capture check, ~50 us a step).
That cost is in every loop alike, so it is part of the baseline here, not of dlpipe's overhead.

Correctness check (exit status 1 when it fails): all five loops start from identical weights and, in epoch 1, see
identical batches (the permutation `randperm(n, Generator().manual_seed(seed))` that dlpipe's TensorLoader draws for
epoch 0), so their epoch-1 mean losses may differ only by floating-point noise: LOSS_RTOL = 1e-3 relative (they agree
to ~1e-6 in practice). Comparing loops that shuffle independently would need a far looser bound: over six shuffles
of the 20000-sample runs, the epoch-1 loss varied with a relative standard deviation of 0.6% for the MLP but 7.4% for
the CNN (0.87-1.05), so a 5% tolerance would flake on the CNN and a safe one would catch almost nothing. Later epochs
differ by design (the DataLoader's sampler and TensorLoader draw their next permutations differently).

    python benchmarks/training_overhead.py --samples 20000 --threads 1   # 2 shared cores: see --threads, --clock
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.data.prepared import Part, TrainValSplit
from dlpipe.data.splits import Normalizer
from dlpipe.models import build_model, get_architecture
from dlpipe.training.batching import TensorLoader
from dlpipe.training.fit import ModelSpec, fit
from dlpipe.training.trainer import no_nan_fill

LOSS_RTOL = 1e-3
now = time.perf_counter  # the benchmark's clock (--clock cpu: time.process_time)
VAL_SAMPLES = 512
LR = 1e-3
SHAPE = (1, 28, 28)
CLASSES = 10


def synthetic(n: int, seed: int, classes: int = CLASSES, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, ...]:
    """Learnable MNIST-sized images: per class four smooth random prototypes, scaled, shifted by up to 3 pixels and
    buried in unit Gaussian noise (signal/noise ~0.5). A fresh MLP ends epoch 1 near loss 0.9, epoch 2 near 0.2."""
    g = torch.Generator().manual_seed(seed)
    modes, shift = 4, 3
    protos = F.avg_pool2d(torch.randn(classes * modes, *shape, generator=g), 5, stride=1, padding=2)
    protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    y = torch.randint(classes, (n,), generator=g)
    mode = torch.randint(modes, (n,), generator=g)
    X = protos[y * modes + mode] * (0.5 * (0.5 + torch.rand(n, 1, 1, 1, generator=g)))
    dx = torch.randint(-shift, shift + 1, (n,), generator=g)
    dy = torch.randint(-shift, shift + 1, (n,), generator=g)
    for sx in range(-shift, shift + 1):
        for sy in range(-shift, shift + 1):
            sel = (dx == sx) & (dy == sy)
            X[sel] = X[sel].roll((sy, sx), dims=(2, 3))
    X += torch.randn(n, *shape, generator=g)
    return X.contiguous(), y


@dataclass
class Run:
    model: str
    loop: str
    epoch_seconds: list[float]
    losses: list[float]  # mean training loss of each epoch
    n: int

    @property
    def seconds(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds)


def fresh_model(arch: str, seed: int) -> nn.Module:
    """The network dlpipe's fit builds: seeded exactly as fit seeds it, from the registry's default params."""
    L.seed_everything(seed, workers=True, verbose=False)
    return build_model(arch, get_architecture(arch).params(), SHAPE, CLASSES)


def warm_up(arch: str, X: torch.Tensor, y: torch.Tensor, bs: int, steps: int = 20) -> None:
    """A few untimed steps on a throwaway model, so that the first timed loop pays no first-call costs."""
    model = build_model(arch, get_architecture(arch).params(), SHAPE, CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for i in range(min(steps, len(y) // bs)):
        optimizer.zero_grad()
        F.cross_entropy(model(X[i * bs : (i + 1) * bs]), y[i * bs : (i + 1) * bs]).backward()
        optimizer.step()


def tutorial_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, bs: int, seed: int) -> Run:
    dataset = TensorDataset(X, y)
    # shuffle=True is RandomSampler(dataset); seeded, its first permutation is the one dlpipe and the plain loops use
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    # the loader's own generator: without one, every epoch's iterator draws its base seed from the global RNG, which
    # shifts the dropout masks of every later step away from the other loops'
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    times, losses = [], []
    for _ in range(epochs):
        start = now()
        running, seen = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(yb)
            seen += len(yb)
        times.append(now() - start)
        losses.append(running / seen)
    return Run("", "tutorial", times, losses, len(y))


def plain_loop(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, bs: int, seed: int, *, gather_epoch: bool = False
) -> Run:
    """plain-best (per-batch `index_select`), or with `gather_epoch` plain-gather (one gather, then slices)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    n = len(y)
    times, losses = [], []
    for epoch in range(epochs):
        start = now()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))  # TensorLoader's order
        if gather_epoch:
            Xs, ys = X[perm], y[perm]
        total = torch.zeros(())
        for i in range(0, n, bs):
            if gather_epoch:
                xb, yb = Xs[i : i + bs], ys[i : i + bs]
            else:
                idx = perm[i : i + bs]
                xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(yb)
        losses.append(float(total) / n)
        times.append(now() - start)
    return Run("", "plain-gather" if gather_epoch else "plain-best", times, losses, n)


class EpochClock(Callback):
    """Wall time of each training epoch (its end-of-epoch validation included) and the initial weights."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = now()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(now() - self._start)


def dlpipe_loop(arch: str, split: TrainValSplit, epochs: int, bs: int, seed: int) -> tuple[Run, EpochClock, float]:
    train = TrainParams(max_epochs=epochs, batch_size=bs, optimizer="adam", lr=LR, early_stopping={"enabled": False})
    spec = ModelSpec(arch, get_architecture(arch).params(), train)
    clock = EpochClock()
    trainer = TrainerParams(accelerator="cpu", devices=1, progress_bar=False)  # threads: set by main, like the loops
    result = fit(spec, split, [str(c) for c in range(CLASSES)], trainer, seed, max_epochs=epochs, callbacks=[clock])
    torch.use_deterministic_algorithms(False)  # fit's Trainer(deterministic=True) set it process-wide
    losses = [row["train_loss"] for row in result.history]
    return Run(arch, "dlpipe", clock.seconds, losses, len(split.train)), clock, result.seconds


class BareModule(L.LightningModule):
    """The least a LightningModule can be: the network, its loss, Adam."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.losses.append(loss.detach() * len(y))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


def bare_lightning_loop(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, bs: int, seed: int) -> Run:
    """Lightning's floor: `BareModule` in a Trainer with every optional feature off; deterministic like dlpipe."""
    module, clock = BareModule(model), EpochClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        deterministic=TrainerParams().deterministic,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    with no_nan_fill():  # as dlpipe's fit runs its Trainer
        trainer.fit(module, TensorLoader(X, y, bs, shuffle=True, seed=seed))
    torch.use_deterministic_algorithms(False)
    steps = math.ceil(len(y) / bs)
    losses = [float(torch.stack(module.losses[e * steps : (e + 1) * steps]).sum()) / len(y) for e in range(epochs)]
    return Run("", "lightning-bare", clock.seconds, losses, len(y))


def warm_up_dlpipe(arch: str, split: TrainValSplit, bs: int) -> float:
    """One untimed `fit` of one epoch on a small slice: the process's first-call costs; returns its seconds."""
    small = TrainValSplit(Part(split.train.X[: 20 * bs], split.train.y[: 20 * bs]), split.val, split.normalizer)
    start = now()
    dlpipe_loop(arch, small, 1, bs, 0)
    return now() - start


LOOPS = ("plain-best", "plain-gather", "tutorial", "lightning-bare", "dlpipe")


def print_table(runs: list[Run]) -> str:
    """One row per model: each loop's epoch seconds, its time relative to plain-best, the epoch-1 loss."""
    by = {(r.model, r.loop): r for r in runs}
    models = list(dict.fromkeys(r.model for r in runs))
    others = LOOPS[1:]
    w = 15
    lines = [
        f"{'':<6} {'epoch seconds':<{w * len(LOOPS)}} {'time / plain-best':<{w * len(others)}} epoch-1 loss",
        f"{'model':<6} "
        + "".join(f"{loop:>{w}}" for loop in LOOPS)
        + "".join(f"{loop:>{w}}" for loop in others)
        + "   plain-best (max rel. diff)",
    ]
    for model in models:
        rs = {loop: by[model, loop] for loop in LOOPS}
        best = rs["plain-best"]
        times = "".join(f"{rs[loop].seconds:>{w}.3f}" for loop in LOOPS)
        ratios = "".join(f"{rs[loop].seconds / best.seconds:>{w - 1}.3f}x" for loop in others)
        diff = max(rel_diff(rs[loop].losses[0], best.losses[0]) for loop in others)
        lines.append(f"{model:<6} {times}{ratios}   {best.losses[0]:.4f} ({diff:.0e})")
    return "\n".join(lines)


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60000, help="training samples (MNIST: 60000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="run each loop this often; report the fastest")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall seconds, or the process's CPU seconds"
    )
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 on small or busy CPUs, where extra threads mostly wait",
    )
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    global now
    now = time.process_time if args.clock == "cpu" else time.perf_counter

    X, y = synthetic(args.samples + VAL_SAMPLES, args.seed)
    train_part, val_part = Part(X[: args.samples], y[: args.samples]), Part(X[args.samples :], y[args.samples :])
    split = TrainValSplit(train_part, val_part, Normalizer.identity(X))

    runs: list[Run] = []
    problems: list[str] = []
    notes: list[str] = []
    for arch in args.models:
        warm_up(arch, train_part.X, train_part.y, args.batch_size)
        few = 20 * args.batch_size  # Lightning's first fit in the process pays one-time costs: untimed
        bare_lightning_loop(fresh_model(arch, args.seed), train_part.X[:few], train_part.y[:few], 1, args.batch_size, 0)
        warm_fit = warm_up_dlpipe(arch, split, args.batch_size)
        best_model = fresh_model(arch, args.seed)
        initial = {k: v.detach().clone() for k, v in best_model.state_dict().items()}
        kept: dict[str, Run] = {}
        fit_seconds = []
        for repeat in range(args.repeats):  # interleaved, so that load changes hit every loop alike; keep the fastest
            model = best_model if repeat == 0 else fresh_model(arch, args.seed)
            data = (train_part.X, train_part.y, args.epochs, args.batch_size, args.seed)
            best = plain_loop(model, *data)
            gather = plain_loop(fresh_model(arch, args.seed), *data, gather_epoch=True)
            tutorial = tutorial_loop(fresh_model(arch, args.seed), *data)
            bare = bare_lightning_loop(fresh_model(arch, args.seed), *data)
            dl, clock, seconds = dlpipe_loop(arch, split, args.epochs, args.batch_size, args.seed)
            fit_seconds.append(seconds)
            for run in (dl, bare, tutorial, gather, best):
                run.model = arch
                if run.loop in kept and kept[run.loop].losses[0] != run.losses[0]:
                    problems.append(f"{arch}: {run.loop} epoch-1 loss changed between repeats (not reproducible)")
                if run.loop not in kept or run.seconds < kept[run.loop].seconds:
                    kept[run.loop] = run
        dl, best = kept["dlpipe"], kept["plain-best"]
        runs += [kept[loop] for loop in LOOPS]
        fit_seconds = min(fit_seconds)
        notes.append(
            f"{arch}: dlpipe fit() total {fit_seconds:.2f} s for {args.epochs} epoch(s) (Trainer setup and teardown, "
            f"per-epoch validation, restoring the best epoch); untimed warm-up fit on a slice {warm_fit:.2f} s"
        )
        if clock.initial.keys() != initial.keys() or any(
            not torch.equal(clock.initial[k], initial[k]) for k in initial
        ):
            problems.append(f"{arch}: dlpipe's initial weights differ from the plain loops' (same seed)")
        for other in (kept[loop] for loop in LOOPS[1:]):
            if rel_diff(other.losses[0], best.losses[0]) > LOSS_RTOL:
                problems.append(
                    f"{arch}: {other.loop} epoch-1 loss {other.losses[0]:.6f} vs plain-best {best.losses[0]:.6f} "
                    f"(same init, same batches; tolerance {LOSS_RTOL:.0e} relative)"
                )

    clock_name = "CPU" if args.clock == "cpu" else "wall"
    print(
        f"\nsynthetic {args.samples} x {'x'.join(map(str, SHAPE))}, {CLASSES} classes; batch {args.batch_size}; "
        f"Adam lr {LR}; {args.epochs} epoch(s); torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"{clock_name} seconds, fastest of {args.repeats} interleaved run(s)\n"
    )
    print(print_table(runs))
    print()
    for note in notes:
        print(note)

    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print(
            f"checks passed: identical initial weights and epoch-1 batches; epoch-1 losses agree within "
            f"{LOSS_RTOL:.0e} relative"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
