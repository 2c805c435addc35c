"""The project's error types: one line each, naming the culprit and what was expected."""

from __future__ import annotations

import re


class ModelPressError(Exception):
    """A user-facing problem: bad input, bad config, missing file. Printed as one line."""


class ConfigError(ModelPressError):
    """params.yaml (or an override) is invalid."""


class DataError(ModelPressError):
    """Input data is missing, malformed or inconsistent."""


class ModelError(ModelPressError):
    """A model file is missing, corrupt, or does not fit the data."""


class VariantError(ModelPressError):
    """A compression technique cannot handle this model; the variant is recorded as failed."""


class RegistryError(ModelPressError):
    """The registry refused or failed an operation: bad name, immutable version, bad checksum, S3 trouble."""


class StoreError(ModelPressError):
    """The artifact store cannot be read or written, or a download failed verification."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def brief(detail: object, limit: int = 300, last_line: bool = False) -> str:
    """One line of an underlying error, for the end of a ModelPressError message.

    The first (or last) non-empty line, without terminal colour codes; a line over `limit`
    characters is cut at a word boundary and marked with "…", never mid-word (the
    issue's "(… instea)" told the user less than nothing).
    """
    text = str(detail)
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    if not lines:
        return type(detail).__name__ if isinstance(detail, BaseException) else ""
    line = lines[-1] if last_line else lines[0]
    if len(line) <= limit:
        return line
    if " " not in line[: limit + 1]:
        return line  # one long word (a path): whole, not cut
    return line[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"


class ServerAuthError(ModelPressError):
    """The Prefect server wants a credential (the stack's auth string) this client lacks."""

    @classmethod
    def from_settings(cls) -> ServerAuthError:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

        url = PREFECT_API_URL.value()
        hint = 'for the local stack: eval "$(infra/stack.sh env)"'
        if PREFECT_API_AUTH_STRING.value():  # never echoed: it is the secret
            return cls(
                f"the Prefect server at {url} refused PREFECT_API_AUTH_STRING (401; "
                f"rotated? {hint})"
            )
        return cls(
            f"the Prefect server at {url} wants a credential (401): set "
            f"PREFECT_API_AUTH_STRING ({hint})"
        )


class DataValidationError(ModelPressError):
    """The data suite failed: the message names each failing check."""


class FetchError(ModelPressError):
    """The repo, rev or path cannot be read."""


class FetchNotFoundError(FetchError):
    """The rev or path does not exist: asking again cannot help (not retried)."""


def process_ended(exit_code: int) -> str:
    """How a child process ended, from its exit code, for the end of a message ("exited with
    code 3", "was killed by SIGKILL (…)"): a negative code is the signal that ended it."""
    import signal

    if exit_code >= 0:
        return f"exited with code {exit_code}"
    try:
        how = signal.Signals(-exit_code).name
    except ValueError:
        how = f"signal {-exit_code}"
    if -exit_code == signal.SIGKILL:
        how += " (the kernel's out-of-memory killer sends SIGKILL: is memory short?)"
    return f"was killed by {how}"
