"""The artifact registry: publish approved variants, list them, pull them back verified.

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

import abc
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tasks.config import RegistryConfig
from tasks.errors import ModelPressError
from tasks.io import file_checksums, sha256_file

# botocore generates the client class at run time; there is no importable type to name
S3Client = Any

MANIFEST_NAME = "manifest.json"
RESERVATION_NAME = ".reserved"  # <model>/<version>/.reserved: allocate_version's marker
CLAIM_NAME = ".claim"  # <model>/<version>/.claim: the files a publish of this version uploads
RECORD_NAME = "variant.json"
# <model>/decisions/: one JSON record per review decision (approved, nothing approved, refused,
# timed out), kept with the model so "who rejected last night's int8, and why" has an answer
DECISIONS_DIR = "decisions"
FORMATS = ("onnx", "tflite", "tensorrt")
MANIFEST_SCHEMA = 1
S3_MAX_ATTEMPTS = 4  # requests per S3 call, first try included (botocore "standard" retries)
STALE_RESERVATION = timedelta(hours=1)  # a bare reservation/claim older than this is orphaned
ProblemKind = Literal["corrupt", "missing", "orphaned", "bad-manifest"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_FIELDS = ("schema", "model", "version", "created_at", "variants")
_MARKERS = frozenset({RESERVATION_NAME, CLAIM_NAME})
_CHUNK = 1 << 20
_PUT_ATTEMPTS = 3  # S3 may answer 409 ConditionalRequestConflict to racing conditional puts
_ALLOCATE_ATTEMPTS = 100  # candidates tried past the highest version seen before giving up
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class RegistryError(ModelPressError):
    """The registry refused or failed an operation: bad name, immutable version, bad checksum, S3 trouble."""


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


@dataclass(frozen=True)
class PublishResult:
    uri: str  # where the manifest lives
    manifest: dict[str, Any]  # exactly what read_manifest returns


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


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    sha256: str
    size_bytes: int


# ── the shared contract ─────────────────────────────────────────────────────────────────────


class Registry(abc.ABC):
    """Publish/list/pull/verify logic shared by both stores; subclasses only move bytes under keys.

    Keys are '/'-joined paths relative to the registry root, e.g. 'model/v1/manifest.json'.
    """

    @property
    @abc.abstractmethod
    def uri(self) -> str:
        """The registry root as a user would write it in params.yaml."""

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
        files = _check_entries(entries)
        manifest_key = _key(model, version, MANIFEST_NAME)
        manifest = _build_manifest(model, version, entries, files, lineage)
        if self._exists(manifest_key):
            return self._already_published(manifest_key, manifest)
        self._claim(model, version, _fingerprint(files))
        for variant, listing in files.items():
            for relative, local in listing.items():
                self._put_data(_key(model, version, variant, relative), local)
        body = _encode_manifest(manifest)
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
        body = _encode_json({"created_at": _now(), "nonce": uuid.uuid4().hex})
        first = self._next_integer(model)
        for candidate in range(first, first + _ALLOCATE_ATTEMPTS):
            if self._reserve(model, str(candidate), body):
                return str(candidate)
        raise RegistryError(
            f"{self._uri_of(model)}: versions {first}..{first + _ALLOCATE_ATTEMPTS - 1} "
            f"are all taken by other runs; try again"
        )

    def record_decision(self, model: str, run_id: str, record: dict[str, Any]) -> str:
        """Store one review decision, create-only, beside the versions; returns its address.

        Named `<UTC time>-<run id>-<n>.json` so a listing reads in time order: n is 1, or the
        next free number for another decision of the same run in the same second (a refusal,
        then an approval).
        """
        check_name("model", model)
        check_name("run id", run_id)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        body = (json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n").encode()
        digest = hashlib.sha256(body).hexdigest()
        for attempt in range(1, _ALLOCATE_ATTEMPTS + 1):
            key = _key(model, DECISIONS_DIR, f"{stamp}-{run_id}-{attempt}.json")
            if self._create(key, body, digest):
                return self._uri_of(key)
        raise RegistryError(f"{self._uri_of(_key(model, DECISIONS_DIR))}: no free record name")

    def list_decisions(self, model: str) -> list[dict[str, Any]]:
        """Every recorded review decision of `model`, oldest first, each with its `record` name."""
        check_name("model", model)
        folder = _key(model, DECISIONS_DIR)
        names = [n for n in self._files(folder) if n.endswith(".json") and not n.startswith(".")]
        decisions = []
        for name in _sorted(names):
            body = self._read(_key(folder, name))
            if body is not None:
                decisions.append({**json.loads(body), "record": name})
        return decisions

    def verify(self, *, stale_after: timedelta = STALE_RESERVATION) -> VerifyReport:
        """Check every version: manifest readable, listed files present with their sha256.

        Unlisted files, versions with data but no manifest (an interrupted or running
        publish) and reservations or claims older than `stale_after` with nothing
        published are "orphaned": reported, but `ok` stays True. Reads every byte.
        """
        report = VerifyReport()
        for model in _sorted([name for name in self._children("") if _is_name(name)]):
            versions = [n for n in self._children(model) if _is_name(n) and n != DECISIONS_DIR]
            for version in _sorted(versions):
                self._verify_version(model, version, report, stale_after)
        return report

    def list_models(self) -> list[str]:
        """Models with at least one published version, sorted."""
        return _sorted(
            [name for name in self._children("") if _is_name(name) and self.list_versions(name)]
        )

    def list_versions(self, model: str) -> list[str]:
        """Published versions of `model` (those with a manifest), in natural order (v2 < v10)."""
        check_name("model", model)
        versions = [
            name
            for name in self._children(model)
            if _is_name(name)
            and name != DECISIONS_DIR
            and self._exists(_key(model, name, MANIFEST_NAME))
        ]
        return _sorted(versions)

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
        key = _key(model, version, MANIFEST_NAME)
        body = self._read(key)
        if body is None:
            raise RegistryError(
                f"{model}/{version} is not published in {self.uri} (no {MANIFEST_NAME}); "
                f"published versions: {', '.join(self.list_versions(model)) or 'none'}"
            )
        try:
            return _parse_manifest(body, model, version)
        except ValueError as exc:
            raise RegistryError(f"{self._uri_of(key)}: {exc}") from None

    def pull(self, model: str, version: str, variant: str, dest: Path) -> Path:
        """Download a variant into `dest`, every file checked against the manifest first.

        Files land in a temp directory beside `dest` that is renamed into place only once
        all sizes and sha256 sums match; on any failure `dest` is not created. `dest` must
        not exist or be an empty directory.
        """
        check_name("variant", variant)
        files = _variant_files(self.read_manifest(model, version), model, version, variant)
        dest = Path(dest).absolute()
        _check_dest(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
        try:
            for relative, expected in files.items():
                target = staging / _safe_relative(relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(_key(model, version, variant, relative), target)
                _verify(target, relative, expected)
            staging.chmod(0o755)
            os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    # ── publish steps ──

    def _already_published(self, manifest_key: str, manifest: dict[str, Any]) -> PublishResult:
        """The stored version if it is exactly this publish (created_at aside); else refuse."""
        stored = self._read(manifest_key)
        if stored is None or not _same_publish(stored, manifest):
            raise _immutable(self._uri_of(manifest_key))
        return PublishResult(uri=self._uri_of(manifest_key), manifest=json.loads(stored))

    def _claim(self, model: str, version: str, fingerprint: str) -> None:
        """Create-only `.claim` naming these files; an existing claim must name the same ones.

        Without it, two publishers of one version with different files could each upload a
        file first and both fail on the other's; with it, the second one stops before
        writing anything, and a retry of the same publish passes its own claim.
        """
        key = _key(model, version, CLAIM_NAME)
        body = _encode_json({"fingerprint": fingerprint, "created_at": _now()})
        if self._create(key, body, hashlib.sha256(body).hexdigest()):
            return
        stored = self._read(key)
        if stored is not None and _json_field(stored, "fingerprint") == fingerprint:
            return
        raise RegistryError(
            f"{self._uri_of(_key(model, version))} is claimed by another publish with other "
            f"files (running, or stopped before its manifest); publish a new version, or "
            f"remove that unpublished directory if no run is using it"
        )

    def _put_data(self, key: str, local: _LocalFile) -> None:
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
        numbers = [int(name) for name in self._children(model) if _is_name(name) and name.isdigit()]
        return max(numbers, default=0) + 1

    def _reserve(self, model: str, version: str, body: bytes) -> bool:
        """Create `.reserved` for `version`; True if it is ours and nobody published there."""
        key = _key(model, version, RESERVATION_NAME)
        # a lost reply to a create that did land reads back as our own body
        if (
            not self._create(key, body, hashlib.sha256(body).hexdigest())
            and self._read(key) != body
        ):
            return False
        # someone may have published this number explicitly, without reserving it
        return not (
            self._exists(_key(model, version, MANIFEST_NAME))
            or self._exists(_key(model, version, CLAIM_NAME))
        )

    # ── verification ──

    def _verify_version(
        self, model: str, version: str, report: VerifyReport, stale_after: timedelta
    ) -> None:
        """Add what is wrong with one version directory to `report`."""
        root = _key(model, version)
        stored = self._files(root)
        data = {rel: size for rel, size in stored.items() if rel not in _MARKERS | {MANIFEST_NAME}}
        body = self._read(_key(root, MANIFEST_NAME)) if MANIFEST_NAME in stored else None
        if body is None:
            report.problems.extend(self._unpublished_problems(root, data, stored, stale_after))
            return
        report.checked_versions += 1
        try:
            manifest = _parse_manifest(body, model, version)
        except ValueError as exc:
            report.problems.append(Problem("bad-manifest", _key(root, MANIFEST_NAME), str(exc)))
            return
        listed = _listed_files(manifest)
        for relative, expected in listed.items():
            report.checked_files += 1
            problem = self._check_file(_key(root, relative), data.get(relative), expected)
            if problem is not None:
                report.problems.append(problem)
        for relative in _sorted(list(set(data) - set(listed))):
            report.problems.append(
                Problem("orphaned", _key(root, relative), f"not listed in {MANIFEST_NAME}")
            )

    def _check_file(
        self, key: str, stored_size: int | None, expected: dict[str, Any]
    ) -> Problem | None:
        """A missing/corrupt Problem for one listed file, or None if its bytes match."""
        if stored_size is None:
            return Problem("missing", key, f"listed in {MANIFEST_NAME} but not stored")
        want = f"sha256 {expected['sha256']} ({expected['size_bytes']} bytes)"
        if stored_size != expected["size_bytes"]:
            return Problem("corrupt", key, f"{stored_size} bytes stored, manifest says {want}")
        digest = self._digest(key)
        if digest is None:
            return Problem("missing", key, f"listed in {MANIFEST_NAME} but not stored")
        size, sha256 = digest
        if (size, sha256) != (expected["size_bytes"], expected["sha256"]):
            return Problem(
                "corrupt", key, f"stored sha256 {sha256} ({size} bytes), manifest says {want}"
            )
        return None

    def _unpublished_problems(
        self, root: str, data: dict[str, int], stored: dict[str, int], stale_after: timedelta
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
        times = [self._marker_time(_key(root, name)) for name in sorted(_MARKERS & set(stored))]
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

    def _marker_time(self, key: str) -> datetime | None:
        """created_at of a .reserved/.claim marker, or None if it cannot be read."""
        body = self._read(key)
        value = _json_field(body, "created_at") if body is not None else None
        try:
            stamp = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None
        return stamp if stamp is not None and stamp.tzinfo is not None else None

    # ── what each store provides ──

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


# ── local directory ─────────────────────────────────────────────────────────────────────────


class LocalRegistry(Registry):
    """A registry in a local (or mounted) directory; writes are temp file + exclusive hard link."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def uri(self) -> str:
        return str(self.root)

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
                        f"{source}: changed while publishing (sha256 {written}, expected {sha256})"
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
            return [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _files(self, key: str) -> dict[str, int]:
        folder = self._path(key)
        found: dict[str, int] = {}
        with self._errors(key):
            for path in folder.rglob("*"):
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
                f"{self._uri_of(key)}: {reason}; check that the registry directory "
                f"{self.root} is writable and its disk has room"
            ) from None


