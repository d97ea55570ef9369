"""The pipeline's stages and what they are built on.

At this level: one module per dvc.yaml stage, in pipeline order (sample, validate, clean, split,
label_quality, augment, train, evaluate, gate, package, monitor), each with a plain
`run(params, workdir)`, the `PARAMS` it reads, and a CLI for DVC (`python -m tasks.<stage>`); and two
commands that are not stages: production.py (promote, roll back, show, serve production) and
tune.py (the Optuna search of the train recipe). No stage imports another. What they build on is
grouped one folder down: common/ (params, the keys a stage may read, shared paths, the CLI, file
helpers, compute threads, code deps), data/, model/, training/, evaluation/, labels/, tuning/ and
monitoring/.

Importing the package switches off the telemetry of the libraries the stages use, so that the
project, not the user's shell, keeps every run offline, and makes idle OpenMP threads sleep rather
than spin (tasks/common/threads.py), before any of those libraries loads.
"""
import os

for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # Idle OpenMP threads (PyTorch's) sleep instead of spinning on cores that another process computes
    # on; read when PyTorch loads, so it is set here, first (tasks/common/threads.py).
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_key, _value)
