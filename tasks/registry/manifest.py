"""What the registry stores: the layout's names, names that are safe path segments, the manifest
(build, encode, parse, validate) and the small JSON markers beside it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.errors import RegistryError, brief
from tasks.io import json_default
from tasks.runtimes import FORMATS  # the registry accepts what some runtime runs
from tasks.variant import RECORD_NAME, published_files

MANIFEST_NAME = "manifest.json"
RESERVATION_NAME = ".reserved"  # <model>/<version>/.reserved: allocate_version's marker
CLAIM_NAME = ".claim"  # <model>/<version>/.claim: the files a publish of this version uploads
MARKERS = frozenset({RESERVATION_NAME, CLAIM_NAME})
STALE_RESERVATION = timedelta(hours=1)  # a bare reservation/claim older than this is orphaned
# <model>/decisions/: one JSON record per review decision (approved, nothing approved, refused,
# timed out), kept with the model so "who rejected last night's int8, and why" has an answer
DECISIONS_DIR = "decisions"
MANIFEST_SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_FIELDS = ("schema", "model", "version", "created_at", "variants")


@dataclass(frozen=True)
class PublishEntry:
    """One approved variant to publish: its directory (model file(s) + variant.json) and review data."""

    directory: Path
    format: str  # one of FORMATS
    input: dict[str, Any]
    metrics: dict[str, Any]
    gates: dict[str, Any]
    approval: dict[str, Any]  # approved_by, approved_at, comment
    output: dict[str, Any] = field(default_factory=dict)  # output tensor: dtype, quantization
    data: dict[str, Any] = field(default_factory=dict)  # source, sha256, splits, evaluation split
    # how it was made: technique, source, settings and the facts its build recorded (e.g. an int8
    # variant's calibration_samples actually used and the float_layers it kept in float)
    build: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalFile:
    """A file a publish uploads, hashed once before any write."""

    path: Path
    sha256: str
    size_bytes: int


# ── names and paths ──


def is_name(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


def check_name(field: str, value: str) -> None:
    """Refuse a model, version or variant name that is not one safe path segment."""
    if not isinstance(value, str) or not is_name(value):
        raise RegistryError(
            f"{field} name {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..'"
        )
    if field == "version" and value == DECISIONS_DIR:
        raise RegistryError(f"version name {value!r} is reserved for the review decision records")


def safe_relative(relative: str) -> PurePosixPath:
    """A manifest path that stays inside the pulled directory."""
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise RegistryError(f"manifest file path {relative!r} escapes the variant directory")
    return path


def natural_sorted(names: list[str]) -> list[str]:
    """Natural order: digit runs compare as numbers, so v2 sorts before v10."""
    return sorted(
        names,
        key=lambda n: [
            (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", n) if t
        ],
    )


# ── building a manifest ──


def check_entries(entries: dict[str, PublishEntry]) -> dict[str, dict[str, LocalFile]]:
    """Validate every entry and hash its files: {variant: {relative path: file}}."""
    if not entries:
        raise RegistryError("nothing to publish: no approved variants given")
    for variant in entries:
        check_name("variant", variant)
    return {variant: _check_entry(variant, entry) for variant, entry in entries.items()}


def _check_entry(variant: str, entry: PublishEntry) -> dict[str, LocalFile]:
    directory = Path(entry.directory)
    if not (directory / RECORD_NAME).is_file():
        raise RegistryError(
            f"variant {variant!r}: {directory} has no {RECORD_NAME}; is it a variant directory?"
        )
    if entry.format not in FORMATS:
        raise RegistryError(
            f"variant {variant!r}: format {entry.format!r}; expected one of {', '.join(FORMATS)}"
        )
    missing = [k for k in ("approved_by", "approved_at") if not entry.approval.get(k)]
    if missing:
        raise RegistryError(
            f"variant {variant!r}: approval lacks {', '.join(missing)}; only approved variants are published"
        )
    return {
        relative: LocalFile(directory / relative, file["sha256"], file["size_bytes"])
        for relative, file in published_files(directory).items()
    }


def build_manifest(
    model: str,
    version: str,
    entries: dict[str, PublishEntry],
    files: dict[str, dict[str, LocalFile]],
    lineage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "model": model,
        "version": version,
        "created_at": now(),
        "lineage": lineage,
        "variants": {
            variant: {
                "files": {
                    rel: {"sha256": f.sha256, "size_bytes": f.size_bytes}
                    for rel, f in files[variant].items()
                },
                "format": entry.format,
                "input": entry.input,
                "output": entry.output,
                "data": entry.data,
                "build": entry.build,
                "metrics": entry.metrics,
                "gates": entry.gates,
                "approval": entry.approval,
            }
            for variant, entry in entries.items()
        },
    }


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, default=json_default) + "\n").encode()


def fingerprint(files: dict[str, dict[str, LocalFile]]) -> str:
    """sha256 of what a publish uploads (variant, path, sha256, size): the claim's identity."""
    listing = {
        variant: {rel: [f.sha256, f.size_bytes] for rel, f in sorted(entries.items())}
        for variant, entries in sorted(files.items())
    }
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def same_publish(stored: bytes, manifest: dict[str, Any]) -> bool:
    """Whether a stored manifest is this one apart from created_at (an earlier try of it)."""
    try:
        existing = json.loads(stored)
    except ValueError:
        return False
    ours = json.loads(encode_manifest(manifest))
    if not isinstance(existing, dict):
        return False
    existing.pop("created_at", None)
    ours.pop("created_at", None)
    return bool(existing == ours)


