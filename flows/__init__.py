"""Prefect flows: they compose tasks that reproduce DVC stages; no stage logic lives here."""
