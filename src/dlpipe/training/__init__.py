"""Training core: the classification LightningModule, in-memory batching, the Trainer factory, `fit`."""
