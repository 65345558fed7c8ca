"""Aliases of the registered model: who holds `champion` / `challenger`, every move recorded (who,
when, from, to, how, why), the post-promotion check that moves an alias back, promote and rollback."""

from __future__ import annotations

import getpass
import json
import socket
import time
from datetime import UTC, datetime

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganpipe.core.errors import RegistryError
from ganpipe.core.locking import registry_lock
from ganpipe.nets.models import classes, latents
from ganpipe.registry.refs import Scope, load_generator

CHALLENGER = "challenger"  # the latest version that did not pass the gate
HISTORY_PREFIX = "alias_move."
POST_CHECK = "post-promotion check"
CHECK_IMAGES = 16
MIN_DIVERSITY = 1e-5  # mean pairwise RMS pixel distance (in [-1, 1] units) below which images are "all alike"


class PromotionCheckFailed(RegistryError):
    """The model an alias was just moved to failed its post-promotion check; the alias was moved back."""


def current_holder(client: MlflowClient, name: str, alias: str):
    """The model version holding `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def move_alias(client: MlflowClient, name: str, alias: str, version: str, via: str, reason: str) -> dict:
    """Point `alias` at `version` and record the move (who, when, from, to, how, why) as a tag of the
    registered model: `ganpipe history` reads them back."""
    holder = current_holder(client, name, alias)
    event = {
        "alias": alias,
        "from": None if holder is None else str(holder.version),
        "to": str(version),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": _actor(),
        "via": via,
        "reason": reason,
    }
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{time.time_ns()}", json.dumps(event))
    return event


def history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded alias move, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        raise RegistryError(f"{name}: {exc.message.splitlines()[0]}") from None
    return [
        json.loads(tags[k])
        for k in sorted((k for k in tags if k.startswith(HISTORY_PREFIX)), key=lambda k: int(k[len(HISTORY_PREFIX) :]))
    ]


def holder_before(client: MlflowClient, name: str, alias: str, version: str):
    """The version `alias` pointed at before it was last moved to `version` (None if none)."""
    moves = [e for e in history(client, name) if e["alias"] == alias and e["to"] == str(version)]
    if not moves or moves[-1]["from"] is None:
        return None
    return client.get_model_version(name, moves[-1]["from"])


def verify_alias(client: MlflowClient, name: str, alias: str, expected: str, previous: str | None) -> None:
    """Post-promotion check: what `models:/NAME@ALIAS` serves now is `expected`, its raw output is
    finite and its images are not all alike. On failure the alias goes back and PromotionCheckFailed."""
    problem = None
    try:
        served = current_holder(client, name, alias)
        if served is None or str(served.version) != str(expected):
            problem = f"alias {alias} points at {None if served is None else served.version}, not v{expected}"
        else:
            G = load_generator(f"models:/{name}@{alias}", Scope.only(name))
            with torch.no_grad():
                x = G(latents(range(CHECK_IMAGES), G.z_dim), classes(G, range(CHECK_IMAGES)))
            if not torch.isfinite(x).all():
                problem = "the generator's output is not finite"
            elif (diversity := float(torch.pdist(x.flatten(1)).mean() / x[0].numel() ** 0.5)) < MIN_DIVERSITY:
                problem = (
                    f"{CHECK_IMAGES} images are (nearly) identical (diversity {diversity:.2g} < {MIN_DIVERSITY:g})"
                )
    except Exception as exc:  # whatever breaks loading or running it, the alias must not stay on it
        problem = f"cannot load and run it ({type(exc).__name__}: {exc})"
    if problem is None:
        return
    if previous is not None:
        move_alias(client, name, alias, previous, POST_CHECK, f"v{expected} failed: {problem}")
    else:
        client.delete_registered_model_alias(name, alias)
    raise PromotionCheckFailed(
        f"post-promotion check of {name}@{alias} = v{expected} failed: {problem}; "
        f"{alias} is back on {'v' + previous if previous else 'no version'}"
    )


def promote(
    client: MlflowClient, name: str, alias: str, version: str, reason: str, via: str = "promote (manual)"
) -> dict:
    """Manual override: move `alias` to `version` (no gate), then the post-promotion check. `via` says from
    where (the CLI, the studio), in the history."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} v{version}: {exc.message.splitlines()[0]}") from None
    with registry_lock(mlflow.get_tracking_uri(), name):
        event = move_alias(client, name, alias, str(version), via, reason)
        verify_alias(client, name, alias, str(version), event["from"])
    return event


def rollback(client: MlflowClient, name: str, alias: str, reason: str, via: str = "rollback") -> dict:
    """Move `alias` back to the version it held before its current one."""
    with registry_lock(mlflow.get_tracking_uri(), name):
        return _rollback(client, name, alias, reason, via)


def _rollback(client: MlflowClient, name: str, alias: str, reason: str, via: str) -> dict:
    holder = current_holder(client, name, alias)
    if holder is None:
        raise RegistryError(f"{name} has no {alias} to roll back")
    events = [e for e in history(client, name) if e["alias"] == alias]
    failed = {e["from"] for e in events if e["via"] == POST_CHECK}  # never roll back onto a broken version
    moves = [
        e
        for e in events
        if e["to"] == str(holder.version) and e["from"] and e["via"] != POST_CHECK and e["from"] not in failed
    ]
    if not moves:
        raise RegistryError(f"{name}@{alias} = v{holder.version} has no previous version to roll back to")
    event = move_alias(client, name, alias, moves[-1]["from"], via, reason)
    verify_alias(client, name, alias, event["to"], event["from"])
    return event
