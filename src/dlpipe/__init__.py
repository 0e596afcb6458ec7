"""dlpipe: a reproducible deep-learning research pipeline (DVC + Lightning + Optuna + MLflow)."""

__version__ = "0.1.0"
