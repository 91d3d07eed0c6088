"""Deployments of the flows: monthly monitoring on a cron schedule, disaster response on demand.

:func:`serve_all` serves both from one local process (``flow.serve`` style, no work pool): the
monitoring flow on its cron schedule, the response flow when asked through ``run_deployment``,
``prefect deployment run`` or an event ``seg2change.event.reported`` (its deployment trigger).
``prefect.yaml`` at the repository root declares the same deployments for a work pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from prefect.events import DeploymentEventTrigger

from flows.monitoring import monitoring_flow
from flows.response import response_flow

__all__ = [
    "MONITORING_CRON",
    "MONITORING_DEPLOYMENT",
    "RESPONSE_DEPLOYMENT",
    "RESPONSE_EVENT",
    "deployments",
    "main",
    "response_trigger",
    "serve_all",
]

#: Cron of the monitoring deployment: 06:00 UTC on the 2nd of every month.
MONITORING_CRON = "0 6 2 * *"
#: Event that starts a disaster response through the deployment trigger.
RESPONSE_EVENT = "seg2change.event.reported"
#: Deployment names (``<flow name>/<deployment name>`` for ``run_deployment``).
MONITORING_DEPLOYMENT = "seg2change-monitoring/monthly"
RESPONSE_DEPLOYMENT = "seg2change-response/on-demand"

#: Parameters the trigger takes from the event's payload; optional ones have defaults.
TRIGGER_PARAMETERS: dict[str, str] = {
    "area": "{{ event.payload.area }}",
    "event_date": "{{ event.payload.event_date }}",
    "hazard": "{{ event.payload.hazard }}",
    "catalog": "{{ event.payload.catalog }}",
    "collections": "{{ event.payload.collections }}",
    "output": "{{ event.payload.output }}",
    "area_crs": "{{ event.payload.get('area_crs', 'EPSG:4326') }}",
    "priority": "{{ event.payload.get('priority', 1) }}",
    "job_options": "{{ event.payload.get('job_options') }}",
}


def response_trigger() -> DeploymentEventTrigger:
    """The trigger that runs the response deployment on each ``seg2change.event.reported`` event.

    The event's resource id is ``seg2change.event.<id>``; its payload holds the flow parameters
    ``area``, ``event_date``, ``hazard``, ``catalog``, ``collections``, ``output`` and optionally
    ``area_crs``, ``priority`` and ``job_options``.
    """
    return DeploymentEventTrigger(
        name="seg2change-event-reported",
        expect={RESPONSE_EVENT},
        match={"prefect.resource.id": "seg2change.event.*"},
        parameters=dict(TRIGGER_PARAMETERS),
    )


def deployments(
    monitoring_parameters: Mapping[str, Any] | None = None, *, cron: str = MONITORING_CRON
) -> list[Any]:
    """Build the two runner deployments.

    Parameters
    ----------
    monitoring_parameters
        Parameters of the scheduled monitoring runs (``zones`` + ``base_job``, or ``job_files``;
        ``output``, ``cadence``...). Without them the schedule is created paused.
    cron
        Cron of the monitoring schedule.
    """
    monitoring = monitoring_flow.to_deployment(
        name="monthly",
        cron=cron,
        paused=monitoring_parameters is None,
        parameters=dict(monitoring_parameters or {}),
        tags=["seg2change", "monitoring"],
        description="Change of the month just ended against the month before, for every region.",
    )
    response = response_flow.to_deployment(
        name="on-demand",
        triggers=[response_trigger()],
        tags=["seg2change", "response", "priority:high"],
        description="Change around a reported event (flood, fire, storm, earthquake), at high priority.",
    )
    return [monitoring, response]


def serve_all(
    monitoring_parameters: Mapping[str, Any] | None = None,
    *,
    cron: str = MONITORING_CRON,
    limit: int | None = None,
) -> None:
    """Serve both deployments from this process until it is interrupted.

    Parameters
    ----------
    monitoring_parameters, cron
        See :func:`deployments`.
    limit
        Most flow runs at once in this process.
    """
    from prefect import serve

    serve(*deployments(monitoring_parameters, cron=cron), limit=limit)


def main(
    params: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="JSON file of the monitoring parameters (zones + base_job, or job_files; output, "
            "cadence...). Without it the monitoring schedule is created paused.",
        ),
    ] = None,
    cron: Annotated[str, typer.Option(help="Cron of the monitoring schedule.")] = MONITORING_CRON,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once in this process.")] = None,
) -> None:
    """Serve the monitoring and response deployments from this process until interrupted."""
    parameters: Any = None
    if params is not None:
        try:
            parameters = json.loads(params.read_text())
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"{params} is not JSON ({exc})", param_hint="PARAMS") from None
        if not isinstance(parameters, dict):
            raise typer.BadParameter(f"{params} must hold a JSON object", param_hint="PARAMS")
    serve_all(parameters, cron=cron, limit=limit)


if __name__ == "__main__":  # pragma: no cover - `python -m flows.deploy [params.json]`
    typer.run(main)
