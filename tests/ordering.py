"""The order the test processes get the tests in (`pytest -n`): the slow tests first, the longest of them
first, so that no minutes-long test starts last and runs on alone while the other processes sit idle."""

from __future__ import annotations

import pytest

# The longest tests, in seconds (`make test`'s --durations, set-up included, 3 test processes on 2 cores,
# 2026-12-03): handed out first, longest first. In file order the 3-minute team-stack test started among
# the last and ran on alone at the end; the watchdog test mostly waits for its crash window, so the other
# processes use the cores meanwhile.
LONGEST_FIRST = {
    "test_team_stack.py::test_the_pipeline_runs_on_the_team_stack_on_postgresql": 194,
    "test_faults.py::test_killed_sweeps_and_runs_never_block_or_mislead_the_next_run_which_resumes": 182,
    "test_deploy.py::test_work_pool_deployment_runs_through_a_worker": 149,
    "test_multinode.py::test_a_dead_node_fails_the_flows_training_and_its_retry_resumes_on_both_nodes": 149,
    "test_registry_lock.py::test_two_checkouts_on_one_prefect_server_register_one_after_the_other": 119,
    "test_schedule.py::test_a_run_whose_machine_dies_is_marked_crashed_by_the_watchdog": 108,
    "test_flows.py::test_training_pipeline_registers_a_champion_and_leaves_the_dvc_lock": 97,
    "test_flow_failures.py::test_a_killed_training_task_is_retried_and_resumes_in_the_same_mlflow_run": 91,
    "test_ssh_remote.py::test_the_flow_pushes_to_an_ssh_remote_and_another_checkout_pulls_the_same_bytes": 80,
    "test_redaction.py::test_no_output_of_a_pipeline_names_the_password_or_the_token": 63,
    "test_remote_tracking.py::test_pipeline_logs_and_registers_on_a_tracking_server": 58,
    "test_sweep.py::test_sweep_flow_trains_each_candidate_as_an_experiment_and_registers_the_best": 58,
    "test_sweep.py::test_parallel_sweep_runs_the_candidates_through_dvcs_queue": 55,
}


def expected_seconds(item) -> float:
    return LONGEST_FIRST.get(item.nodeid.removeprefix("tests/"), 0)


def order(config, items) -> None:
    """Sort `items` in place: slow before the others, the slow ones by LONGEST_FIRST (the rest in file order)."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, -expected_seconds(item)))
    if not config.args or config.args == list(config.getini("testpaths")):  # the whole suite: no stale names
        stale = set(LONGEST_FIRST) - {item.nodeid.removeprefix("tests/") for item in items}
        if stale and not config.option.keyword and not config.option.markexpr:
            raise pytest.UsageError(f"tests/ordering.py LONGEST_FIRST names tests that do not exist: {sorted(stale)}")