# ── reading a manifest ──


def parse_manifest(body: bytes, model: str, version: str) -> dict[str, Any]:
    """The manifest stored at model/version; ValueError naming the first thing wrong with it."""
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({brief(exc)})") from None
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in _MANIFEST_FIELDS if name not in manifest]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if manifest["schema"] != MANIFEST_SCHEMA:
        raise ValueError(f"schema {manifest['schema']!r}; expected {MANIFEST_SCHEMA}")
    if (manifest["model"], manifest["version"]) != (model, version):
        raise ValueError(
            f"names {manifest['model']!r}/{manifest['version']!r} but is stored under {model}/{version}"
        )
    variants = manifest["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants: expected a non-empty object")
    for name, variant in variants.items():
        _check_manifest_variant(name, variant)
    return manifest


def _check_manifest_variant(name: str, variant: Any) -> None:
    """ValueError unless `variant` has a format and a non-empty, well-formed files listing."""
    if not is_name(name) or not isinstance(variant, dict) or "format" not in variant:
        raise ValueError(f"variant {name!r}: expected a named object with format and files")
    files = variant.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"variant {name!r}: files: expected a non-empty object")
    for relative, meta in files.items():
        try:
            safe_relative(relative)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        if not _is_file_meta(meta):
            raise ValueError(f"variant {name!r}: {relative}: expected sha256 and size_bytes")


def _is_file_meta(meta: Any) -> bool:
    """A manifest file entry: 64 hex digits of sha256 and a non-negative integer size."""
    if not isinstance(meta, dict):
        return False
    size = meta.get("size_bytes")
    return (
        isinstance(meta.get("sha256"), str)
        and bool(_SHA256.match(meta["sha256"]))
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    )


def listed_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every file a (parsed) manifest lists: {'<variant>/<path>': {sha256, size_bytes}}."""
    return {
        f"{variant}/{relative}": meta
        for variant, entry in manifest["variants"].items()
        for relative, meta in entry["files"].items()
    }


def variant_files(
    manifest: dict[str, Any], model: str, version: str, variant: str
) -> dict[str, dict[str, Any]]:
    variants = manifest.get("variants", {})
    if variant not in variants:
        raise RegistryError(
            f"{model}/{version} has no variant {variant!r}; it has: {', '.join(sorted(variants)) or 'none'}"
        )
    return variants[variant]["files"]


# ── markers (.reserved, .claim) ──


def encode_json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()


def json_field(body: bytes, name: str) -> Any:
    """`name` from a JSON object in `body`, or None if it is not one or lacks it."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value.get(name) if isinstance(value, dict) else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
