"""The local-directory registry: publish, list, show, pull; immutability and checksums."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from tasks.config import RegistryConfig
from tasks.registry import (
    CLAIM_NAME,
    RESERVATION_NAME,
    LocalRegistry,
    Problem,
    PublishEntry,
    Registry,
    RegistryError,
    VerifyReport,
    open_registry,
)

LINEAGE = {"git_commit": "abc123", "dvc": {"data": "md5:1", "model": "md5:2"}, "params": {"a": 1}}


def make_entry(root: Path, name: str, payload: bytes, comment: str = "looks good") -> PublishEntry:
    """A variant directory with a small model file and variant.json, wrapped as a PublishEntry."""
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "variant.json").write_text(json.dumps({"name": name, "technique": "pruned"}))
    return PublishEntry(
        directory=directory,
        format="onnx",
        input={"name": "input", "shape": [None, 1, 16, 16], "dtype": "float32"},
        metrics={"accuracy": 0.97, "p50_ms": 1.2},
        gates={"min_accuracy": 0.9},
        approval={
            "approved_by": "ada",
            "approved_at": "2026-01-02T03:04:05+00:00",
            "comment": comment,
        },
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, PublishEntry]:
    src = tmp_path / "variants"
    return {
        "pruned": make_entry(src, "pruned", b"pruned-model-bytes" * 100),
        "tflite_int8": make_entry(src, "tflite_int8", b"\x00\x01int8" * 50),
    }


def test_publish_list_show_pull_round_trip(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    result = registry.publish("digits", "v1", entries, LINEAGE)

    manifest = registry.read_manifest("digits", "v1")
    assert result.manifest == manifest
    assert result.uri == str(registry.root / "digits" / "v1" / "manifest.json")
    assert (manifest["model"], manifest["version"], manifest["lineage"]) == (
        "digits",
        "v1",
        LINEAGE,
    )
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset() == UTC.utcoffset(None)
    for name, entry in entries.items():
        variant = manifest["variants"][name]
        assert variant["approval"] == entry.approval
        assert (variant["format"], variant["metrics"], variant["gates"]) == (
            "onnx",
            entry.metrics,
            entry.gates,
        )
        for filename in ("model.onnx", "variant.json"):
            data = (entry.directory / filename).read_bytes()
            assert variant["files"][filename] == {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
            }
    assert registry.list_models() == ["digits"]
    assert registry.list_versions("digits") == ["v1"]

    dest = registry.pull("digits", "v1", "pruned", tmp_path / "pulled" / "pruned")
    assert dest == tmp_path / "pulled" / "pruned"
    assert snapshot(dest) == snapshot(entries["pruned"].directory)
    assert [p.name for p in dest.parent.iterdir()] == ["pruned"]  # no staging left behind


def test_second_publish_is_refused_and_first_left_identical(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    before = snapshot(registry.root)
    other = {"pruned": make_entry(tmp_path / "other", "pruned", b"different bytes")}

    with pytest.raises(
        RegistryError, match=r"v1/manifest\.json already exists; published versions are immutable"
    ):
        registry.publish("digits", "v1", other, LINEAGE)

    assert snapshot(registry.root) == before


def test_manifest_written_by_a_racing_publisher_wins(
    registry: LocalRegistry,
    entries: dict[str, PublishEntry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pre-check passes, but another publisher's manifest lands first: refuse, keep theirs."""
    registry.publish("digits", "v1", entries, LINEAGE)
    before = snapshot(registry.root)
    monkeypatch.setattr(registry, "_exists", lambda key: False)

    with pytest.raises(RegistryError, match="already exists; published versions are immutable"):
        registry.publish("digits", "v1", entries, {"git_commit": "other"})

    assert snapshot(registry.root) == before


