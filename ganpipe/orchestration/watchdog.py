"""Zombie runs: a flow run whose machine died stays "Running" forever unless something notices.

A running Prefect flow sends a heartbeat event every `schedule.heartbeat_s` seconds (from a thread, so a
busy event loop does not silence it). A proactive automation on the server expects, after each heartbeat,
another heartbeat or a final state within `schedule.crashed_after_s`; when none comes, it moves the run to
Crashed (Prefect's recipe: docs "detect zombie flows"). The runner itself only catches a flow process that
dies under it; this catches the runner, the container or the whole machine going away. The automation
watches ganpipe's flows only (by flow name), so other flows on a team server are left alone. With a failure
webhook configured, a second automation POSTs the notice that the dead flow's on_crashed hook can no
longer send, once the Crashed state has been accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ganpipe.core.params import ScheduleParams

AUTOMATION = "ganpipe: crash silent flow runs"
NOTIFIER = "ganpipe: report runs crashed by silence"
WEBHOOK_BLOCK = "ganpipe-failure-webhook"
FLOWS = ("training-pipeline", "sweep")
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
MESSAGE = "no heartbeat for {s} s: the process running this flow died (machine lost, container evicted, or killed with its runner)"


@contextmanager
def heartbeats(sp: ScheduleParams) -> Iterator[None]:
    """Flow runs started inside (in this process, or served runs in its children) send heartbeats every
    `sp.heartbeat_s`: Prefect's default (180 s) could outlast a shorter `crashed_after_s`, and the
    automation would then crash a live run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    saved = os.environ.get(HEARTBEAT_ENV)
    os.environ[HEARTBEAT_ENV] = str(sp.heartbeat_s)
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
    fields = {
        "text": f'("ganpipe: flow run " ~ flow.name ~ "/" ~ flow_run.name ~ " crashed: " ~ {json.dumps(message)})',
        "flow": "flow.name",
        "flow_run_name": "flow_run.name",
        "flow_run_id": "flow_run.id | string",
        "state": '"Crashed"',
        "message": json.dumps(message),
        "project_dir": "flow_run.parameters.project_dir",
    }
    # a value the server cannot look up renders as null rather than losing the whole notice
    return "{" + ", ".join(f'"{k}": {{{{ ({v}) | default(none) | tojson }}}}' for k, v in fields.items()) + "}"


def save_webhook(url: str) -> str:
    """The webhook as a Prefect block (the server calls it, the flow being dead); returns its id."""
    from prefect.blocks.webhook import Webhook

    return str(Webhook(url=url, headers={"Content-Type": "application/json"}).save(WEBHOOK_BLOCK, overwrite=True))


def _flow_runs():
    from prefect.events.schemas.events import ResourceSpecification

    return (
        ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)}),
    )


def automation(sp: ScheduleParams):
    """The watchdog: per flow run, a heartbeat followed by no other event of that run (heartbeat, state
    change, final state of any name) within `sp.crashed_after_s` turns the run Crashed. The server
    refuses Crashed for a run already in a final state, so a run that ended is never touched."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    match, related = _flow_runs()
    return AutomationCore(
        name=AUTOMATION,
        description=f"Marks a {' or '.join(FLOWS)} flow run Crashed when it sends no heartbeat for "
        f"{sp.crashed_after_s} s (its process tree or machine died). Written by `ganpipe watchdog`.",
        enabled=True,
        trigger=EventTrigger(
            match=match,
            match_related=related,
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=sp.crashed_after_s),
        ),
        actions=[
            ChangeFlowRunState(state=StateType.CRASHED, name="Crashed", message=MESSAGE.format(s=sp.crashed_after_s))
        ],
    )


def notifier(sp: ScheduleParams, webhook_block_id: str):
    """POSTs the failure notice once a run has really been moved to Crashed by the watchdog (reacting to
    the accepted state, not to the silence: a run that ended while its last heartbeat was in flight
    is refused the Crashed state and must not be reported)."""
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    match, related = _flow_runs()
    prefix = MESSAGE.split("{s}")[0]
    return AutomationCore(
        name=NOTIFIER,
        enabled=True,
        description="POSTs ganpipe's failure notice for a run the watchdog marked Crashed. Written by `ganpipe watchdog`.",
        trigger=EventTrigger(
            match=ResourceSpecification({**match.root, "prefect.state-message": f"{prefix}*"}),
            match_related=related,
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            CallWebhook(
                block_document_id=webhook_block_id, payload=_notice_template(MESSAGE.format(s=sp.crashed_after_s))
            )
        ],
    )


def _put(client, wanted) -> str:
    """Create `wanted`, or update the automation of the same name; returns its id."""
    found = client.read_automations_by_name(wanted.name)
    if not found:
        return str(client.create_automation(wanted))
    first, *extra = found
    client.update_automation(first.id, wanted)
    for a in extra:  # two `ganpipe schedule` started at once may both have created one
        client.delete_automation(a.id)
    return str(first.id)


def ensure_automation(sp: ScheduleParams, webhook: str | None = None) -> str:
    """Create the watchdog on the Prefect server at PREFECT_API_URL, or bring an existing one (same name)
    up to date with params.yaml, and the notifier when `webhook` (notify.webhook_url) is set; without
    one, a notifier and webhook block left from before are removed. Returns the watchdog's id.
    Idempotent: every `ganpipe schedule` calls it."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        automation_id = _put(client, automation(sp))
        if webhook:
            _put(client, notifier(sp, save_webhook(webhook)))
        else:
            for a in client.read_automations_by_name(NOTIFIER):
                client.delete_automation(a.id)
            try:
                client.delete_block_document(Webhook.load(WEBHOOK_BLOCK)._block_document_id)
            except ValueError:  # no such block
                pass
        return automation_id
