"""The artifact registry: publish approved variants, list them, pull them back verified.

One module per concern, in the shape of httpx's `_transports/`:

    base.py      the storage primitives a backend implements (create-only writes)
    protocol.py  Registry: allocate, publish, decisions, list, pull, verify (layout in its docstring)
    verify.py    verify()'s checks of one version: Problem, VerifyReport
    manifest.py  the layout's names, safe names and paths, the manifest (build, encode, parse)
    local.py     LocalRegistry: a local (or mounted) directory
    s3.py        S3Registry: a bucket; the one boto client configuration and S3 error descriptions
"""

from __future__ import annotations

from pathlib import Path

from tasks.config import RegistryConfig
from tasks.errors import RegistryError
from tasks.registry.local import LocalRegistry
from tasks.registry.manifest import (
    CLAIM_NAME,
    DECISIONS_DIR,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    RESERVATION_NAME,
    STALE_RESERVATION,
    PublishEntry,
    check_name,
)
from tasks.registry.protocol import PublishResult, Registry
from tasks.registry.s3 import S3_MAX_ATTEMPTS, S3Registry, make_client
from tasks.registry.verify import Problem, ProblemKind, VerifyReport
from tasks.runtimes import FORMATS

__all__ = [
    "CLAIM_NAME",
    "DECISIONS_DIR",
    "FORMATS",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "RESERVATION_NAME",
    "S3_MAX_ATTEMPTS",
    "STALE_RESERVATION",
    "LocalRegistry",
    "Problem",
    "ProblemKind",
    "PublishEntry",
    "PublishResult",
    "Registry",
    "RegistryError",
    "S3Registry",
    "VerifyReport",
    "check_name",
    "make_client",
    "open_registry",
]


def open_registry(cfg: RegistryConfig) -> Registry:
    """A registry for `cfg.uri`: `s3://bucket/prefix` or a local directory (relative to cwd)."""
    uri = cfg.uri.strip()
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return S3Registry(bucket, prefix, endpoint_url=cfg.endpoint_url, region=cfg.region)
    if not uri or "://" in uri:
        raise RegistryError(
            f"registry.uri {cfg.uri!r}: expected a local directory or s3://bucket/prefix"
        )
    return LocalRegistry(Path(uri).expanduser().absolute())
