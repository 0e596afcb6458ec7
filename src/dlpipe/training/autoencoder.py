"""Training the autoencoder: reconstruction and classification together, on labelled and unlabelled inputs.

Per batch: the encoder reads the (augmented) input plus Gaussian noise of std `noise` (denoising; in normalised
units), the decoder reconstructs the clean input from the code, and the head classifies the code. What the decoder
reconstructs: with `reconstruction: mse`, the normalised input (what the networks see); with `bce`, the raw input in
[0, 1] (recovered through the training normaliser), from the decoder's logits. Loss = cross-entropy over the
labelled rows + `reconstruction_weight` x reconstruction loss over every row (+ L1/L2). During the first
`pretrain_epochs` the classification loss does not reach the encoder (the head learns on the detached code), so
the encoder learns from reconstruction alone while validation and early stopping still see a classifier.

Logged per epoch: `train_recon_loss`, `val_recon_loss` (besides every classifier metric). After fitting (kept
weights, validation inputs): a grid of originals above their reconstructions (images) and the reconstruction error
per class (`recon_error_class_<name>` metrics and `reconstruction/per_class.json`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlpipe.config import TrainParams
from dlpipe.errors import ConfigError
from dlpipe.models.autoencoder import AutoencoderNet, build_decoder
from dlpipe.training.metrics import BatchMean
from dlpipe.training.semi_supervised import Artifacts, SemiSupervised, image_grid, keep_step_signature, metric_safe

RANGE_SLACK = 1e-4  # raw inputs for bce may stray this far outside [0, 1] (float32 round trips)


@keep_step_signature
class AutoencoderClassifier(SemiSupervised):
    """Trains an `AutoencoderNet` (encoder -> head, the classifier that is evaluated and served) with its decoder."""

    extra_losses = ("recon_loss",)

    def __init__(
        self,
        model: AutoencoderNet,
        train: TrainParams,
        num_classes: int,
        class_names: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(model, train, num_classes, class_names, input_shape)
        self.ae = model.params
        self.decoder = build_decoder(model)
        self.val_recon_loss = BatchMean()

    def reconstruction_errors(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction loss of decoder output `out` for the (clean, normalised) input `x`."""
        if self.ae.reconstruction == "bce":
            target = self.to_raw(x).clamp(0.0, 1.0)
            err = F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            err = F.mse_loss(out, x, reduction="none")
        return err.flatten(1).mean(dim=1)

    def reconstruct_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction of normalised `x`, in the raw input scale."""
        out = self.decoder(self.model.encode(x))
        return torch.sigmoid(out) if self.ae.reconstruction == "bce" else self.to_raw(out)

    def on_train_start(self) -> None:
        if self.ae.reconstruction != "bce":
            return
        loader = self.trainer.train_dataloader
        X = getattr(loader, "X", None)
        if X is None or X.dtype == torch.uint8:  # 8-bit pixels: their raw scale, X / 255, is in [0, 1]
            return
        raw = self.to_raw(X.to(self.input_mean.device))
        low, high = float(raw.min()), float(raw.max())
        if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
            raise ConfigError(
                f"models.autoencoder.reconstruction: bce needs raw inputs in [0, 1], this training "
                f"data spans [{low:.3g}, {high:.3g}]; allowed here: mse"
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        noisy = x + self.ae.noise * torch.randn_like(x) if self.ae.noise > 0 else x
        code = self.model.encode(noisy)
        recon = self.reconstruction_errors(self.decoder(code), x).mean()
        pretraining = self.current_epoch < self.ae.pretrain_epochs
        logits = self.model.head(code.detach() if pretraining else code)
        sup, count = self.supervised_loss(logits, y)
        loss = sup + self.ae.reconstruction_weight * recon
        p = self.train_params
        if p.l1 or p.l2:
            loss = loss + self.penalty()
        self.record_step(logits, y, sup, count, recon_loss=recon)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        code = self.model.encode(x)
        logits = self.model.head(code)
        self.val_metrics.update(logits, y)
        self.val_loss.update(F.cross_entropy(logits, y), len(y))
        self.val_recon_loss.update(self.reconstruction_errors(self.decoder(code), x).mean(), len(y))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val_recon_loss", self.val_recon_loss)

    @torch.no_grad()
    def fit_artifacts(self, X: torch.Tensor, y: torch.Tensor) -> Artifacts:
        """Originals above their reconstructions (one sample of each class first, images only) and the mean
        reconstruction error per class, on the validation inputs `X` (normalised) with labels `y`."""
        was_training = self.training
        self.eval()
        try:
            X, y = X.to(self.device), y.to(self.device)
            errors = torch.cat(
                [
                    self.reconstruction_errors(self.decoder(self.model.encode(X[i : i + 256])), X[i : i + 256])
                    for i in range(0, len(X), 256)
                ]
            )
            per_class = {}
            for c, name in enumerate(self.class_names):
                mask = y == c
                if mask.any():
                    per_class[str(name)] = float(errors[mask].mean())
            out = Artifacts(
                metrics={f"recon_error_class_{metric_safe(n)}": v for n, v in per_class.items()}
                | {"recon_error": float(errors.mean()) if len(errors) else float("nan")},
                tables={
                    "reconstruction/per_class.json": {
                        "loss": self.ae.reconstruction,
                        "per_class": per_class,
                        "samples": len(y),
                    }
                },
            )
            if X.dim() == 4 and len(X):
                picks = self._picks(y)
                originals = self.to_raw(X[picks])
                out.images["reconstruction/grid.png"] = image_grid(
                    torch.cat([originals, self.reconstruct_raw(X[picks])]), nrow=len(picks)
                )
            return out
        finally:
            self.train(was_training)

    def _picks(self, y: torch.Tensor, n: int = 10) -> torch.Tensor:
        """Up to `n` rows: the first of each class, then the next ones in order."""
        firsts = [int(torch.nonzero(y == c)[0]) for c in range(self.num_classes) if (y == c).any()][:n]
        rest = [i for i in range(min(len(y), 2 * n)) if i not in firsts]
        return torch.tensor((firsts + rest)[:n], device=y.device)