# ── S3 ──────────────────────────────────────────────────────────────────────────────────────


class S3Registry(Registry):
    """A registry in an S3 bucket (AWS, MinIO, moto); credentials come from the boto3 chain."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: S3Client | None = None,
    ) -> None:
        if not bucket:
            raise RegistryError("registry.uri: s3:// needs a bucket name (s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client = client if client is not None else _make_client(endpoint_url, region)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _object_key(self, key: str) -> str:
        return "/".join(part for part in (self.prefix, key) if part)

    def _uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _exists(self, key: str) -> bool:
        with self._errors(key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
            except _client_error() as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return False
                raise
            return True

    def _read(self, key: str) -> bytes | None:
        with self._errors(key):
            response = self._get_or_none(key)
            return None if response is None else response["Body"].read()

    def _get_or_none(self, key: str) -> dict[str, Any] | None:
        """GetObject's response, or None when the key does not exist (call inside _errors)."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except _client_error() as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise

    def _create(self, key: str, source: Path | bytes, sha256: str) -> bool:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        with self._errors(key):
            for attempt in range(1, _PUT_ATTEMPTS + 1):
                try:
                    self._put_once(key, source, checksum)
                    return True
                except _client_error() as exc:
                    code = _error_code(exc)
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict" or attempt == _PUT_ATTEMPTS:
                        raise
                time.sleep(0.2 * attempt)
        return False  # unreachable: the loop returns or raises

    def _put_once(self, key: str, source: Path | bytes, checksum: str) -> None:
        # One PUT is enough up to 5 GiB; upload_file would be multipart but cannot send
        # IfNoneMatch.
        with contextlib.ExitStack() as stack:
            body = source if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._object_key(key),
                Body=body,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )

    def _sha256_of(self, key: str) -> str:
        with self._errors(key):
            head = self._client.head_object(
                Bucket=self.bucket, Key=self._object_key(key), ChecksumMode="ENABLED"
            )
            stored = head.get("ChecksumSHA256")
            if stored and "-" not in stored:  # "-N" marks a composite multipart checksum
                return base64.b64decode(stored).hex()
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
            return digest.hexdigest()

    def _children(self, key: str) -> list[str]:
        folder = self._object_key(key)
        folder = f"{folder}/" if folder else ""
        names: list[str] = []
        with self._errors(key):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(folder) :].rstrip("/"))
        return names

    def _digest(self, key: str) -> tuple[int, str] | None:
        with self._errors(key):
            response = self._get_or_none(key)
            if response is None:
                return None
            digest, size = hashlib.sha256(), 0
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            return size, digest.hexdigest()

    def _files(self, key: str) -> dict[str, int]:
        folder = f"{self._object_key(key)}/".lstrip("/")
        found: dict[str, int] = {}
        with self._errors(key):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    found[item["Key"][len(folder) :]] = int(item["Size"])
        return found

    def _download(self, key: str, target: Path) -> None:
        with self._errors(key):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            except _client_error() as exc:
                if _error_code(exc) in _MISSING_CODES:
                    raise RegistryError(
                        f"{self._uri_of(key)}: listed in the manifest but missing"
                    ) from None
                raise
            with open(target, "wb") as handle:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    handle.write(chunk)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn boto errors into one-line RegistryErrors that say what to fix."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise RegistryError(_describe_s3_error(exc, self._uri_of(key), self)) from None


