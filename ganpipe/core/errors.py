"""User-facing errors: raised where the problem is found, printed at the CLI boundary as one line."""


class GanpipeError(Exception):
    """A problem the user can fix (bad config, bad data, missing input); exit code 2 at the CLI."""


class ConfigError(GanpipeError):
    """params.yaml is invalid: unknown or missing key, wrong type or out-of-range value."""


class DataError(GanpipeError):
    """Input data is missing, unreadable or unusable."""


class RegistryError(GanpipeError):
    """The model registry is not in the state an operation needs."""


class TrainingError(GanpipeError):
    """Training could not produce a usable generator: it diverged past its rollbacks or collapsed."""
