"""Process environment every ganpipe process sets first: telemetry off, pickles refused.

Kept apart from `ganpipe.core.tracking` so that the CLI sets them without importing MLflow (seconds).
"""

from __future__ import annotations

import os


def quiet_telemetry() -> None:
    """Opt out of usage telemetry of the tools we drive, so nothing waits on the network; no MLflow
    download bars."""
    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(key, "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # a progress bar per downloaded file would bury the one line a refusal prints
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def refuse_pickles() -> None:
    """MLflow may unpickle cloudpickled models (its default allows it): never in a ganpipe process."""
    os.environ[PICKLE_ENV] = "false"
