"""Shared entry-point behaviour: user mistakes print one line and exit non-zero."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tasks.errors import ModelPressError

EXIT_USER_ERROR = 2


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a ModelPressError becomes `error: <message>` and exit code 2."""
    try:
        main()
    except ModelPressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
