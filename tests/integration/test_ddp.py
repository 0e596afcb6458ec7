"""DDP on CPU: two gloo processes train one model, the metrics they report are synced across ranks, and every rank
ends with the best epoch's weights although the ranks share no temporary directory.

Lightning's `ddp` strategy starts the other rank by re-running `sys.argv`, so the training runs in a standalone
script (ddp_script.py) in a subprocess; this test checks what it wrote against a single-process computation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_script import SEED, digits_problem, model_spec
from helpers.training import CPU

from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.training.fit import fit, predict_proba

SCRIPT = Path(__file__).with_name("ddp_script.py")
EPOCHS = 2
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(EPOCHS)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ddp_result(ddp_run) -> dict:
    return json.loads((ddp_run / "result.json").read_text())


@pytest.fixture(scope="module")
def ddp_module(ddp_run):
    ds, split, _ = digits_problem()
    module = model_spec().build(tuple(split.train.X.shape[1:]), ds.num_classes, ds.class_names)
    module.load_state_dict(torch.load(ddp_run / "weights_rank0.pt", weights_only=True))
    return module


def test_two_ranks_trained(ddp_run, ddp_result):
    assert ddp_result["world_size"] == 2
    assert ddp_result["epochs"] == EPOCHS
    # gradients were all-reduced every step, so the replicas ended identical
    w0 = torch.load(ddp_run / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(ddp_run / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_every_rank_ends_with_the_best_epochs_weights(ddp_run, ddp_result):
    """The last epoch was spoiled (weights zeroed), so the best epoch is an earlier one; after fit, each rank, with
    its own TMPDIR, holds exactly the weights it had after the best epoch's validation, and no file was involved."""
    best, val_losses = ddp_result["best_epoch"], [row["val_loss"] for row in ddp_result["history"]]
    assert len(val_losses) == EPOCHS and best == EPOCHS - 2  # the best epoch is not the last one
    assert val_losses[-1] == pytest.approx(math.log(10), rel=1e-5)  # zeroed weights: uniform outputs
    assert val_losses[best] < val_losses[-1]
    assert ddp_result["val"]["val_loss"] == val_losses[best]
    finals = [torch.load(ddp_run / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, final in enumerate(finals):
        at_best = torch.load(ddp_run / f"best_rank{r}.pt", weights_only=True)
        assert final.keys() == at_best.keys()
        assert all(torch.equal(final[k], at_best[k]) for k in final), f"rank {r} does not hold the best epoch's weights"
        assert any(final[k].abs().sum() > 0 for k in final)  # not the spoiled last epoch's
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["gettempdir"] != ranks[1]["gettempdir"]  # no temporary directory shared
    for info in ranks:
        assert info["gettempdir"] == info["tmpdir"]
        assert info["tmp_at_train_end"] == []  # the best weights never went through a file


def test_metric_keys_match_a_single_process_run(ddp_result):
    ds, split, _ = digits_problem()
    single = fit(model_spec(), split, ds.class_names, CPU, SEED, max_epochs=1)
    assert set(ddp_result["val"]) == set(single.val) == {"val_loss", *(f"val_{m}" for m in SCALAR_METRICS)}
    report_keys = {*SCALAR_METRICS, "per_class", "confusion_matrix", "class_names"}
    assert set(ddp_result["test"]) == report_keys
    assert ddp_result["test"]["class_names"] == ds.class_names


def test_evaluate_counts_every_test_sample_exactly_once(ddp_result, ddp_module):
    """The DDP report equals the in-process computation on the same weights: the torchmetrics states of the two
    ranks were summed, over disjoint shares that cover the test part (no padding, no sample lost)."""
    _, _, test = digits_problem()
    pred = predict_proba(ddp_module, test.X).argmax(dim=1)
    report = ddp_result["test"]
    assert ddp_result["n_test"] == len(test) == 359  # odd: the ranks hold 180 and 179
    assert sum(map(sum, report["confusion_matrix"])) == len(test)
    expected = torch.zeros(10, 10, dtype=torch.long)
    expected.index_put_((test.y, pred), torch.ones_like(test.y), accumulate=True)
    assert report["confusion_matrix"] == expected.tolist()
    assert report["accuracy"] == pytest.approx((pred == test.y).float().mean().item(), abs=1e-6)
    assert report["accuracy"] > 0.8  # and it learned (chance is 0.1)


def test_validation_metrics_are_synced_across_ranks(ddp_result, ddp_module):
    _, split, _ = digits_problem()
    val = ddp_result["val"]
    probs = predict_proba(ddp_module, split.val.X)
    assert ddp_result["n_val"] == len(split.val) == 143  # odd: unequal shares
    assert val["val_accuracy"] == pytest.approx((probs.argmax(1) == split.val.y).float().mean().item(), abs=1e-6)
    assert val["val_loss"] == pytest.approx(F.nll_loss(probs.log(), split.val.y).item(), rel=1e-4)
