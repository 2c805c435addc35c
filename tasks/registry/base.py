"""The storage interface a registry backend implements: a few primitives on '/'-joined keys.

Keys are paths relative to the registry root, e.g. 'model/v1/manifest.json'. Every write the
registry protocol makes goes through `_create`, which is create-only: it never changes an
object that exists, so a published version cannot change and the first of two racing writers
wins. `_replace` (an overwrite) exists for the artifact store only; the registry never calls it.
"""

from __future__ import annotations

import abc
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time when hashing or copying


class Storage(abc.ABC):
    """Bytes under keys, in a local directory or an S3 bucket; the backends implement this."""

    @property
    @abc.abstractmethod
    def uri(self) -> str:
        """The registry root as a user would write it in params.yaml."""

    @abc.abstractmethod
    def _uri_of(self, key: str) -> str:
        """The full address of `key`, for messages and results."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such object."""

    @abc.abstractmethod
    def _create(self, key: str, source: Path | bytes, sha256: str) -> bool:
        """Write `source` at `key` only if nothing is there; False (and no change) if something is."""

    @abc.abstractmethod
    def _replace(self, key: str, data: bytes) -> None:
        """Write `data` at `key` whole, over whatever is there (the artifact store's put)."""

    @abc.abstractmethod
    def _sha256_of(self, key: str) -> str:
        """Hex sha256 of the object stored at `key` (S3 may answer from the stored checksum)."""

    @abc.abstractmethod
    def _digest(self, key: str) -> tuple[int, str] | None:
        """(size, hex sha256) of the bytes read back from `key`, or None if it is missing."""

    @abc.abstractmethod
    def _children(self, key: str) -> list[str]:
        """Names of the immediate sub-folders of `key` ('' is the root)."""

    @abc.abstractmethod
    def _files(self, key: str) -> dict[str, int]:
        """Every object under the folder `key`, at any depth: {path relative to it: size}."""

    @abc.abstractmethod
    def _download(self, key: str, target: Path) -> None: ...


def join(*parts: str) -> str:
    """A key from its parts: join('model', 'v1', 'manifest.json')."""
    return "/".join(parts)
