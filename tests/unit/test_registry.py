"""The local-directory registry: publish, list, show, pull; immutability and checksums."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.cli import main as cli_main
from tasks.config import RegistryConfig
from tasks.registry import (
    LocalRegistry,
    PublishEntry,
    Registry,
    RegistryError,
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
