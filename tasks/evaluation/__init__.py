"""Judging a model: metrics, calibration, predictions on image files, plots and the HTML report."""
