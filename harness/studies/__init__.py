"""Optuna studies over a method's hyperparameters, the equal-effort tuning of a table's methods, and the tuned file."""
