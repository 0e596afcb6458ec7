"""Each part is inferred once: a fold's report and its out-of-fold probabilities come from one pass over the scored
fold, the final fit's test report, probabilities and calibration from one pass over the test set. The report from
those logits must equal what Lightning's test loop computes on the same part."""

from __future__ import annotations

import torch
from helpers.training import CPU, SEED, problem, spec

from dlpipe.evaluation.calibration import logits_of
from dlpipe.stages.train import cpu_latency
from dlpipe.training.fit import EVAL_BATCH, evaluate, fit
from dlpipe.training.metrics import logits_report


def test_the_report_from_logits_equals_the_lightning_test_loops() -> None:
    digits = problem("digits")
    mlp = spec("mlp", {"hidden": [32]}, max_epochs=2, lr=0.01)
    module = fit(mlp, digits.split, digits.class_names, CPU, SEED).module
    looped = evaluate(module, digits.test, CPU)
    once = logits_report(logits_of(module, digits.test.X), digits.test.y, digits.class_names)
    assert looped["accuracy"] > 0.5  # it learned: the comparison is not between two constant predictors
    assert once == looped


def test_cpu_latency_times_one_evaluation_batch_not_the_whole_part() -> None:
    seen: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return x.sum(dim=1, keepdim=True)

    cpu_latency(Counting(), torch.randn(5000, 4), samples=3)
    assert max(seen) == EVAL_BATCH
