"""dlpipe: a reproducible deep-learning research pipeline (DVC + Lightning + Optuna + MLflow)."""

__version__ = "0.1.0"

# Bumped when what the pipeline computes changes for the same params (2: clean cross-validation, the tuning
# objective's folds rule): studies, folds and fits recorded under another protocol are not reused.
RESULTS_PROTOCOL = "2"
