"""Prefect flows: the pipeline over dvc.yaml, and the operations stack that runs it over time.

pipeline.py is the flow `make run` runs (every stage through DVC, then promotion if the gate passed).
ops.py is `make ops`: it starts the Prefect server, registers the deployments (deployments.py), and
runs a worker, the data watcher (watch_data.py), the Evidently UI, Label Studio and the service,
restarting any that dies (supervise.py). The deployments' flows are retrain.py, monitor.py,
review.py, housekeeping.py and tune.py; events.py holds the events that start a retrain,
credentials.py what the stack requires beyond loopback, and settings.py params.yaml's `ops` section.
"""
