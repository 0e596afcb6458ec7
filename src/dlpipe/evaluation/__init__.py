"""Cross-validation, evaluation reports, plots and model-selection statistics."""
