"""held_back inside a Prefect run with log_prints: converters' prints are not the run's log."""

from __future__ import annotations

import logging

import pytest


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.usefixtures("prefect_server")
def test_prints_held_back_in_a_task_stay_out_of_the_run_log() -> None:
    from prefect import flow, task

    from tasks.quiet import LOGGER, held_back

    @task
    def convert() -> None:
        print("before the converter")
        with held_back():
            print("")  # onnx2tf's blank lines
            print("converter chatter")
        print("after the converter")

    @flow(log_prints=True)
    def nightly_like() -> None:
        convert()
        with held_back():
            print("flow-level chatter")

    runs, held = _Records(), _Records()
    loggers = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(runs)
    LOGGER.addHandler(held)
    level, LOGGER.level = LOGGER.level, logging.DEBUG
    try:
        nightly_like()
    finally:
        for logger in loggers:
            logger.removeHandler(runs)
        LOGGER.removeHandler(held)
        LOGGER.setLevel(level)
    assert "before the converter" in runs.messages and "after the converter" in runs.messages
    assert not {"", "converter chatter", "flow-level chatter"} & set(runs.messages)
    assert "converter chatter" in held.messages and "flow-level chatter" in held.messages
