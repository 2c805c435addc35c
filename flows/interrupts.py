"""SIGINT and SIGTERM for the long commands (nightly, search, fleet): stopped within seconds,
nothing left running, and a line saying what was kept.

Before, SIGINT took about a minute (Python joins the task runner's threads at exit, and a build
in one runs on) and SIGTERM ended the process at once, leaving Prefect's temporary server
listening. Here both signals raise in the main thread (KeyboardInterrupt, or Prefect's own
TerminationSignal while its flow engine runs: Prefect marks the run Crashed either way), then every process this one started is stopped (the temporary server, a
Dask LocalCluster, build children: SIGTERM, SIGKILL after a grace) and the process ends without
waiting for threads still inside a build: their work is not kept anyway, and what finished is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import psutil

from tasks.processes import stop_processes

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: its name is the message."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_cleanly(command: str, kept: str) -> Iterator[None]:
    """Run the command's body; on SIGINT or SIGTERM stop everything it started and exit,
    saying `kept` (what the next run finds)."""
    from prefect.exceptions import TerminationSignal

    # SIGINT too: a process started in the background by a non-interactive shell inherits it
    # ignored, and Ctrl-C or `kill -INT` then did nothing until the night ended
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except (KeyboardInterrupt, TerminationSignal) as exc:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the cleanup
            signal.signal(sig, signal.SIG_IGN)
        how = str(exc) or "SIGINT"
        if isinstance(exc, TerminationSignal):
            how = signal.Signals(exc.signal).name
        print(f"\n{command}: interrupted ({how}); stopping", file=sys.stderr, flush=True)
        _deliver_logs()
        children = psutil.Process().children(recursive=True)
        stop_processes(children, grace_s=3.0)
        print(f"{command}: stopped; {kept}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deliver_logs() -> None:
    """The run's last log lines and its Crashed state to the server, briefly: it may be the
    temporary one about to be stopped."""
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=2, at_exit=False)
        EventsWorker.drain_all(timeout=1, at_exit=False)
