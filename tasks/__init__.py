"""Pipeline stages: each module is one stage with a plain `run(params, workdir)` and a CLI for DVC.

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
