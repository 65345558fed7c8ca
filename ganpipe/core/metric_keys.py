"""The metric vocabulary every layer shares: the metric names, the keys each reports, and which way
each key is better. This is the one place that says whether higher is better: `is_better()` drives the
best-snapshot choice, sweeps, comparisons and promotion. The functions behind the names live in
`ganpipe.evaluation.metrics`, which reports exactly these keys (tested)."""

from __future__ import annotations

from ganpipe.core.errors import ConfigError

REPORTS: dict[str, dict[str, bool]] = {  # metric name -> {reported key: higher is better}
    "fid": {"fid": False},
    "kid": {"kid": False},
    "is": {"is": True},
    "pr": {"precision": True, "recall": True},
    "dc": {"density": True, "coverage": True},
    "memorization": {"memorization": False},
}
METRIC_NAMES: tuple[str, ...] = tuple(REPORTS)
DIRECTIONS: dict[str, bool] = {k: v for keys in REPORTS.values() for k, v in keys.items()}


def higher_is_better(key: str) -> bool:
    try:
        return DIRECTIONS[key]
    except KeyError:
        raise ConfigError(f"unknown metric key {key!r} (valid: {', '.join(DIRECTIONS)})") from None


def is_better(key: str, a: float, b: float) -> bool:
    """True when value `a` of metric key `key` is strictly better than `b`."""
    return a > b if higher_is_better(key) else a < b
