"""Training the semi-supervised GAN (Salimans et al. 2016) with Lightning's manual optimisation, two Adam optimisers.

Per batch (real inputs x, labels y with -1 where hidden, l(.) the discriminator's K logits, Z = sum_k exp l_k):
- discriminator: cross-entropy of l(x) over the labelled rows, plus `unsupervised_weight` x the real-vs-fake loss
  -log D(x) - log(1 - D(G(z))) with D = Z / (Z + 1), i.e. softplus(lse l(x)) - lse l(x) + softplus(lse l(G(z)))
  (lse: log-sum-exp), averaged over the batch (+ L1/L2 on the discriminator);
- generator: feature matching, the squared distance between the mean discriminator features of the real batch and
  of a generated one.
The generator draws raw images in [0, 1], normalised with the training statistics before the discriminator reads
them. `training_step` returns the sum of both losses (detached), so a NaN or infinite loss in either net is seen by
the per-batch check of every fit (tuning fails the trial).

Logged per epoch: `train_d_loss`, `train_g_loss`, `train_unsup_loss` beside the classifier's metrics; a grid of
generated samples every `SAMPLE_EVERY` epochs (`samples/epoch_NNN.png`) and from the kept weights after fitting
(`samples/final.png`), always from the same fixed noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dlpipe.config import TrainParams
from dlpipe.models.gan import Discriminator, build_generator
from dlpipe.training.semi_supervised import Artifacts, SemiSupervised, image_grid, keep_step_signature

SAMPLE_EVERY = 5  # epochs between logged grids of generated samples
SAMPLES = 100  # images per grid (10 x 10)
NOISE_SEED = 0  # the grids' fixed noise: its own generator, so logging never moves the training's random stream


@keep_step_signature
class SemiSupervisedGan(SemiSupervised):
    """Trains a `Discriminator` (the K-class classifier that is evaluated and served) against its generator."""

    extra_losses = ("d_loss", "g_loss", "unsup_loss")

    def __init__(
        self,
        model: Discriminator,
        train: TrainParams,
        num_classes: int,
        class_names: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(model, train, num_classes, class_names, input_shape)
        self.automatic_optimization = False
        self.gan = model.params
        self.generator = build_generator(model)
        noise = torch.randn(SAMPLES, self.gan.latent, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.register_buffer("fixed_noise", noise, persistent=False)

    def generate(self, n: int) -> torch.Tensor:
        """`n` generated samples, normalised like the real inputs."""
        z = torch.randn(n, self.gan.latent, device=self.device)
        return self.from_raw(self.generator(z))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        opt_d, opt_g = self.optimizers()
        n = len(x)

        with torch.no_grad():
            fake = self.generate(n)
        logits = self.model(x)
        sup, count = self.supervised_loss(logits, y)
        lse_real = torch.logsumexp(logits, dim=1)
        lse_fake = torch.logsumexp(self.model(fake), dim=1)
        unsup = (F.softplus(lse_real) - lse_real).mean() + F.softplus(lse_fake).mean()
        d_loss = sup + self.gan.unsupervised_weight * unsup
        p = self.train_params
        if p.l1 or p.l2:
            d_loss = d_loss + self.penalty()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

        self.toggle_optimizer(opt_g)  # the discriminator's weights need no gradient for the generator's step
        with torch.no_grad():
            real_features = self.model.features(x).mean(dim=0)
        g_loss = (self.model.features(self.generate(n)).mean(dim=0) - real_features).pow(2).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.record_step(logits, y, sup, count, d_loss=d_loss, g_loss=g_loss, unsup_loss=unsup)
        return (d_loss + g_loss).detach()

    def configure_optimizers(self) -> Any:
        g = self.gan
        lr_d = g.lr_discriminator or self.train_params.lr
        lr_g = g.lr_generator or lr_d
        opt_d = torch.optim.Adam(
            self.model.parameters(),
            lr=lr_d,
            betas=tuple(g.betas_discriminator),
            weight_decay=self.train_params.weight_decay,
        )
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr_g, betas=tuple(g.betas_generator))
        return [opt_d, opt_g]

    @torch.no_grad()
    def samples(self) -> np.ndarray:
        """A 10 x 10 grid of raw samples from the fixed noise (the generator in eval mode, then restored)."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            return image_grid(self.generator(self.fixed_noise), nrow=10)
        finally:
            self.generator.train(was_training)

    def epoch_images(self, epoch: int) -> dict[str, np.ndarray]:
        return {f"samples/epoch_{epoch:03d}.png": self.samples()} if epoch % SAMPLE_EVERY == 0 else {}

    def fit_artifacts(self, X: torch.Tensor, y: torch.Tensor) -> Artifacts:
        return Artifacts(images={"samples/final.png": self.samples()})
