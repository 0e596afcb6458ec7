"""Calibration: how far predicted confidences are from observed accuracies, and temperature scaling.

- Expected calibration error (ECE, torchmetrics' MulticlassCalibrationError, l1 norm over equal-width bins of the
  top-class confidence) and the reliability diagram's bins (mean confidence, accuracy, count per bin).
- Temperature scaling (Guo et al. 2017): one scalar T > 0 that divides the logits, fitted by minimising the
  negative log-likelihood on a validation slice; it changes probabilities, never the argmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from dlpipe.training.fit import EVAL_BATCH

BINS = 15


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """ECE of class probabilities (N x C) against labels."""
    probs_t = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    metric = MulticlassCalibrationError(num_classes=probs_t.shape[1], n_bins=bins, norm="l1")
    return float(metric(probs_t, torch.as_tensor(np.asarray(y, dtype=np.int64))))


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Per non-empty bin of top-class confidence: mean confidence, accuracy and count (the reliability diagram)."""
    probs = np.asarray(probs, dtype=float)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        if members.any():
            out.append(
                {
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                    "count": int(members.sum()),
                }
            )
    return out


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, steps: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, y)."""
    logits, y = logits.detach().float().cpu(), y.detach().long().cpu()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature if np.isfinite(temperature) and temperature > 0 else 1.0


@torch.no_grad()
def logits_of(module: torch.nn.Module, X: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """The network's outputs for `X` (eval mode, no Trainer), on the CPU."""
    module.eval()
    device = next(module.parameters()).device
    parts = [module(X[i : i + batch].to(device)).float().cpu() for i in range(0, len(X), batch)]
    return torch.cat(parts) if parts else torch.empty(0)


def calibrated_probs(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1).numpy()
