"""The fault suite's stack: built once per module, torn down by pid."""

from __future__ import annotations

import pytest

from tests.faults import harness


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from farm.workers.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("faults")
    model = write_tiny_model(root / "tiny-model", family="sd", seed=1)
    results = harness.results_path()
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("")
    fault_stack = harness.FaultStack(root)
    harness.LOG_DIRS.append(fault_stack.logs)
    try:
        fault_stack.start(model)
        yield fault_stack
    finally:
        fault_stack.stop()


def pytest_terminal_summary(terminalreporter):
    if not harness.RESULTS:
        return
    terminalreporter.write_sep("=", "fault suite: reliability per scenario")
    terminalreporter.write_line(harness.format_table(harness.RESULTS))
    terminalreporter.write_line(f"records: {harness.results_path()}")
    for logs in harness.LOG_DIRS:
        terminalreporter.write_line(f"process logs: {logs}")
