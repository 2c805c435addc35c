"""The registry in a local (or mounted) directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from tasks.errors import RegistryError
from tasks.io import atomic_file, sha256_file
from tasks.registry.base import CHUNK
from tasks.registry.manifest import STALE_RESERVATION
from tasks.registry.protocol import Registry
from tasks.registry.verify import Problem, VerifyReport


class LocalRegistry(Registry):
    """A registry in a local (or mounted) directory; writes are temp file + exclusive hard link."""

    def __init__(self, root: Path, *, what: str = "registry directory") -> None:
        """`what` names the directory in error messages."""
        self.root = Path(root)
        self.what = what

    @property
    def uri(self) -> str:
        return str(self.root)

    def verify(self, *, stale_after: timedelta = STALE_RESERVATION) -> VerifyReport:
        """The protocol's checks, plus every link under the root: none is followed, and each
        is reported (a link to /etc read as "1,075 files but no manifest.json")."""
        report = super().verify(stale_after=stale_after)
        for link in links_in(self.root) if self.root.is_dir() else []:
            report.problems.append(
                Problem("link", link, "a link (never followed); a registry holds plain files")
            )
        return report

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/")) if key else self.root

    def _uri_of(self, key: str) -> str:
        return str(self._path(key))

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _read(self, key: str) -> bytes | None:
        with self._errors(key):
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError:
                return None

    def _create(self, key: str, source: Path | bytes, sha256: str) -> bool:
        # os.replace would silently overwrite; os.link fails if the target exists, so the
        # first writer wins and a reader never sees a partial file.
        target = self._path(key)
        with self._errors(key):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    written = _copy_hashing(source, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                if written != sha256:
                    raise RegistryError(
                        f"{source if isinstance(source, Path) else key}: changed while publishing "
                        f"(sha256 {written}, expected {sha256})"
                    )
                os.chmod(tmp, 0o644)
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _replace(self, key: str, data: bytes) -> None:
        with self._errors(key), atomic_file(self._path(key)) as tmp:
            tmp.write_bytes(data)

    def _sha256_of(self, key: str) -> str:
        with self._errors(key):
            return sha256_file(self._path(key))

    def _digest(self, key: str) -> tuple[int, str] | None:
        path = self._path(key)
        with self._errors(key):
            try:
                return path.stat().st_size, sha256_file(path)
            except FileNotFoundError:
                return None

    def _children(self, key: str) -> list[str]:
        folder = self._path(key)
        with self._errors(key):
            if not folder.is_dir():
                return []
            # a link is never followed: a registry holds files, and a link to /etc is not a model
            return [
                p.name
                for p in folder.iterdir()
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            ]

    def _files(self, key: str) -> dict[str, int]:
        folder = self._path(key)
        found: dict[str, int] = {}
        with self._errors(key):
            for path in _walk(folder):
                with contextlib.suppress(FileNotFoundError):  # a writer's temp file may go
                    if path.is_file():
                        found[path.relative_to(folder).as_posix()] = path.stat().st_size
        return found

    def _download(self, key: str, target: Path) -> None:
        try:
            shutil.copyfile(self._path(key), target)
        except FileNotFoundError:
            raise RegistryError(
                f"{self._uri_of(key)}: listed in the manifest but missing"
            ) from None

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn OS errors (permissions, a full disk) into one-line RegistryErrors."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise RegistryError(
                f"{self._uri_of(key)}: {reason}; check that the {self.what} "
                f"{self.root} is writable and its disk has room"
            ) from None


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, links left out and never followed."""
    for parent, dirs, files in os.walk(folder, followlinks=False):
        base = Path(parent)
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
        for name in files:
            if not (base / name).is_symlink():
                yield base / name


def links_in(root: Path) -> list[str]:
    """Links anywhere under `root`, relative: verify reports each (nothing follows them)."""
    found = []
    for parent, dirs, files in os.walk(root, followlinks=False):
        base = Path(parent)
        for name in [*dirs, *files]:
            if (base / name).is_symlink():
                found.append((base / name).relative_to(root).as_posix())
    return sorted(found)


def _copy_hashing(source: Path | bytes, handle: Any) -> str:
    """Write `source` to `handle` and return the sha256 of what was written."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        handle.write(source)
        return digest.hexdigest()
    with open(source, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()
