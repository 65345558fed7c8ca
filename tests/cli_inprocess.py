"""The `ganpipe` CLI run in the test process, without a new interpreter's seconds of imports."""

from __future__ import annotations

import os
import sys
import warnings

from ganpipe.cli import main


def _mlflow_uris() -> tuple[str | None, str | None]:
    """MLflow's tracking and registry URIs as set in this process; None: not set (MLflow's default)."""
    if "mlflow" not in sys.modules:  # not imported yet: nothing set, and no seconds spent importing it
        return None, None
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri


def run_in_process(capsys, *argv) -> tuple[int, str, str]:
    """`ganpipe ARGV...` in this process: (exit code, stdout, stderr). For the CLI's error paths; tests about the process itself
    (a kill, the console script) start a real one.

    Afterwards os.environ and MLflow's tracking and registry URIs are as before (the CLI sets telemetry
    and pickle variables, `tracking.configure` the URIs). Warnings are appended to stderr as a fresh
    interpreter's default filters would print them: pytest would otherwise record them out of sight, and
    "one clear line" checks would pass over them."""
    env, uris = dict(os.environ), _mlflow_uris()
    capsys.readouterr()  # what the test printed before is not the command's
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
    finally:
        if _mlflow_uris() != uris:
            import mlflow

            mlflow.set_tracking_uri(uris[0])
            mlflow.set_registry_uri(uris[1])
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)
    out, err = capsys.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return code, out, err