def _make_client(endpoint_url: str | None, region: str) -> S3Client:
    import boto3
    from botocore.config import Config

    # "standard" mode retries throttling, 5xx and connection errors with jittered exponential
    # backoff, at most S3_MAX_ATTEMPTS requests in all; never a 4xx such as 403, 404 or 412.
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        # MinIO and moto serve buckets as paths, not as DNS names
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _error_code(exc: Exception) -> str:
    return str(_error_fields(exc).get("Code", ""))


def _error_fields(exc: Exception) -> dict[str, Any]:
    """The parsed S3 error (Code, Message) of a ClientError; {} for errors with no reply."""
    response = getattr(exc, "response", None)  # botocore's HTTP errors carry response=None
    return (response.get("Error") or {}) if isinstance(response, dict) else {}


def _describe_s3_error(exc: Exception, where: str, registry: S3Registry) -> str:
    """One line naming the bucket/endpoint and the fix; never credential values."""
    from botocore.exceptions import (
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    endpoint = registry.endpoint_url or "the AWS default endpoint"
    bucket = registry.bucket
    code = _error_code(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no S3 credentials for bucket {bucket!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if isinstance(exc, ConnectionError | HTTPClientError):
        return f"cannot reach the S3 endpoint {endpoint} for bucket {bucket!r}: check registry.endpoint_url (or --endpoint-url) and that the server is up"
    if code in _CREDENTIAL_CODES:
        return f"S3 at {endpoint} rejected the credentials for bucket {bucket!r} ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if code in ("AccessDenied", "403"):
        return f"access denied to {where} at {endpoint}: the credentials need s3:ListBucket, s3:GetObject and s3:PutObject on bucket {bucket!r}"
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist at {endpoint}: create it or fix registry.uri (or --uri)"
    message = _error_fields(exc).get("Message") or _first_line(exc)
    return f"S3 request for {where} at {endpoint} failed: {code or type(exc).__name__}: {_first_line(message)}"


# ── helpers ─────────────────────────────────────────────────────────────────────────────────


def _is_name(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


def check_name(field: str, value: str) -> None:
    """Refuse a model, version or variant name that is not one safe path segment."""
    if not isinstance(value, str) or not _is_name(value):
        raise RegistryError(
            f"{field} name {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..'"
        )
    if field == "version" and value == DECISIONS_DIR:
        raise RegistryError(f"version name {value!r} is reserved for the review decision records")


def _key(*parts: str) -> str:
    return "/".join(parts)


def _sorted(names: list[str]) -> list[str]:
    """Natural order: digit runs compare as numbers, so v2 sorts before v10."""
    return sorted(
        names,
        key=lambda n: [
            (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", n) if t
        ],
    )


def _check_entries(entries: dict[str, PublishEntry]) -> dict[str, dict[str, _LocalFile]]:
    """Validate every entry and hash its files: {variant: {relative path: file}}."""
    if not entries:
        raise RegistryError("nothing to publish: no approved variants given")
    for variant in entries:
        check_name("variant", variant)
    return {variant: _check_entry(variant, entry) for variant, entry in entries.items()}


def _check_entry(variant: str, entry: PublishEntry) -> dict[str, _LocalFile]:
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
        relative: _LocalFile(directory / relative, file["sha256"], file["size_bytes"])
        for relative, file in file_checksums(directory).items()
    }


def _build_manifest(
    model: str,
    version: str,
    entries: dict[str, PublishEntry],
    files: dict[str, dict[str, _LocalFile]],
    lineage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "model": model,
        "version": version,
        "created_at": _now(),
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
                "metrics": entry.metrics,
                "gates": entry.gates,
                "approval": entry.approval,
            }
            for variant, entry in entries.items()
        },
    }


def _encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays in metrics
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable in the manifest: {type(value).__name__}")


def _parse_manifest(body: bytes, model: str, version: str) -> dict[str, Any]:
    """The manifest stored at model/version; ValueError naming the first thing wrong with it."""
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({_first_line(exc)})") from None
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
    if not _is_name(name) or not isinstance(variant, dict) or "format" not in variant:
        raise ValueError(f"variant {name!r}: expected a named object with format and files")
    files = variant.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"variant {name!r}: files: expected a non-empty object")
    for relative, meta in files.items():
        try:
            _safe_relative(relative)
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


def _listed_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every file a (parsed) manifest lists: {'<variant>/<path>': {sha256, size_bytes}}."""
    return {
        f"{variant}/{relative}": meta
        for variant, entry in manifest["variants"].items()
        for relative, meta in entry["files"].items()
    }


def _fingerprint(files: dict[str, dict[str, _LocalFile]]) -> str:
    """sha256 of what a publish uploads (variant, path, sha256, size): the claim's identity."""
    listing = {
        variant: {rel: [f.sha256, f.size_bytes] for rel, f in sorted(entries.items())}
        for variant, entries in sorted(files.items())
    }
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def _same_publish(stored: bytes, manifest: dict[str, Any]) -> bool:
    """Whether a stored manifest is this one apart from created_at (an earlier try of it)."""
    try:
        existing = json.loads(stored)
    except ValueError:
        return False
    ours = json.loads(_encode_manifest(manifest))
    if not isinstance(existing, dict):
        return False
    existing.pop("created_at", None)
    ours.pop("created_at", None)
    return bool(existing == ours)


def _encode_json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, sort_keys=True) + "\n").encode()


