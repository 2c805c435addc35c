"""The artifact store: how variant files and benchmark results travel between the orchestrator and
runners (a shared directory, or S3), never through the orchestrator's memory.

Directories are stored with an index of sha256 checksums; a download is verified before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tasks.errors import ModelPressError
from tasks.io import sha256_file

INDEX = ".files.json"


class StoreError(ModelPressError):
    """The artifact store cannot be read or written, or a download failed verification."""


class ArtifactStore:
    """put/get of files under string keys, in a directory or an S3 bucket/prefix."""

    def __init__(
        self, uri: str, endpoint_url: str | None = None, region: str = "us-east-1"
    ) -> None:
        self.uri = uri
        self._bucket: str | None = None
        if uri.startswith("s3://"):
            import boto3
            from botocore.config import Config

            self._bucket, _, prefix = uri[len("s3://") :].partition("/")
            self._prefix = prefix.strip("/")
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5)
            self._s3 = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        else:
            self._root = Path(uri).resolve()

    # -- bytes ------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        if self._bucket is None:
            target = self._root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        else:
            self._s3.put_object(Bucket=self._bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            if self._bucket is None:
                return (self._root / key).read_bytes()
            return self._s3.get_object(Bucket=self._bucket, Key=self._key(key))["Body"].read()
        except FileNotFoundError:
            raise StoreError(f"{self.uri}: {key} not found in the artifact store") from None
        except Exception as exc:  # botocore ClientError / connection errors
            raise StoreError(f"{self.uri}: cannot read {key} ({type(exc).__name__})") from None

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

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key
