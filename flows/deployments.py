"""What the operations stack registers with the Prefect server: a work pool and five deployments.

    retrain       flows/retrain.py       ops.retrain.cron, on demand, on drift and on new-data events;
                                         one run at a time (later ones wait their turn)
    monitor       flows/monitor.py       ops.monitor.cron; one run at a time
    review-sync   flows/review.py        ops.review.cron and on demand: tasks to Label Studio, reviews
                                         back into data.root; a run still going makes the next one
                                         cancel itself rather than queue up
    housekeeping  flows/housekeeping.py  ops.retention.cron and on demand; like review-sync, never two at once
    tune          flows/tune.py          on demand, and on ops.tune.cron when set: the recipe search and its
                                         best as a DVC experiment, never a promotion; one run at a time

New data is noticed by the data watcher (flows/watch_data.py), a process rather than a deployment.

Each deployment pulls its code from this checkout (a `set_working_directory` step), so a worker on
another machine needs the project at the same path, or a deployment from a git source (docs/operations.md, "Past one machine").
The drift and new-data triggers fire at most once per cooldown: Prefect's reactive trigger ignores
further events until `within` has passed, and the retrain flow itself skips a run that starts
within the cooldown of the last completed retrain, whatever started it.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron

from flows.events import ACCURACY_EVENT, DATA_EVENT, DRIFT_EVENT, RESOURCE_PREFIX
from flows.settings import FlowParams

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
SKIP_IF_RUNNING = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
HEARTBEAT_SECONDS = 30  # Prefect's smallest flow-run heartbeat period
SILENT_RUNS = "crash flow runs whose process died"
RETIRED = ["watch-data/watch-data"]  # a flow run per minute; now the data watcher process


def retrain_trigger(name: str, event: str, trigger: str, cooldown_minutes: int) -> DeploymentEventTrigger:
    """Start a retrain on `event`, at most once per cooldown; the event's summary becomes the reason."""
    return DeploymentEventTrigger(
        name=name,
        expect={event},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        threshold=1,
        within=timedelta(minutes=cooldown_minutes),
        parameters={"trigger": trigger, "reason": "{{ event.payload.summary }}"},
    )


def build_deployments(params: FlowParams, root: Path) -> list[RunnerDeployment]:
    ops, zone = params.ops, params.ops.timezone
    triggers = []
    if ops.retrain.on_drift:
        triggers.append(retrain_trigger("retrain on drift", DRIFT_EVENT, "drift", ops.retrain.cooldown_minutes))
    if ops.retrain.on_new_data:
        triggers.append(retrain_trigger("retrain on new data", DATA_EVENT, "new data", ops.retrain.cooldown_minutes))
    if ops.retrain.on_accuracy:
        triggers.append(retrain_trigger("retrain on live accuracy", ACCURACY_EVENT, "live accuracy",
                                        ops.retrain.cooldown_minutes))

    def deployment(entrypoint: str, name: str, **settings) -> RunnerDeployment:
        # to_deployment + apply rather than flow.deploy: prefect 3.8.8's deploy sends a request
        # (workers filter without a limit) that its own server rejects.
        return flow.from_source(source=str(root), entrypoint=entrypoint).to_deployment(
            name=name, work_pool_name=ops.work_pool, tags=["imgclf"], **settings)

    return [
        deployment("flows/retrain.py:retrain", "retrain",
                   schedules=[Cron(ops.retrain.cron, timezone=zone, parameters={"trigger": "schedule"})],
                   triggers=triggers, concurrency_limit=ONE_AT_A_TIME,
                   description="The whole pipeline, then promotion if the gate passes."),
        deployment("flows/monitor.py:monitor", "monitor",
                   schedules=[Cron(ops.monitor.cron, timezone=zone)], concurrency_limit=ONE_AT_A_TIME,
                   description="Evidently drift of the traffic logged since the last window."),
        deployment("flows/review.py:review_sync", "review-sync",
                   schedules=[Cron(ops.review.cron, timezone=zone)], concurrency_limit=SKIP_IF_RUNNING,
                   description="New suspect labels and uncertain served images to Label Studio; finished "
                               "reviews into data.root."),
        deployment("flows/housekeeping.py:housekeeping", "housekeeping",
                   schedules=[Cron(ops.retention.cron, timezone=zone)], concurrency_limit=SKIP_IF_RUNNING,
                   description="Prunes old flow runs, traffic logs, monitor windows and archived Bentos "
                               "(ops.retention)."),
        deployment("flows/tune.py:tune", "tune",
                   schedules=[Cron(ops.tune.cron, timezone=zone)] if ops.tune.cron else [],
                   concurrency_limit=ONE_AT_A_TIME,
                   description="Continues the recipe search of params.yaml's tune section and runs its best "
                               "recipe as a DVC experiment; never promotes."),
    ]


def crash_silent_runs() -> Automation:
    """Prefect's answer to a flow run whose process died (kill -9, out of memory, a lost machine):
    without a heartbeat for three periods it is marked Crashed, which also frees its concurrency
    slot, so the next retrain or monitor run is not queued behind a run that can never finish.
    Heartbeats come from runs started with PREFECT_FLOWS_HEARTBEAT_FREQUENCY (flows/ops.py sets it)."""
    return Automation(
        name=SILENT_RUNS,
        description="A flow run without a heartbeat for three periods is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {3 * HEARTBEAT_SECONDS} s: the process running it died")],
    )


def register(params: FlowParams, root: Path) -> list[UUID]:
    """Create the process work pool if missing, then create or update every deployment (and
    replace its triggers), against the Prefect API of the current settings. Deployments that
    earlier versions registered and this one does not are deleted, or their schedules would go on."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=params.ops.work_pool, type="process"))
        except ObjectAlreadyExists:
            pass
        for name in RETIRED:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                pass
        for automation in client.read_automations_by_name(SILENT_RUNS):  # replaced, never doubled
            client.delete_automation(automation.id)
    crash_silent_runs().create()
    return [deployment.apply() for deployment in build_deployments(params, root)]
