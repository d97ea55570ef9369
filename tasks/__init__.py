"""The pipeline's stages and what they are built on.

At this level: one module per dvc.yaml stage (sample, validate, clean, split, augment, train,
evaluate, gate, package, monitor), each with a plain `run(params, workdir)` and a CLI for DVC
(`python -m tasks.<stage>`), and production.py, the command that promotes and rolls back. No stage
imports another. What they build on is grouped one folder down: common/ (params, shared paths, the
CLI, file helpers), data/, model/, training/, evaluation/ and monitoring/.

Importing the package switches off the telemetry of the libraries the stages use, so that the
project, not the user's shell, keeps every run offline.
"""
import os

for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)
