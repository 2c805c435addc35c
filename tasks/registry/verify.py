"""`Registry.verify()`'s checks of one version directory: what it found, as Problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tasks.errors import RegistryError
from tasks.registry.base import Storage, join
from tasks.registry.manifest import (
    MANIFEST_NAME,
    MARKERS,
    json_field,
    listed_files,
    natural_sorted,
    parse_manifest,
)

ProblemKind = Literal["corrupt", "missing", "orphaned", "bad-manifest", "link", "unreadable"]


@dataclass(frozen=True)
class Problem:
    """One thing `verify()` found wrong; `key` is relative to the registry root."""

    kind: ProblemKind
    key: str
    detail: str


@dataclass
class VerifyReport:
    """What `verify()` read and what it found; orphans alone do not make it fail."""

    checked_versions: int = 0  # versions with a manifest.json
    checked_files: int = 0  # files listed in those manifests
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is corrupt, missing or unreadable (orphaned leftovers are allowed)."""
        return all(problem.kind == "orphaned" for problem in self.problems)


def verify_version(
    storage: Storage, model: str, version: str, report: VerifyReport, stale_after: timedelta
) -> None:
    """Add what is wrong with one version directory to `report`."""
    root = join(model, version)
    stored = storage._files(root)
    data = {rel: size for rel, size in stored.items() if rel not in MARKERS | {MANIFEST_NAME}}
    try:
        body = storage._read(join(root, MANIFEST_NAME)) if MANIFEST_NAME in stored else None
    except RegistryError as exc:  # unreadable (permissions): listed, the others still checked
        report.problems.append(Problem("unreadable", join(root, MANIFEST_NAME), str(exc)))
        return
    if body is None:
        report.problems.extend(_unpublished_problems(storage, root, data, stored, stale_after))
        return
    report.checked_versions += 1
    try:
        manifest = parse_manifest(body, model, version)
    except ValueError as exc:
        report.problems.append(Problem("bad-manifest", join(root, MANIFEST_NAME), str(exc)))
        return
    listed = listed_files(manifest)
    for relative, expected in listed.items():
        report.checked_files += 1
        try:
            problem = _check_file(storage, join(root, relative), data.get(relative), expected)
        except RegistryError as exc:
            problem = Problem("unreadable", join(root, relative), str(exc))
        if problem is not None:
            report.problems.append(problem)
    for relative in natural_sorted(list(set(data) - set(listed))):
        report.problems.append(
            Problem("orphaned", join(root, relative), f"not listed in {MANIFEST_NAME}")
        )


def _check_file(
    storage: Storage, key: str, stored_size: int | None, expected: dict[str, Any]
) -> Problem | None:
    """A missing/corrupt Problem for one listed file, or None if its bytes match."""
    if stored_size is None:
        return Problem("missing", key, f"listed in {MANIFEST_NAME} but not stored")
    want = f"sha256 {expected['sha256']} ({expected['size_bytes']} bytes)"
    if stored_size != expected["size_bytes"]:
        return Problem("corrupt", key, f"{stored_size} bytes stored, manifest says {want}")
    digest = storage._digest(key)
    if digest is None:
        return Problem("missing", key, f"listed in {MANIFEST_NAME} but not stored")
    size, sha256 = digest
    if (size, sha256) != (expected["size_bytes"], expected["sha256"]):
        return Problem(
            "corrupt", key, f"stored sha256 {sha256} ({size} bytes), manifest says {want}"
        )
    return None


def _unpublished_problems(
    storage: Storage,
    root: str,
    data: dict[str, int],
    stored: dict[str, int],
    stale_after: timedelta,
) -> list[Problem]:
    """Orphans in a version without a manifest: any data, or a marker gone stale."""
    if data:
        return [
            Problem(
                "orphaned",
                root,
                f"{len(data)} file(s) but no {MANIFEST_NAME}: an interrupted (or still "
                f"running) publish; publish it again or remove the directory",
            )
        ]
    times = [_marker_time(storage, join(root, name)) for name in sorted(MARKERS & set(stored))]
    if not times:
        return []
    known = [t for t in times if t is not None]
    newest = max(known) if len(known) == len(times) else None
    if newest is not None and datetime.now(UTC) - newest <= stale_after:
        return []  # a publish may still be on its way
    since = newest.isoformat(timespec="seconds") if newest else "an unknown time"
    return [
        Problem(
            "orphaned",
            root,
            f"reserved since {since} but never published (stale after {stale_after}); "
            f"remove the directory",
        )
    ]


def _marker_time(storage: Storage, key: str) -> datetime | None:
    """created_at of a .reserved/.claim marker, or None if it cannot be read."""
    body = storage._read(key)
    value = json_field(body, "created_at") if body is not None else None
    try:
        stamp = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return stamp if stamp is not None and stamp.tzinfo is not None else None