def test_concurrent_publishers_of_one_version_have_one_winner(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def publish(n: int) -> None:
        barrier.wait()
        try:
            registry.publish("digits", "v1", entries, {"publisher": n})
            outcomes.append(f"won:{n}")
        except RegistryError as exc:
            assert "published versions are immutable" in str(exc)
            outcomes.append("refused")

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("refused") == 5
    assert registry.read_manifest("digits", "v1")["lineage"] == {"publisher": int(winners[0][4:])}


def test_leftover_file_with_same_bytes_is_reused(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    leftover = registry.root / "digits" / "v1" / "pruned" / "model.onnx"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes((entries["pruned"].directory / "model.onnx").read_bytes())

    registry.publish("digits", "v1", entries, LINEAGE)

    assert registry.list_versions("digits") == ["v1"]


def test_leftover_file_with_other_bytes_is_refused(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    leftover = registry.root / "digits" / "v1" / "pruned" / "model.onnx"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"stale bytes from an interrupted publish")

    with pytest.raises(
        RegistryError, match=r"pruned/model\.onnx already exists with sha256 [0-9a-f]{64}"
    ):
        registry.publish("digits", "v1", entries, LINEAGE)

    assert registry.list_versions("digits") == []
    assert leftover.read_bytes() == b"stale bytes from an interrupted publish"


def test_pull_of_corrupted_file_fails_naming_it_and_leaves_no_dest(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    stored = registry.root / "digits" / "v1" / "pruned" / "model.onnx"
    stored.write_bytes(b"tampered")
    expected = hashlib.sha256((entries["pruned"].directory / "model.onnx").read_bytes()).hexdigest()
    actual = hashlib.sha256(b"tampered").hexdigest()
    dest = tmp_path / "pulled" / "pruned"

    with pytest.raises(RegistryError, match=r"model\.onnx: checksum mismatch") as caught:
        registry.pull("digits", "v1", "pruned", dest)

    assert expected in str(caught.value) and actual in str(caught.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_pull_of_unknown_variant_lists_the_published_ones(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)

    with pytest.raises(RegistryError, match="no variant 'distilled'; it has: pruned, tflite_int8"):
        registry.pull("digits", "v1", "distilled", tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_pull_refuses_a_non_empty_dest(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")

    with pytest.raises(RegistryError, match="not an empty directory"):
        registry.pull("digits", "v1", "pruned", dest)

    assert snapshot(dest) == {"mine.txt": b"keep me"}


@pytest.mark.parametrize("field", ["model", "version", "variant"])
@pytest.mark.parametrize(
    "bad",
    [
        "a/b",
        "..",
        "v1..2",
        "../etc",
        "bad\x00name",
        "line\nbreak",
        "tab\there",
        "",
        ".hidden",
        "-x",
        "x" * 129,
    ],
)
def test_bad_names_are_refused_before_any_write(
    registry: LocalRegistry, entries: dict[str, PublishEntry], field: str, bad: str
) -> None:
    names = {"model": "digits", "version": "v1", "variant": "pruned"} | {field: bad}
    variant_entries = {names["variant"]: entries["pruned"]}

    with pytest.raises(RegistryError) as caught:
        registry.publish(names["model"], names["version"], variant_entries, LINEAGE)

    message = str(caught.value)
    assert message.startswith(f"{field} name {bad!r}") and "\n" not in message
    assert not registry.root.exists()


def test_bad_entries_are_refused_before_any_write(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    no_record = tmp_path / "no_record"
    no_record.mkdir()
    cases = {
        "has no variant.json": PublishEntry(
            no_record, "onnx", {}, {}, {}, entries["pruned"].approval
        ),
        "format 'pt2'": PublishEntry(
            entries["pruned"].directory, "pt2", {}, {}, {}, entries["pruned"].approval
        ),
        "approval lacks approved_by, approved_at": PublishEntry(
            entries["pruned"].directory, "onnx", {}, {}, {}, {"comment": "?"}
        ),
    }
    for message, entry in cases.items():
        with pytest.raises(RegistryError, match=re.escape(message)):
            registry.publish("digits", "v1", {"pruned": entry}, LINEAGE)
    with pytest.raises(RegistryError, match="nothing to publish"):
        registry.publish("digits", "v1", {}, LINEAGE)
    assert not registry.root.exists()


def test_version_without_manifest_is_not_published(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    registry.publish("digits", "v2", entries, LINEAGE)
    unfinished = registry.root / "digits" / "v10" / "pruned"
    unfinished.mkdir(parents=True)
    (unfinished / "model.onnx").write_bytes(b"half")
    (registry.root / "orphan" / "v1" / "pruned").mkdir(parents=True)

    assert registry.list_versions("digits") == ["v2"]
    assert registry.list_models() == ["digits"]
    with pytest.raises(
        RegistryError, match=r"digits/v10 is not published .* published versions: v2"
    ):
        registry.read_manifest("digits", "v10")


def test_versions_sort_naturally(registry: LocalRegistry, entries: dict[str, PublishEntry]) -> None:
    for version in ("v10", "v2", "v1"):
        registry.publish("digits", version, entries, LINEAGE)

    assert registry.list_versions("digits") == ["v1", "v2", "v10"]


def test_open_registry_resolves_local_paths_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    registry = open_registry(RegistryConfig(uri="./reg"))

    assert isinstance(registry, LocalRegistry) and registry.root == tmp_path / "reg"
    assert registry.list_models() == []
    with pytest.raises(RegistryError, match="expected a local directory or s3://bucket/prefix"):
        open_registry(RegistryConfig(uri="gs://bucket/x"))


def test_cli_lists_shows_and_pulls(
    registry: Registry,
    entries: dict[str, PublishEntry],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no --params and no ./params.yaml, --uri alone is enough."""
    monkeypatch.chdir(tmp_path)
    registry.publish("digits", "v1", entries, LINEAGE)
    uri = ["--uri", registry.uri]
    sha = registry.read_manifest("digits", "v1")["variants"]["pruned"]["files"]["model.onnx"][
        "sha256"
    ]

    cli_main(["registry", "list", *uri])
    assert capsys.readouterr().out == "digits  1 version(s), latest v1\n"
    cli_main(["registry", "show", "digits", *uri])
    assert capsys.readouterr().out == "v1\n"
    cli_main(["registry", "show", "digits", "v1", *uri])
    shown = capsys.readouterr().out
    assert "pruned  format=onnx  approved by ada" in shown and sha in shown
    cli_main(["registry", "pull", "digits", "v1", "pruned", str(tmp_path / "out"), *uri])
    assert sha in capsys.readouterr().out
    assert snapshot(tmp_path / "out") == snapshot(entries["pruned"].directory)

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["registry", "show", "digits", "v9", *uri])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: digits/v9 is not published")


def test_cli_reads_the_registry_from_params(
    registry: Registry,
    entries: dict[str, PublishEntry],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {registry.uri}\n")

    cli_main(["registry", "show", "digits", "--params", str(params)])
    assert capsys.readouterr().out == "v1\n"
    with pytest.raises(SystemExit):
        cli_main(["registry", "list", "--params", str(tmp_path / "missing.yaml")])
    assert "missing.yaml: file not found" in capsys.readouterr().err


# ── verify ──────────────────────────────────────────────────────────────────────────────────


def rewrite(path: Path, data: bytes) -> None:
    """Replace a stored (read-only, hard-linked) file's bytes, as a tamperer would."""
    path.unlink()
    path.write_bytes(data)


def kinds(report: VerifyReport) -> list[tuple[str, str]]:
    return [(p.kind, p.key) for p in report.problems]


def test_verify_of_a_clean_registry_counts_what_it_read(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    assert registry.verify() == VerifyReport(0, 0, [])
    registry.publish("digits", "v1", entries, LINEAGE)
    registry.publish("digits", "v2", entries, LINEAGE)
    registry.publish("other", "1", {"pruned": entries["pruned"]}, LINEAGE)

    report = registry.verify()

    assert (report.checked_versions, report.checked_files, report.problems) == (3, 10, [])
    assert report.ok


def test_verify_reports_corrupt_and_missing_files(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    version = registry.root / "digits" / "v1"
    model = version / "pruned" / "model.onnx"
    same_size = bytes(len(model.read_bytes()))
    rewrite(model, same_size)
    rewrite(version / "tflite_int8" / "model.onnx", b"short")
    (version / "tflite_int8" / "variant.json").unlink()

    report = registry.verify()

    assert kinds(report) == [
        ("corrupt", "digits/v1/pruned/model.onnx"),
        ("corrupt", "digits/v1/tflite_int8/model.onnx"),
        ("missing", "digits/v1/tflite_int8/variant.json"),
    ]
    assert hashlib.sha256(same_size).hexdigest() in report.problems[0].detail
    assert "5 bytes stored" in report.problems[1].detail
    assert not report.ok and report.checked_files == 4


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema": 1, "model": "digits"}', "lacks version, created_at, variants"),
        (
            b'{"schema": 1, "model": "digits", "version": "v9", "created_at": "x", "variants": {}}',
            "stored under digits/v1",
        ),
        (
            b'{"schema": 1, "model": "digits", "version": "v1", "created_at": "x", '
            b'"variants": {"a": {"format": "onnx", "files": {"../../x": '
            b'{"sha256": "' + b"0" * 64 + b'", "size_bytes": 1}}}}}',
            "escapes the variant directory",
        ),
        (
            b'{"schema": 1, "model": "digits", "version": "v1", "created_at": "x", '
            b'"variants": {"a": {"format": "onnx", "files": {"m": {"sha256": "zz"}}}}}',
            "m: expected sha256 and size_bytes",
        ),
    ],
)
def test_verify_reports_a_bad_manifest_and_read_manifest_refuses_it(
    registry: LocalRegistry, entries: dict[str, PublishEntry], body: bytes, detail: str
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    rewrite(registry.root / "digits" / "v1" / "manifest.json", body)

    report = registry.verify()

    assert [(p.kind, p.key) for p in report.problems] == [
        ("bad-manifest", "digits/v1/manifest.json")
    ]
    assert detail in report.problems[0].detail and not report.ok
    with pytest.raises(RegistryError, match=re.escape(detail)) as caught:
        registry.read_manifest("digits", "v1")
    assert "\n" not in str(caught.value)


def test_verify_reports_leftovers_as_orphaned_but_ok(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    (registry.root / "digits" / "v1" / "pruned" / "notes.txt").write_text("unlisted")
    interrupted = registry.root / "digits" / "v2" / "pruned"
    interrupted.mkdir(parents=True)
    (interrupted / "model.onnx").write_bytes(b"half a publish")

    report = registry.verify()

    assert kinds(report) == [
        ("orphaned", "digits/v1/pruned/notes.txt"),
        ("orphaned", "digits/v2"),
    ]
    assert "no manifest.json: an interrupted" in report.problems[1].detail
    assert report.ok and report.checked_versions == 1


@pytest.mark.parametrize("marker", [RESERVATION_NAME, CLAIM_NAME])
def test_a_bare_reservation_is_orphaned_only_once_stale(
    registry: LocalRegistry, marker: str
) -> None:
    version = registry.root / "digits" / "7"
    version.mkdir(parents=True)
    created = datetime.now(UTC) - timedelta(minutes=30)
    (version / marker).write_text(json.dumps({"created_at": created.isoformat()}))

    assert registry.verify().problems == []
    stale = registry.verify(stale_after=timedelta(minutes=10))
    assert kinds(stale) == [("orphaned", "digits/7")] and stale.ok
    assert "never published" in stale.problems[0].detail
    (version / marker).write_text("garbage")
    assert kinds(registry.verify()) == [("orphaned", "digits/7")]


def test_verify_report_ok_ignores_only_orphans() -> None:
    orphan = Problem("orphaned", "m/1/x", "not listed")
    assert VerifyReport(1, 1, [orphan]).ok
    for kind in ("corrupt", "missing", "bad-manifest"):
        assert not VerifyReport(1, 1, [orphan, Problem(kind, "m/1/y", "?")]).ok  # type: ignore[arg-type]


# ── version allocation ──────────────────────────────────────────────────────────────────────


def test_allocated_versions_count_up_and_publish_cleanly(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    first = registry.allocate_version("digits")
    second = registry.allocate_version("digits")

    assert (first, second) == ("1", "2")
    assert registry.list_versions("digits") == [] and registry.list_models() == []
    assert (registry.root / "digits" / "1" / RESERVATION_NAME).is_file()
    registry.publish("digits", second, entries, LINEAGE)
    registry.publish("digits", first, entries, LINEAGE)
    assert registry.list_versions("digits") == ["1", "2"]
    assert registry.verify() == VerifyReport(2, 8, [])
    assert registry.allocate_version("digits") == "3"


def test_allocation_skips_versions_published_explicitly(
    registry: LocalRegistry, entries: dict[str, PublishEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.publish("digits", "4", entries, LINEAGE)
    registry.publish("digits", "v9", entries, LINEAGE)
    assert registry.allocate_version("digits") == "5"  # listing hint: past the highest integer

    monkeypatch.setattr(registry, "_next_integer", lambda model: 3)  # a stale hint
    assert registry.allocate_version("digits") == "3"
    assert registry.allocate_version("digits") == "6"  # 4 is published, 5 reserved
    report = registry.verify()
    assert report.ok  # reservations are not damage; the one below 4 is shown as a gap
    assert [(p.kind, p.key) for p in report.problems] == [("orphaned", "digits/3")]


def test_allocation_survives_a_lost_reply_to_its_own_reservation(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create landed but reported "already there" (a retried S3 PUT): it is still ours."""
    real_create = registry._create

    def create_then_claim_it_existed(key: str, source: Path | bytes, sha256: str) -> bool:
        real_create(key, source, sha256)
        return False

    monkeypatch.setattr(registry, "_create", create_then_claim_it_existed)

    assert registry.allocate_version("digits") == "1"


def run_threads(count: int, target: Callable[[int], object]) -> list[object]:
    """Start `count` threads together at a barrier; their results (or exceptions), in order."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(n: int) -> None:
        barrier.wait()
        try:
            results[n] = target(n)
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_eight_concurrent_allocators_get_eight_versions(registry: LocalRegistry) -> None:
    registry.allocate_version("digits")  # 1 is taken before they start
    # separate registry objects, as separate processes on one shared directory would have
    allocators = [LocalRegistry(registry.root) for _ in range(8)]

    versions = run_threads(8, lambda n: allocators[n].allocate_version("digits"))

    assert sorted(versions, key=int) == [str(n) for n in range(2, 10)]  # type: ignore[arg-type]


def test_concurrent_publishes_of_one_version_with_other_files_have_one_winner(
    registry: LocalRegistry, entries: dict[str, PublishEntry], tmp_path: Path
) -> None:
    """Without the claim both could fail: each uploads a file first, then meets the other's."""
    theirs = {
        "pruned": make_entry(tmp_path / "theirs", "pruned", b"their pruned bytes"),
        "tflite_int8": make_entry(tmp_path / "theirs", "tflite_int8", b"their int8 bytes"),
    }
    candidates = [entries, theirs]

    outcomes = run_threads(2, lambda n: registry.publish("digits", "5", candidates[n], {"n": n}))

    errors = [o for o in outcomes if isinstance(o, RegistryError)]
    winners = [n for n, o in enumerate(outcomes) if not isinstance(o, Exception)]
    assert len(winners) == 1 and len(errors) == 1, outcomes
    assert re.search(r"claimed by another publish|immutable", str(errors[0]))
    assert registry.read_manifest("digits", "5")["lineage"] == {"n": winners[0]}
    assert registry.verify() == VerifyReport(1, 4, [])


def test_concurrent_publishes_of_one_version_with_same_files_have_one_winner(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    outcomes = run_threads(2, lambda n: registry.publish("digits", "5", entries, {"n": n}))

    errors = [o for o in outcomes if isinstance(o, RegistryError)]
    assert len(errors) == 1 and "published versions are immutable" in str(errors[0])
    assert registry.verify() == VerifyReport(1, 4, [])


def test_a_claim_for_other_files_stops_a_publish_before_any_write(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    version = registry.root / "digits" / "3"
    version.mkdir(parents=True)
    (version / CLAIM_NAME).write_text(json.dumps({"fingerprint": "0" * 64, "created_at": "x"}))

    with pytest.raises(RegistryError, match=r"digits/3 is claimed by another publish") as caught:
        registry.publish("digits", "3", entries, LINEAGE)

    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in version.iterdir()) == [CLAIM_NAME]


def test_publishing_the_same_version_again_returns_it(
    registry: LocalRegistry, entries: dict[str, PublishEntry]
) -> None:
    """A retry whose first try landed (e.g. the reply was lost) succeeds, changing nothing."""
    first = registry.publish("digits", "v1", entries, LINEAGE)
    before = snapshot(registry.root)

    again = registry.publish("digits", "v1", entries, LINEAGE)

    assert again == first and snapshot(registry.root) == before


def test_os_errors_become_one_line_registry_errors(
    tmp_path: Path, entries: dict[str, PublishEntry]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the registry should be")
    registry = LocalRegistry(blocker)

    for action in (
        lambda: registry.publish("digits", "v1", entries, LINEAGE),
        lambda: registry.allocate_version("digits"),
    ):
        with pytest.raises(RegistryError, match=re.escape(str(blocker))) as caught:
            action()
        assert "\n" not in str(caught.value)
    assert blocker.read_text() == "a file where the registry should be"


# ── the verify command ──────────────────────────────────────────────────────────────────────


def test_cli_verify_exit_codes(
    registry: LocalRegistry,
    entries: dict[str, PublishEntry],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    registry.publish("digits", "v1", entries, LINEAGE)
    uri = ["--uri", registry.uri]

    cli_main(["registry", "verify", *uri])
    assert capsys.readouterr().out == (
        f"OK: {registry.uri}: 1 version(s), 4 file(s) checked; no problems\n"
    )

    leftover = registry.root / "digits" / "v2" / "pruned"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"half")
    cli_main(["registry", "verify", *uri])  # orphans alone: listed, exit 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("1 orphaned") and out[1].startswith("  orphaned  digits/v2: 1 file(s)")

    rewrite(registry.root / "digits" / "v1" / "pruned" / "model.onnx", b"tampered")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["registry", "verify", *uri])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"FAILED: {registry.uri}: 1 version(s), 4 file(s) checked; ")
    assert "1 corrupt" in out[0] and "1 orphaned" in out[0]
    assert any(line.startswith("  corrupt  digits/v1/pruned/model.onnx: ") for line in out)


def test_cli_verify_reads_the_registry_from_params(
    registry: LocalRegistry,
    entries: dict[str, PublishEntry],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry.publish("digits", "v1", entries, LINEAGE)
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  uri: {registry.uri}\n")
    os.unlink(registry.root / "digits" / "v1" / "tflite_int8" / "variant.json")

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["registry", "verify", "--params", str(params)])

    assert exit_info.value.code == 1
    assert "  missing  digits/v1/tflite_int8/variant.json: listed in" in capsys.readouterr().out


def test_an_unreadable_file_is_one_problem_not_the_end_of_verify(tmp_path: Path) -> None:
    """A manifest or file the process may not read stopped verify with exit 2; it is listed as
    unreadable and the other versions are still checked. Permissions cannot make a file
    unreadable here (the tests run as root), so this registry's reads of one file fail as the
    OS would refuse them."""
    from tasks.errors import RegistryError
    from tasks.registry.local import LocalRegistry

    class Refusing(LocalRegistry):
        def _read(self, key: str) -> bytes | None:
            if key == "m/1/manifest.json":
                raise RegistryError(f"{self._uri_of(key)}: Permission denied")
            return super()._read(key)

    for version, body in (("1", "{}"), ("2", "{}")):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "manifest.json").write_text(body)
    report = Refusing(tmp_path).verify()
    kinds = {(p.kind, p.key) for p in report.problems}
    assert ("unreadable", "m/1/manifest.json") in kinds
    assert ("bad-manifest", "m/2/manifest.json") in kinds
    assert not report.ok


def test_content_is_claimed_once_and_a_stale_claim_is_taken_over(tmp_path: Path) -> None:
    from tasks.registry.local import LocalRegistry

    registry = LocalRegistry(tmp_path)
    assert registry.claim_content("m", "abc123", "run-1") is None
    other = registry.claim_content("m", "abc123", "run-2")
    assert other is not None and other["run"] == "run-1"
    assert registry.claim_content("m", "abc123", "run-1") is None  # its own, read back
    assert registry.claim_content("m", "def456", "run-2") is None  # other content: free
    claim = tmp_path / "m" / ".claims" / "abc123.json"
    stale = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    claim.write_text(json.dumps({"run": "run-1", "claimed_at": stale}))
    assert registry.claim_content("m", "abc123", "run-3") is None  # run-1 died: taken over
    assert json.loads(claim.read_text())["run"] == "run-3"
    # claims are not decisions, nor versions
    assert registry.list_decisions("m") == [] and registry.list_versions("m") == []
    assert registry.verify().problems == []


def test_verify_reports_a_version_number_burnt_below_the_newest(tmp_path: Path) -> None:
    """A run stopped after reserving version 2; the next publish became 3, and verify said
    nothing about the gap while the reservation was fresh."""
    from tasks.registry.local import LocalRegistry

    for version in ("1", "3"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "manifest.json").write_text("{}")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / ".reserved").write_text(
        json.dumps({"created_at": datetime.now(UTC).isoformat(), "nonce": "x"})
    )
    (tmp_path / "m" / "4").mkdir()  # reserved above the newest: a publish may be on its way
    (tmp_path / "m" / "4" / ".reserved").write_text(
        json.dumps({"created_at": datetime.now(UTC).isoformat(), "nonce": "y"})
    )
    problems = {p.key: p for p in LocalRegistry(tmp_path).verify().problems}
    assert "a gap in the version numbers" in problems["m/2"].detail
    assert "m/4" not in problems
