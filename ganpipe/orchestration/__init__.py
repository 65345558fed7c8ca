"""Prefect: the training and sweep flows, schedules, the watchdog, notifications and reports."""
