"""Retraining from the department's own signed reports: learning data and retrain runs."""
