"""Train an MLP on digits with two CPU processes (strategy=ddp, gloo) and write what rank 0 saw.

Run by tests/integration/test_ddp.py as `python ddp_script.py OUT_DIR [EPOCHS]`. Lightning's `ddp` strategy starts
rank 1 by re-running this same command line, so everything happens under `if __name__ == "__main__":`.

Writes into OUT_DIR: `result.json` (rank 0: FitResult.val, the evaluate() report on the test part, world size,
sample counts) and `weights_rank<r>.pt` (every rank: the trained model's state_dict, to check the replicas agree).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

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


def main(out_dir: Path, epochs: int) -> None:
    logging.getLogger("lightning").setLevel(logging.ERROR)
    ds, split, test = digits_problem()
    trainer = TrainerParams(accelerator="cpu", devices=2, strategy="ddp", progress_bar=False)
    result = fit(model_spec(), split, ds.class_names, trainer, SEED, max_epochs=epochs)
    report = evaluate(result.module, test, trainer)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(result.module.state_dict(), out_dir / f"weights_rank{rank}.pt")
    if rank == 0:
        payload = {
            "world_size": world,
            "epochs": result.epochs,
            "val": result.val,
            "test": report,
            "n_val": len(split.val),
            "n_test": len(test),
        }
        tmp = out_dir / "result.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.rename(out_dir / "result.json")
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
