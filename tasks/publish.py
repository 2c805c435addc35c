"""What a nightly run publishes: one entry per approved variant, and the lineage the manifest
keeps (git commit, input revs and hashes, params, library versions). Also the registry
questions the run asks before any work (is it reachable, is the version free)."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tasks.benchmark import BenchmarkRow
from tasks.config import RegistryConfig
from tasks.decision import ApprovalRecord
from tasks.evaluate import ZSTD_LEVEL, VariantMetrics
from tasks.params_model import Params
from tasks.registry import PublishEntry
from tasks.review import GateVerdict
from tasks.runtimes import FORMAT_BY_RUNTIME
from tasks.variant import VariantRecord, read_record

# the libraries whose versions can change a variant or its numbers
LIBRARIES = (
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "onnx2tf",
    "tensorflow",
    "ai-edge-litert",
    "openvino",
    "nncf",
    "prefect",
    "dvc",
    "great-expectations",
    "boto3",
)
# the registry's file format of each runtime's variants


@dataclass(frozen=True)
class Lineage:
    """The manifest's `lineage`: where a version came from."""

    git_commit: str | None
    model_rev: str | None
    data_rev: str | None
    inputs: dict[str, Any]  # every input file's path/rev and sha256 (tasks.lineage)
    baseline_sha256: str
    params: dict[str, Any]
    libraries: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def lineage(
    params: Params,
    inputs: dict[str, Any],
    baseline_sha256: str,
    model_rev: str | None,
    data_rev: str | None,
    root: Path,
) -> Lineage:
    """The lineage of this run's version; fetched inputs name the rev they were read at."""
    return Lineage(
        git_commit=git_commit(root),
        model_rev=inputs.get("model_rev", model_rev),
        data_rev=inputs.get("data_rev", data_rev),
        inputs=inputs,
        baseline_sha256=baseline_sha256,
        params=params.model_dump(mode="json"),
        libraries=library_versions(),
    )


def git_commit(root: Path) -> str | None:
    """HEAD of the repo holding `root`; None outside a git repo."""
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES (those not installed are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def publish_entries(
    approved: list[str],
    dirs: dict[str, str],
    metrics: dict[str, VariantMetrics],
    verdicts: dict[str, GateVerdict],
    bench: list[BenchmarkRow],
    approval: ApprovalRecord,
) -> dict[str, PublishEntry]:
    """One entry per approved variant: its files, how to feed and read it, its numbers and
    the review that approved it."""
    entries = {}
    for name in approved:
        record = read_record(Path(dirs[name]))
        entries[name] = PublishEntry(
            directory=Path(dirs[name]),
            format=FORMAT_BY_RUNTIME[str(record.runtime)],
            input=asdict(record.input) | {"preprocess": record.preprocess} if record.input else {},
            metrics=asdict(metrics[name])
            | {
                # how compressed_size_bytes was measured: a consumer compares like with like
                "compressed_with": {"codec": "zstd", "level": ZSTD_LEVEL},
                "benchmarks": [asdict(b) for b in bench if b.variant == name],
            },
            gates={
                "passed": verdicts[name].passed,
                "reason": verdicts[name].reason,
                # measured speed against the baseline/source, said even when it passed on size
                "speed": verdicts[name].speed,
            },
            approval=approval.as_json(),
            output=asdict(record.output) if record.output else {},
            data=record.data or {},
            build=build_facts(record),
        )
    return entries


def build_facts(record: VariantRecord) -> dict[str, Any]:
    """What the manifest says of how a variant was made (variant.json's technique, settings and
    build facts)."""
    return {
        "technique": record.technique,
        "source": record.source,
        "settings": record.settings,
    } | record.extra


def check_registry(cfg: RegistryConfig, model: str, version: str | None) -> dict[str, Any] | None:
    """Check `version`'s name, that it is not published yet and that the registry answers;
    returns the last manifest."""
    from tasks.registry import RegistryError, check_name, open_registry

    if version is not None:
        check_name("version", version)  # the registry's own naming rule
    registry = open_registry(cfg)
    _check_writable_directory(registry)
    versions = registry.list_versions(model)
    if version in versions:  # versions are immutable: publishing would fail after all the work
        raise RegistryError(
            f"version {version!r}: {model} {version} is already published in {registry.uri}; "
            f"versions are immutable: choose another, or leave --version out for the next number"
        )
    return registry.read_manifest(model, versions[-1]) if versions else None


def _check_writable_directory(registry: Any) -> None:
    """A local registry must be a directory this process can create and write: found only at
    publish, after the whole pipeline, it cost a night's work."""
    import os

    from tasks.registry import RegistryError
    from tasks.registry.local import LocalRegistry

    if not isinstance(registry, LocalRegistry):
        return  # S3: the first read (list_versions) says whether the bucket answers
    root = registry.root
    if root.exists() and not root.is_dir():
        raise RegistryError(f"registry.uri {root}: a file; expected a directory (or none yet)")
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RegistryError(
            f"registry.uri {root}: {existing} is not a directory this user can write"
        )


def claim_content(
    cfg: RegistryConfig, model: str, content: str, run_id: str
) -> dict[str, Any] | None:
    """None when this run may publish this content; else the claim of the run that is."""
    from tasks.registry import open_registry

    return open_registry(cfg).claim_content(model, content, run_id)


def published_manifests(cfg: RegistryConfig, model: str) -> list[dict[str, Any]]:
    """Every published version's manifest, newest first; a version whose manifest cannot be
    read is left out (`modelpress registry verify` names it)."""
    from tasks.registry import RegistryError, open_registry

    registry = open_registry(cfg)
    manifests = []
    for number in reversed(registry.list_versions(model)):
        try:
            manifests.append(registry.read_manifest(model, number))
        except RegistryError:
            continue
    return manifests


def last_published(
    cfg: RegistryConfig, model: str, variants: list[str]
) -> dict[str, dict[str, Any]]:
    """Each variant's own last published entry (with its version): the review compares with it."""
    from tasks.registry import open_registry

    return open_registry(cfg).last_published(model, variants)


def allocate_version(cfg: RegistryConfig, model: str) -> str:
    """A new version number no other run gets (a conditional write in the registry)."""
    from tasks.registry import open_registry

    return open_registry(cfg).allocate_version(model)
