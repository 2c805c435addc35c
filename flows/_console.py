"""`modelpress nightly` on the console: a user mistake said once, Prefect's queued logs sent
before the last line, and the run's result as a few lines of text."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from tasks import quiet
from tasks.errors import ModelPressError

if TYPE_CHECKING:
    from flows.nightly import NightlyResult
    from flows.search import SearchResult


class UserErrorWithoutTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a user mistake
    (ModelPressError) the CLI's one `error:` line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ModelPressError):
            record.modelpress_error = str(record.exc_info[1])  # for UserErrorOnce
            record.exc_info, record.exc_text = None, None
        return True


class UserErrorOnce(logging.Filter):
    """On the console a user mistake is said once, by the CLI's `error:` line: Prefect's "Task
    run failed with exception", "Encountered exception" and "Finished in state Failed(...)"
    lines would repeat it three or four times. Only the console's copy is changed: the run's
    log in the UI keeps Prefect's lines whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "modelpress_error", None) is not None:
            return False  # "failed with exception: <the error>": the error line says it
        message = record.getMessage()
        # "Finished in state Failed('... an exception DataError: <the error>')"
        names = "|".join(sorted(_names(ModelPressError)))
        match = re.search(rf"\b(?:{names}): (.+?)(['\"]\))?$", message)
        if match:
            record.msg = f"{message[: match.start(1)]}see the error line{match.group(2) or ''}"
            record.args = ()
        return True


def _names(cls: type[BaseException]) -> set[str]:
    """The names of an error class and of all its subclasses."""
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _names(sub)
    return names


def say_user_errors_once() -> None:
    """No traceback for a user mistake, and on the console only the CLI's `error:` line."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(UserErrorWithoutTraceback())
    once = UserErrorOnce()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(once)


def deliver_prefect_queues() -> None:
    """Send Prefect's queued logs and events now: drained at exit, they would print after the
    CLI's last line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5, at_exit=False)
    EventsWorker.drain_all(timeout=5, at_exit=False)


def result_text(result: NightlyResult) -> str:
    """The variants table, then what was published, rejected and where everything went."""
    lines = [result.table, ""] if result.table else []
    lines += [
        f"nightly: {result.status} — model {result.model}"
        + (f" version {result.version}" if result.version else "")
    ]
    lines += [f"  published: {', '.join(result.published) or 'nothing'}"]
    if list(result.published) == ["baseline"] and result.rejected:
        lines.append(
            "  note:      no compressed variant passed its gates: this version holds only the "
            "fp32 baseline (see rejected below)"
        )
    if result.unchanged_since and result.unchanged_since.startswith("flow run "):
        lines.append(
            f"  unchanged: {result.unchanged_since} is publishing the same files and inputs "
            "right now (--publish-unchanged publishes anyway)"
        )
    elif result.unchanged_since:
        lines.append(
            f"  unchanged since version {result.unchanged_since}: the approved files and inputs "
            "are those it holds (--publish-unchanged publishes anyway)"
        )
    lines += [f"  rejected:  {name}: {reason}" for name, reason in result.rejected.items()]
    lines += [f"  check:     {hint}" for hint in result.hints]
    if result.manifest_uri:
        lines.append(f"  manifest:  {result.manifest_uri}")
    if result.decision_uri:
        lines.append(f"  decision:  {result.decision_uri}")
    lines.append(f"  registry:  {result.registry_uri}")
    lines.append(f"  run files: {result.run_dir} (Pareto plot, Data Docs)")
    if quiet.native_log is not None:
        lines.append(f"  converter output: {quiet.native_log} (--verbose prints it here)")
    if result.cached_tasks:
        lines.append(f"  cached:    {', '.join(result.cached_tasks)}")
    return "\n".join(lines)


def search_text(result: SearchResult) -> str:
    """The Pareto set, then the pick (or the best attempt) and where the report went."""
    from tasks.search_results import outcomes_table, pareto_trials

    lines = [
        "Pareto set (accuracy vs p50 vs size):",
        outcomes_table(pareto_trials(result.trials)),
        "",
    ]
    lines.append(f"search: {result.status} — {result.message}")
    lines.append(
        f"  trials:  {len(result.trials)} in study {result.study} ({result.ran} this run; "
        f"built {len(result.built)}, cached {len(result.cached)})"
    )
    if result.stopped:
        lines.append(f"  stopped: {result.stopped}")
    if result.outcome is not None:
        lines.append(f"  review:  {result.outcome.status}")
        if result.outcome.manifest_uri:
            lines.append(f"  manifest: {result.outcome.manifest_uri}")
    lines += [f"  rejected: {name}: {reason}" for name, reason in result.rejected.items()]
    lines.append(f"  storage: {result.storage}")
    return "\n".join(lines)
