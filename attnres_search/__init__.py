"""Attention Residuals search: models, kernels, trainer, Optuna studies and reports."""

__version__ = "0.1.0"
