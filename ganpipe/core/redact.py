"""Secrets out of everything ganpipe writes for people: log lines, Prefect artifacts, MLflow run
descriptions and tags, error messages.

What counts as a secret: the password of a URI (`postgresql://user:PASSWORD@db/mlflow`), the path and
query of a webhook URL (a Slack or Teams incoming webhook's path is its token), and the values of query
parameters named like credentials (`?token=...`, `sig=...`). Hosts, ports and user names stay: they say
where things went without granting access.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@host  (the password may hold anything but '@', '/', whitespace)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^@/\s'\"]+)@")
_CREDENTIAL_PARAM = re.compile(
    r"(?P<key>[?&](?:access_token|token|key|api_key|apikey|secret|password|passwd|pwd|sig|signature|code|auth)=)"
    r"(?P<value>[^&#\s'\"]+)",
    re.IGNORECASE,
)
# Incoming-webhook URLs whose path is the credential, wherever they appear in a text.
_WEBHOOK = re.compile(
    r"(?P<base>https?://(?:hooks\.slack\.com|discord(?:app)?\.com/api/webhooks|[\w.-]*webhook\.office\.com"
    r"|outlook\.office\.com/webhook|chat\.googleapis\.com))(?P<rest>/[^\s'\"]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """A URL as it may be shown: no password, and no path or query (a webhook's path is its token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return redact(url)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    path = f"/{MASK}" if parts.path not in ("", "/") or parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URI passwords, credential query values, webhook paths and each string of `secrets`
    (for example a configured webhook URL, in any form it was written) replaced by ***."""
    for s in sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True):
        text = text.replace(s, redact_url(s) if "://" in s else MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _CREDENTIAL_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
    return _WEBHOOK.sub(lambda m: f"{m['base']}/{MASK}", text)
