"""Judging a model: metrics, calibration, predictions on image files, plots, the HTML report, and which
serving runtime (PyTorch, ONNX Runtime fp32 or int8) serves it, measured and chosen."""
