"""Zombie runs: a flow run whose machine died stays "Running" forever unless something notices.

A running Prefect flow sends a heartbeat event every `schedule.heartbeat_s` seconds (from a thread, so a
busy event loop does not silence it). A proactive automation on the server expects, after each heartbeat,
another heartbeat or a final state within `schedule.crashed_after_s`; when none comes, it moves the run to
Crashed (Prefect's recipe: docs "detect zombie flows"). The runner itself only catches a flow process that
dies under it; this catches the runner, the container or the whole machine going away. The automation
watches ganpipe's flows only, so it is safe on a team server that runs other flows. With a failure webhook
configured it also POSTs the notice that the dead flow's on_crashed hook can no longer send.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ganpipe.params import ScheduleParams

AUTOMATION = "ganpipe: crash silent flow runs"
WEBHOOK_BLOCK = "ganpipe-failure-webhook"
FLOWS = ("training-pipeline", "sweep")
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
FINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed")


def heartbeat_env(sp: ScheduleParams) -> dict[str, str]:
    """The environment that makes flow runs started from here send heartbeats at `sp.heartbeat_s`."""
    return {HEARTBEAT_ENV: str(sp.heartbeat_s)}


@contextmanager
def heartbeats(sp: ScheduleParams) -> Iterator[None]:
    """Flow runs started inside (in this process, or served runs in its children) send heartbeats every
    `sp.heartbeat_s`: Prefect's default (180 s) could outlast a shorter `crashed_after_s`, and the
    automation would then crash a live run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    saved = os.environ.get(HEARTBEAT_ENV)
    os.environ.update(heartbeat_env(sp))
    try:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: sp.heartbeat_s}):
            yield
    finally:
        if saved is None:
            os.environ.pop(HEARTBEAT_ENV, None)
        else:
            os.environ[HEARTBEAT_ENV] = saved


def _notice_template(message: str) -> str:
    """The webhook body, rendered by the server: the same fields as `notify.failure_notice` posts."""
    fields = {"text": f'("ganpipe: flow run " ~ flow.name ~ "/" ~ flow_run.name ~ " crashed: " ~ {json.dumps(message)})',
              "flow": "flow.name", "flow_run_name": "flow_run.name", "flow_run_id": "flow_run.id | string",
              "state": '"Crashed"', "message": json.dumps(message), "project_dir": "flow_run.parameters.project_dir"}
    return "{" + ", ".join(f'"{k}": {{{{ ({v}) | tojson }}}}' for k, v in fields.items()) + "}"


def save_webhook(url: str) -> str:
    """The webhook as a Prefect block (the server calls it, the flow being dead); returns its id."""
    from prefect.blocks.webhook import Webhook

    return str(Webhook(url=url, headers={"Content-Type": "application/json"}).save(WEBHOOK_BLOCK, overwrite=True))


def automation(sp: ScheduleParams, webhook_block_id: str | None = None):
    """The automation object: per flow run, a heartbeat not followed by another or a final state within
    `sp.crashed_after_s` turns the run Crashed, and POSTs the failure notice to the webhook block when
    one is given."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import CallWebhook, ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    message = (f"no heartbeat for {sp.crashed_after_s} s: the process running this flow died "
               "(machine lost, container evicted, or killed with its runner)")
    actions = [ChangeFlowRunState(state=StateType.CRASHED, name="Crashed", message=message)]
    if webhook_block_id:
        actions.append(CallWebhook(block_document_id=webhook_block_id, payload=_notice_template(message)))
    return AutomationCore(
        name=AUTOMATION,
        description=f"Marks a {' or '.join(FLOWS)} flow run Crashed when it sends no heartbeat for "
                    f"{sp.crashed_after_s} s (its process tree or machine died). Written by `ganpipe watchdog`.",
        enabled=True,
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": list(FLOWS)}),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=sp.crashed_after_s),
        ),
        actions=actions,
    )


def ensure_automation(sp: ScheduleParams, webhook: str | None = None) -> str:
    """Create the automation on the Prefect server at PREFECT_API_URL, or bring an existing one (same
    name) up to date with params.yaml; `webhook` (notify.webhook_url) also gets a crashed run's notice.
    Returns its id. Idempotent: every `ganpipe schedule` calls it."""
    from prefect.client.orchestration import get_client

    wanted = automation(sp, save_webhook(webhook) if webhook else None)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION)
        if not found:
            return str(client.create_automation(wanted))
        first, *extra = found
        client.update_automation(first.id, wanted)
        for a in extra:  # two `ganpipe schedule` started at once may both have created one
            client.delete_automation(a.id)
        return str(first.id)
