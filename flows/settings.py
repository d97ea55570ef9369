"""params.yaml's `ops` section, validated here because only operations read it (flows/, `make serve`).

The stages never import this module, so editing it re-runs no stage. `FlowParams` is what a flow
reads: the stages' sections, the recipe search's and this one.
"""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import Field, StrictInt, field_validator, model_validator

from tasks.common.config import Section
from tasks.tuning.settings import TuningParams


class RetrainOps(Section):
    cron: str = Field(description="when the scheduled retrain runs (five-field cron, ops.timezone)")
    cooldown_minutes: StrictInt = Field(ge=0, description="a retrain this soon after the last one is skipped")
    on_drift: bool
    on_new_data: bool
    on_accuracy: bool = True  # params.yaml from before the live-accuracy trigger
    min_audited: StrictInt = Field(default=50, ge=1, description="audited images before live accuracy is tested")

    _cron = field_validator("cron")(lambda cls, value: _check_cron(value))


class MonitorOps(Section):
    cron: str
    window_minutes: StrictInt = Field(ge=0, description="0: the traffic since the last window")

    _cron = field_validator("cron")(lambda cls, value: _check_cron(value))


class ReviewOps(Section):
    cron: str = Field(description="when new review tasks are sent to Label Studio and finished reviews applied")
    drift_images: StrictInt = Field(ge=0, description="a drifted window's least sure images sent for review at once")

    _cron = field_validator("cron")(lambda cls, value: _check_cron(value))


class RetentionOps(Section):
    cron: str = Field(description="when the housekeeping deployment prunes what the stack keeps")
    flow_run_days: StrictInt = Field(ge=1, description="flow runs that ended longer ago are deleted, except retrains")
    traffic_days: StrictInt = Field(ge=1, description="traffic log files last written longer ago are deleted")
    windows: StrictInt = Field(ge=1, description="monitor windows whose reports and snapshots are kept")
    promotions: StrictInt = Field(ge=0, description="Bentos kept in deploy/store besides production's")

    _cron = field_validator("cron")(lambda cls, value: _check_cron(value))


class TuneOps(Section):
    cron: str | None = Field(description="when the tune deployment continues the recipe search (null: on demand only)")

    _cron = field_validator("cron")(lambda cls, value: value if value is None else _check_cron(value))


class OpsParams(Section):
    home: str
    host: str
    prefect_port: StrictInt = Field(ge=1, le=65535)
    evidently_port: StrictInt = Field(ge=1, le=65535)
    service_port: StrictInt = Field(ge=1, le=65535)
    label_studio_port: StrictInt = Field(ge=1, le=65535)
    timezone: str
    work_pool: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data_check_seconds: StrictInt = Field(ge=1, description="how often the data watcher polls data.root")
    retrain: RetrainOps
    monitor: MonitorOps
    review: ReviewOps
    retention: RetentionOps
    tune: TuneOps

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("unknown time zone; use an IANA name such as UTC or Europe/Berlin") from None
        return value

    @model_validator(mode="after")
    def _ports(self) -> "OpsParams":
        ports = [self.prefect_port, self.evidently_port, self.service_port, self.label_studio_port]
        if len(set(ports)) < len(ports):
            raise ValueError("prefect_port, evidently_port, service_port and label_studio_port must differ")
        return self


def _check_cron(value: str) -> str:
    """Five cron fields (minute hour day month weekday), as Prefect's schedules take them."""
    if len(value.split()) != 5:
        raise ValueError("a cron schedule has five fields: minute hour day-of-month month day-of-week, "
                         "e.g. '0 3 * * 1' for Mondays at 03:00")
    try:
        CronSim(value, datetime(2000, 1, 1))
    except CronSimError as err:
        raise ValueError(f"invalid cron schedule ({err}); e.g. '0 * * * *' for hourly") from None
    return value


class FlowParams(TuningParams):
    ops: OpsParams
