"""Failure notices: a log line always, and a JSON POST to a webhook when one is configured.

The webhook is `schedule.webhook_url` in params.yaml, else $GANPIPE_WEBHOOK_URL (which also works when
params.yaml itself is what broke). The body carries `text` (what Slack and Teams incoming webhooks show)
and the structured fields. A webhook that fails is logged, never raised: a notice must not mask the
failure it reports.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path

from ganpipe.core.errors import GanpipeError
from ganpipe.core.redact import redact, redact_url

ENV = "GANPIPE_WEBHOOK_URL"
log = logging.getLogger("ganpipe.notify")


def webhook_url(project_dir: str | Path | None) -> str | None:
    """The configured webhook: params.yaml's schedule.webhook_url, else $GANPIPE_WEBHOOK_URL."""
    url = None
    if project_dir is not None:
        from ganpipe.core.params import load_params
        from ganpipe.core.paths import layout

        try:
            url = load_params(layout(project_dir).params_path).schedule.webhook_url
        except GanpipeError:
            url = None
    return configured(url)


def configured(params_url: str | None) -> str | None:
    """`schedule.webhook_url` when set, else $GANPIPE_WEBHOOK_URL."""
    return params_url or os.environ.get(ENV) or None


def failure_notice(flow: str, run_name: str, run_id: str, state: str, message: str, project_dir: str | None) -> dict:
    """Log the failure; POST it to the webhook when one is configured. Returns the notice."""
    url = webhook_url(project_dir)
    message = redact(message, [url] if url else [])  # a state message may quote a URI with its password
    notice = {
        "text": f"ganpipe: flow run {flow}/{run_name} {state.lower()}: {message}",
        "flow": flow,
        "flow_run_name": run_name,
        "flow_run_id": run_id,
        "state": state,
        "message": message,
        "project_dir": project_dir,
    }
    log.error(notice["text"])
    if url:
        req = urllib.request.Request(
            url, data=json.dumps(notice).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except Exception as exc:  # unreachable, refused, malformed URL: say so, never mask the failure
            log.error(
                "ganpipe: the failure webhook %s did not take the notice: %s", redact_url(url), redact(str(exc), [url])
            )
    return notice


def notify_hook(flow, flow_run, state) -> None:
    """Prefect on_failure / on_crashed hook of ganpipe's flows: a log line always, the webhook when configured."""
    failure_notice(
        flow.name,
        flow_run.name,
        str(flow_run.id),
        state.name,
        state.message or "",
        flow_run.parameters.get("project_dir"),
    )