def _json_field(body: bytes, name: str) -> Any:
    """`name` from a JSON object in `body`, or None if it is not one or lacks it."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value.get(name) if isinstance(value, dict) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _immutable(manifest_uri: str) -> RegistryError:
    return RegistryError(f"{manifest_uri} already exists; published versions are immutable")


def _variant_files(
    manifest: dict[str, Any], model: str, version: str, variant: str
) -> dict[str, dict[str, Any]]:
    variants = manifest.get("variants", {})
    if variant not in variants:
        raise RegistryError(
            f"{model}/{version} has no variant {variant!r}; it has: {', '.join(sorted(variants)) or 'none'}"
        )
    return variants[variant]["files"]


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RegistryError(
            f"{dest}: already exists and is not an empty directory; pull into a new path"
        )


def _safe_relative(relative: str) -> PurePosixPath:
    """A manifest path that stays inside the pulled directory."""
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise RegistryError(f"manifest file path {relative!r} escapes the variant directory")
    return path


def _verify(path: Path, relative: str, expected: dict[str, Any]) -> None:
    size = path.stat().st_size
    actual = sha256_file(path)
    if size != expected["size_bytes"] or actual != expected["sha256"]:
        raise RegistryError(
            f"{relative}: checksum mismatch, expected sha256 {expected['sha256']} "
            f"({expected['size_bytes']} bytes), got {actual} ({size} bytes)"
        )


def _copy_hashing(source: Path | bytes, handle: Any) -> str:
    """Write `source` to `handle` and return the sha256 of what was written."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        handle.write(source)
        return digest.hexdigest()
    with open(source, "rb") as src:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""
