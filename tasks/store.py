"""The artifact store: how variant files and benchmark results travel between the orchestrator and
runners (a shared directory, or S3), never through the orchestrator's memory.

A thin client of the registry's storage backends (one S3 client configuration, one atomic
writer); unlike the registry, a put replaces what is under its key. Directories are stored with
an index of sha256 checksums; a download is verified before use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tasks.errors import RegistryError, StoreError, brief
from tasks.io import sha256_file
from tasks.registry.base import Storage
from tasks.registry.local import LocalRegistry
from tasks.registry.s3 import S3Registry

__all__ = ["INDEX", "ArtifactStore", "StoreError"]

INDEX = ".files.json"
_SETTINGS = ("benchmark.store_uri", "benchmark.store_endpoint_url")  # named in S3 error messages


class ArtifactStore:
    """put/get of files under string keys, in a directory or an S3 bucket/prefix."""

    def __init__(
        self, uri: str, endpoint_url: str | None = None, region: str = "us-east-1"
    ) -> None:
        self.uri = uri
        self._backend: Storage
        if uri.startswith("s3://"):
            bucket, _, prefix = uri[len("s3://") :].partition("/")
            if not bucket:
                raise StoreError(f"{uri}: s3:// needs a bucket name (s3://bucket/prefix)")
            self._backend = S3Registry(
                bucket, prefix, endpoint_url=endpoint_url, region=region, settings=_SETTINGS
            )
        else:
            self._backend = LocalRegistry(Path(uri).resolve(), what="artifact store directory")

    # -- bytes ------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._backend._replace(key, data)
        except RegistryError as exc:
            raise StoreError(f"{self.uri}: cannot write {key} ({brief(exc)})") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            data = self._backend._read(key)
        except RegistryError as exc:
            raise StoreError(f"{self.uri}: cannot read {key} ({brief(exc)})") from None
        if data is None:
            raise StoreError(f"{self.uri}: {key} not found in the artifact store")
        return data

    def put_json(self, key: str, payload: Any) -> None:
        self.put_bytes(key, json.dumps(payload, indent=1).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    # -- directories ---------------------------------------------------------------------------

    def put_dir(self, directory: Path, key: str) -> None:
        """Upload every file of `directory` under `key/`, then its checksum index (last)."""
        index = {}
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            self.put_bytes(f"{key}/{rel}", path.read_bytes())
            index[rel] = sha256_file(path)
        self.put_json(f"{key}/{INDEX}", index)

    def get_dir(self, key: str, dest: Path) -> Path:
        """Download `key/` into dest, verifying every file's sha256 against the index first."""
        index = self.get_json(f"{key}/{INDEX}")
        dest.mkdir(parents=True, exist_ok=True)
        for rel, expected in index.items():
            data = self.get_bytes(f"{key}/{rel}")
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise StoreError(
                    f"{self.uri}: {key}/{rel} has sha256 {actual}, index says {expected}"
                )
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return dest
