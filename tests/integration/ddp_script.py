"""Train an MLP on digits with two CPU processes (strategy=ddp, gloo) and write what each rank saw.

Run by tests/integration/test_ddp.py as `python ddp_script.py OUT_DIR [EPOCHS]`. Lightning's `ddp` strategy starts
rank 1 by re-running this same command line, so everything happens under `if __name__ == "__main__":`.

Each rank gets its own temporary directory (TMPDIR = OUT_DIR/tmp_rank<r>), as ranks on different nodes would: the best
epoch's weights must reach every rank without a shared file. The last epoch is spoiled on purpose (all weights zeroed
after its last training step, identically on both ranks), so the best epoch is an earlier one.

Writes into OUT_DIR: `result.json` (rank 0: FitResult.val, best epoch, history, the evaluate() report on the test part,
world size, sample counts), `weights_rank<r>.pt` (every rank: the module's state_dict after fit), `best_rank<r>.pt`
(every rank: its own weights right after the best epoch's validation) and `rank<r>.json` (what was in the rank's
temporary directory when training ended).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.data.prepared import Part, PreparedData
from dlpipe.data.sklearn_sets import load_digits
from dlpipe.data.splits import make_splits
from dlpipe.models import get_architecture
from dlpipe.training.fit import ModelSpec, evaluate, fit

SEED = 0
MODEL = {"hidden": [64]}
TRAIN = {"batch_size": 32, "lr": 3e-3, "early_stopping": {"enabled": False}}


def digits_problem(seed: int = SEED):
    """The same split test_ddp.py rebuilds in its own process: holdout test set, validation slice, train-only stats.

    Validation and test parts are trimmed to odd sizes (143, 359), so the two ranks get unequal shares: padding them
    to equal length, as training shares are, would count a sample twice and show in the synced metrics.
    """
    ds = load_digits(None, None)
    prepared = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 5, seed))
    split = prepared.holdout(0.1, seed)
    split.val = Part(split.val.X[:-1], split.val.y[:-1])
    test_idx = torch.from_numpy(prepared.splits.test_idx)[:-1]
    return ds, split, Part(split.normalizer(ds.X[test_idx]), ds.y[test_idx])


def model_spec() -> ModelSpec:
    return ModelSpec("mlp", get_architecture("mlp").params.model_validate(MODEL), TrainParams.model_validate(TRAIN))


class SpoilLastEpoch(Callback):
    """Zeroes every weight after the last training step of the last epoch: its validation loss becomes ln(10)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.is_last_batch and trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.zero_()


class EpochWeights(Callback):
    """This rank's weights after each epoch's validation, and its temporary directory's contents at the end."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.tmp_at_end: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states.append({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tmp_at_end = sorted(os.listdir(tempfile.gettempdir()))


def own_tmpdir(out_dir: Path) -> Path:
    """TMPDIR = OUT_DIR/tmp_rank<LOCAL_RANK>: rank 0 is the launching process, rank 1 the copy Lightning starts."""
    tmp = out_dir / f"tmp_rank{int(os.environ.get('LOCAL_RANK', '0'))}"
    tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None  # re-read TMPDIR
    return tmp


def main(out_dir: Path, epochs: int) -> None:
    logging.getLogger("lightning").setLevel(logging.ERROR)
    tmp = own_tmpdir(out_dir)
    ds, split, test = digits_problem()
    trainer = TrainerParams(accelerator="cpu", devices=2, strategy="ddp", progress_bar=False)
    recorder = EpochWeights()
    callbacks = [SpoilLastEpoch(), recorder]
    result = fit(model_spec(), split, ds.class_names, trainer, SEED, max_epochs=epochs, callbacks=callbacks)
    report = evaluate(result.module, test, trainer)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(result.module.state_dict(), out_dir / f"weights_rank{rank}.pt")
    torch.save(recorder.states[result.best_epoch], out_dir / f"best_rank{rank}.pt")
    rank_info = {"tmpdir": str(tmp), "gettempdir": tempfile.gettempdir(), "tmp_at_train_end": recorder.tmp_at_end}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(rank_info))
    if rank == 0:
        payload = {
            "world_size": world,
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "val": result.val,
            "test": report,
            "n_val": len(split.val),
            "n_test": len(test),
        }
        tmp_file = out_dir / "result.json.tmp"
        tmp_file.write_text(json.dumps(payload, indent=1))
        tmp_file.rename(out_dir / "result.json")
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
