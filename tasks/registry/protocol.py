"""The registry protocol: publish approved variants, list them, pull them back verified.

Layout, the same in a local directory and in S3::

    <prefix>/<model>/<version>/.reserved          (allocate_version's marker, optional)
    <prefix>/<model>/<version>/.claim             (the publish claim: which files this version gets)
    <prefix>/<model>/<version>/<variant>/<file>
    <prefix>/<model>/<version>/manifest.json      (written last)
    <prefix>/<model>/decisions/<time>-<run>-<n>.json  (every review decision, published or not)

A version is published once its manifest exists; list and show ignore the rest. Every write
is create-only (S3 `IfNoneMatch="*"`, a hard link locally), so a published version never
changes and two publishers of one version cannot both win: the first `.claim` decides which
files a version gets, the first manifest decides the version. A publish that stops half way
leaves data files but no manifest; running the same publish again completes it, and
`verify()` reports such leftovers as "orphaned", never as published.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.errors import RegistryError
from tasks.io import atomic_dir, json_default, sha256_file
from tasks.registry.base import Storage, join
from tasks.registry.manifest import (
    CLAIM_NAME,
    DECISIONS_DIR,
    MANIFEST_NAME,
    RESERVATION_NAME,
    STALE_RESERVATION,
    LocalFile,
    PublishEntry,
    build_manifest,
    check_entries,
    check_name,
    encode_json,
    encode_manifest,
    fingerprint,
    is_name,
    json_field,
    natural_sorted,
    now,
    parse_manifest,
    safe_relative,
    same_publish,
    variant_files,
)
from tasks.registry.verify import Problem, VerifyReport, verify_version

_ALLOCATE_ATTEMPTS = 100  # candidates tried past the highest version seen before giving up


@dataclass(frozen=True)
class PublishResult:
    uri: str  # where the manifest lives
    manifest: dict[str, Any]  # exactly what read_manifest returns


CLAIMS_DIR = ".claims"  # content claims beside the versions (tasks.lineage.content_of)


class Registry(Storage):
    """Publish/list/pull/verify, the same for every backend; a backend only moves bytes under keys."""

    def publish(
        self,
        model: str,
        version: str,
        entries: dict[str, PublishEntry],
        lineage: dict[str, Any],
    ) -> PublishResult:
        """Claim the version, upload every entry's files, then the manifest.

        Raises RegistryError before any write for bad names or entries, or a version that
        already has another manifest; before any data write if another run claimed the
        version for other files; during the upload if a file left there has other bytes,
        or if another publisher's manifest landed first. Publishing again exactly what a
        version already holds (a retry whose first try did land) returns that version.
        """
        check_name("model", model)
        check_name("version", version)
        files = check_entries(entries)
        manifest_key = join(model, version, MANIFEST_NAME)
        manifest = build_manifest(model, version, entries, files, lineage)
        if self._exists(manifest_key):
            return self._already_published(manifest_key, manifest)
        self._claim(model, version, fingerprint(files))
        for variant, listing in files.items():
            for relative, local in listing.items():
                self._put_data(join(model, version, variant, relative), local)
        body = encode_manifest(manifest)
        if not self._create(manifest_key, body, hashlib.sha256(body).hexdigest()):
            return self._already_published(manifest_key, manifest)
        return PublishResult(uri=self._uri_of(manifest_key), manifest=json.loads(body))

    def allocate_version(self, model: str) -> str:
        """A new integer version ("1", "2", ...) that no other caller gets; publish it next.

        Listing only picks the first candidate (one past the highest integer version
        directory); the create-only write of `<model>/<version>/.reserved` decides, so
        racing callers, threads or machines, each get their own. A reserved version is not
        listed until published; `verify()` calls it orphaned once older than
        STALE_RESERVATION without a manifest.
        """
        check_name("model", model)
        body = encode_json({"created_at": now(), "nonce": uuid.uuid4().hex})
        first = self._next_integer(model)
        for candidate in range(first, first + _ALLOCATE_ATTEMPTS):
            if self._reserve(model, str(candidate), body):
                return str(candidate)
        raise RegistryError(
            f"{self._uri_of(model)}: versions {first}..{first + _ALLOCATE_ATTEMPTS - 1} "
            f"are all taken by other runs; try again"
        )

    def claim_content(self, model: str, content: str, run_id: str) -> dict[str, Any] | None:
        """Claim the right to publish files whose content key is `content` (create-only
        `<model>/.claims/<key>.json`: a dot name, which no version or decision listing reads): None when this call holds the claim, else
        the other run's claim ({run, claimed_at}). Two identical runs at once both found
        nothing published and both published; the second now stops here. A claim older than
        STALE_RESERVATION whose run never published is taken over (that run died)."""
        check_name("model", model)
        check_name("content key", content)
        key = join(model, CLAIMS_DIR, f"{content}.json")
        body = encode_json({"run": run_id, "claimed_at": now()})
        if self._create(key, body, hashlib.sha256(body).hexdigest()):
            return None
        stored = self._read(key)
        try:
            claim = json.loads(stored) if stored is not None else {}
            claimed_at = datetime.fromisoformat(str(claim.get("claimed_at")))
        except ValueError:
            claim, claimed_at = {}, None
        if claim.get("run") == run_id:
            return None  # our own claim, read back after a retry
        if claimed_at is None or datetime.now(UTC) - claimed_at > STALE_RESERVATION:
            self._replace(key, body)
            return None
        return dict(claim)

    def record_decision(self, model: str, run_id: str, record: dict[str, Any]) -> str:
        """Store one review decision, create-only, beside the versions; returns its address.

        Named `<UTC time>-<run id>-<n>.json` so a listing reads in time order: n is 1, or the
        next free number for another decision of the same run in the same second (a refusal,
        then an approval).
        """
        check_name("model", model)
        check_name("run id", run_id)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        body = (json.dumps(record, indent=2, sort_keys=True, default=json_default) + "\n").encode()
        digest = hashlib.sha256(body).hexdigest()
        for attempt in range(1, _ALLOCATE_ATTEMPTS + 1):
            key = join(model, DECISIONS_DIR, f"{stamp}-{run_id}-{attempt}.json")
            if self._create(key, body, digest):
                return self._uri_of(key)
        raise RegistryError(f"{self._uri_of(join(model, DECISIONS_DIR))}: no free record name")

    def list_decisions(self, model: str) -> list[dict[str, Any]]:
        """Every recorded review decision of `model`, oldest first, each with its `record` name."""
        check_name("model", model)
        folder = join(model, DECISIONS_DIR)
        names = [n for n in self._files(folder) if n.endswith(".json") and not n.startswith(".")]
        decisions = []
        for name in natural_sorted(names):
            body = self._read(join(folder, name))
            if body is None:
                continue
            try:
                decision = json.loads(body)
                if not isinstance(decision, dict):
                    raise ValueError(f"a JSON {type(decision).__name__}, not an object")
            except ValueError as exc:  # one bad record is listed as bad; the others are shown
                decisions.append({"record": name, "bad": f"not a decision record ({exc})"})
                continue
            decisions.append({**decision, "record": name})
        return decisions

    def verify(self, *, stale_after: timedelta = STALE_RESERVATION) -> VerifyReport:
        """Check every version: manifest readable, listed files present with their sha256.

        Unlisted files, versions with data but no manifest (an interrupted or running
        publish) and reservations or claims older than `stale_after` with nothing
        published are "orphaned": reported, but `ok` stays True. Reads every byte.
        """
        report = VerifyReport()
        for model in natural_sorted([name for name in self._children("") if is_name(name)]):
            versions = [n for n in self._children(model) if is_name(n) and n != DECISIONS_DIR]
            for version in natural_sorted(versions):
                verify_version(self, model, version, report, stale_after)
            self._gaps(model, versions, report)
        return report

    def _gaps(self, model: str, versions: list[str], report: VerifyReport) -> None:
        """A reserved number below the newest published one, never published, however recent:
        a version burnt by a run that stopped (the next publish took the number after it)."""
        published = [
            v for v in versions if v.isdigit() and self._exists(join(model, v, MANIFEST_NAME))
        ]
        newest = max((int(v) for v in published), default=0)
        flagged = {p.key for p in report.problems}
        for version in versions:
            root = join(model, version)
            if not version.isdigit() or int(version) >= newest or version in published:
                continue
            if root in flagged or not self._exists(join(root, RESERVATION_NAME)):
                continue
            report.problems.append(
                Problem(
                    "orphaned",
                    root,
                    f"reserved, not published, below version {newest}: a gap in the version "
                    "numbers (a publish still on its way, or a run that stopped after reserving "
                    "it: then remove the directory)",
                )
            )

    def list_models(self) -> list[str]:
        """Models with at least one published version, sorted."""
        return natural_sorted(
            [name for name in self._children("") if is_name(name) and self.list_versions(name)]
        )

    def list_versions(self, model: str) -> list[str]:
        """Published versions of `model` (those with a manifest), in natural order (v2 < v10)."""
        check_name("model", model)
        versions = [
            name
            for name in self._children(model)
            if is_name(name)
            and name != DECISIONS_DIR
            and self._exists(join(model, name, MANIFEST_NAME))
        ]
        return natural_sorted(versions)

    def last_published(self, model: str, variants: list[str]) -> dict[str, dict[str, Any]]:
        """Each of `variants`' own last published manifest entry, with `version` and
        `created_at` added; walks back from the newest version until every one is found."""
        found: dict[str, dict[str, Any]] = {}
        for version in reversed(self.list_versions(model)):
            manifest = self.read_manifest(model, version)
            for name, entry in manifest["variants"].items():
                if name in variants and name not in found:
                    found[name] = entry | {"version": version, "created_at": manifest["created_at"]}
            if len(found) == len(set(variants)):
                break
        return found

    def read_manifest(self, model: str, version: str) -> dict[str, Any]:
        """The manifest of a published version; RegistryError if it is not published or is bad."""
        check_name("model", model)
        check_name("version", version)
        key = join(model, version, MANIFEST_NAME)
        body = self._read(key)
        if body is None:
            raise RegistryError(
                f"{model}/{version} is not published in {self.uri} (no {MANIFEST_NAME}); "
                f"published versions: {', '.join(self.list_versions(model)) or 'none'}"
            )
        try:
            return parse_manifest(body, model, version)
        except ValueError as exc:
            raise RegistryError(f"{self._uri_of(key)}: {exc}") from None

    def pull(self, model: str, version: str, variant: str, dest: Path) -> Path:
        """Download a variant into `dest`, every file checked against the manifest first.

        Files land in a temp directory beside `dest` that is renamed into place only once
        all sizes and sha256 sums match; on any failure `dest` is not created. `dest` must
        not exist or be an empty directory.
        """
        check_name("variant", variant)
        dest = Path(dest).absolute()
        _check_dest(dest)
        files = variant_files(self.read_manifest(model, version), model, version, variant)
        with atomic_dir(dest) as staging:
            for relative, expected in files.items():
                target = staging / safe_relative(relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(join(model, version, variant, relative), target)
                _verify(target, relative, expected)
        return dest

    # ── publish steps ──

    def _already_published(self, manifest_key: str, manifest: dict[str, Any]) -> PublishResult:
        """The stored version if it is exactly this publish (created_at aside); else refuse."""
        stored = self._read(manifest_key)
        if stored is None or not same_publish(stored, manifest):
            raise RegistryError(
                f"{self._uri_of(manifest_key)} already exists; published versions are immutable"
            )
        return PublishResult(uri=self._uri_of(manifest_key), manifest=json.loads(stored))

    def _claim(self, model: str, version: str, fingerprint: str) -> None:
        """Create-only `.claim` naming these files; an existing claim must name the same ones.

        Without it, two publishers of one version with different files could each upload a
        file first and both fail on the other's; with it, the second one stops before
        writing anything, and a retry of the same publish passes its own claim.
        """
        key = join(model, version, CLAIM_NAME)
        body = encode_json({"fingerprint": fingerprint, "created_at": now()})
        if self._create(key, body, hashlib.sha256(body).hexdigest()):
            return
        stored = self._read(key)
        if stored is not None and json_field(stored, "fingerprint") == fingerprint:
            return
        raise RegistryError(
            f"{self._uri_of(join(model, version))} is claimed by another publish with other "
            f"files (running, or stopped before its manifest); publish a new version, or "
            f"remove that unpublished directory if no run is using it"
        )

    def _put_data(self, key: str, local: LocalFile) -> None:
        """Create-only upload; an object already there is fine only with the same bytes."""
        if self._create(key, local.path, local.sha256):
            return
        existing = self._sha256_of(key)
        if existing != local.sha256:
            version_root = key.rsplit("/", 2)[0]
            raise RegistryError(
                f"{self._uri_of(key)} already exists with sha256 {existing}, not {local.sha256} "
                f"(left by an unfinished or concurrent publish); remove the unpublished "
                f"{self._uri_of(version_root)}/ or publish a new version"
            )

    # ── version allocation ──

    def _next_integer(self, model: str) -> int:
        """One past the highest integer-named version directory (published or not): a hint."""
        numbers = [int(name) for name in self._children(model) if is_name(name) and name.isdigit()]
        return max(numbers, default=0) + 1

    def _reserve(self, model: str, version: str, body: bytes) -> bool:
        """Create `.reserved` for `version`; True if it is ours and nobody published there."""
        key = join(model, version, RESERVATION_NAME)
        # a lost reply to a create that did land reads back as our own body
        if (
            not self._create(key, body, hashlib.sha256(body).hexdigest())
            and self._read(key) != body
        ):
            return False
        # someone may have published this number explicitly, without reserving it
        return not (
            self._exists(join(model, version, MANIFEST_NAME))
            or self._exists(join(model, version, CLAIM_NAME))
        )


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(
            f"{dest}: already exists and is not an empty directory; pull into a new path"
        )
    existing = next(p for p in dest.parents if p.exists())
    if not existing.is_dir():
        raise RegistryError(f"{dest}: {existing} is a file, not a directory; pull into a new path")
    try:  # the folders it needs, made now: an OS error is one line, not a traceback
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"{dest}: cannot create {dest.parent} ({exc.strerror})") from None


def _verify(path: Path, relative: str, expected: dict[str, Any]) -> None:
    size = path.stat().st_size
    actual = sha256_file(path)
    if size != expected["size_bytes"] or actual != expected["sha256"]:
        raise RegistryError(
            f"{relative}: checksum mismatch, expected sha256 {expected['sha256']} "
            f"({expected['size_bytes']} bytes), got {actual} ({size} bytes)"
        )
