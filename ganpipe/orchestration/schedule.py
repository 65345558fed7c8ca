"""`ganpipe server` and `ganpipe schedule`: a nightly training run on a real Prefect server.

`serve(cron=...)` needs a real API server, not the temporary one Prefect starts for a single flow run
(PrefectHQ/examples#18): `schedule` refuses to run without PREFECT_API_URL and says how to get one.
Schedules stay active when the serving process stops (`pause_on_shutdown=False`, prefect#16363), so a
restart of the process picks the same schedule up again. Served runs send heartbeats, and the server's
watchdog automation (ganpipe/orchestration/watchdog.py) marks a run whose machine died Crashed instead of leaving it
Running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ganpipe.core.errors import ConfigError
from ganpipe.core.params import ScheduleParams
from ganpipe.core.redact import redact
from ganpipe.orchestration.notify import configured
from ganpipe.orchestration.watchdog import ensure_automation, heartbeats

FLOW = "training-pipeline"
LEASE_STORAGE_ENV = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"


def server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """A local Prefect server (SQLite under PREFECT_HOME, ~/.prefect by default)."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]


def api_url() -> str:
    """The Prefect API the deployment is served to; a ConfigError when there is none."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "no Prefect server: start one with `ganpipe server` (or use your team's), then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return url


def cron_schedule(sp: ScheduleParams):
    """The schedule object; a bad cron string is a ConfigError naming schedule.cron."""
    from prefect.schedules import Cron
    from pydantic import ValidationError

    try:
        return Cron(sp.cron, timezone=sp.timezone)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"schedule.cron = {sp.cron!r}: {str(exc).splitlines()[-1].strip()}") from None


def serve_nightly(sp: ScheduleParams, root: str | Path) -> None:
    """Serve deployment `training-pipeline/<sp.deployment>` on its cron; runs until interrupted."""
    from ganpipe.orchestration.pipeline import training_pipeline

    url = api_url()
    schedule = cron_schedule(sp)
    ensure_automation(sp, configured(sp.webhook_url))
    print(
        f"serving {FLOW}/{sp.deployment} on {redact(url)}: cron '{sp.cron}' ({sp.timezone}) for {Path(root).resolve()}; "
        f"runs silent for {sp.crashed_after_s} s are marked Crashed",
        flush=True,
    )
    with heartbeats(sp):
        training_pipeline.serve(
            name=sp.deployment,
            schedules=[schedule],
            parameters={"project_dir": str(Path(root).resolve())},
            pause_on_shutdown=False,
            print_starting_message=False,
        )
