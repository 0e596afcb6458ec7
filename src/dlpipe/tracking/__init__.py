"""MLflow conventions: where the store is, how runs are named and tagged, what they log."""
