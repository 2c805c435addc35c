"""Is what tonight would publish already in the registry? The same inputs' hashes and the same
variants' files, byte for byte, as a published version: then that version is named instead of a
new one (status unchanged), and a concurrent identical run is caught by claiming this content.

Apart from tasks/lineage.py (what the inputs are), which the data module imports: these read
the variants' published files, and tasks/variant.py imports the data module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tasks.variant import published_files


def unchanged_since(
    previous: dict[str, Any] | None,
    inputs: dict[str, Any],
    variant_dirs: dict[str, Path],
    each_held: bool = False,
) -> str | None:
    """The version of `previous` (the last published manifest) if it came from the same input
    hashes and holds exactly these variants with byte-identical files; else None.

    With each_held, `previous` may hold more, and under other names: each of these variants'
    files equal to one of its variants' is enough. A search offers its pick alone; when the pick
    is a variant the nightly already published (the hand-written int8 was the fastest), a new
    version would hold nothing new.

    Input hashes count because a variant's files can stay identical while the data it was
    measured on changed (new test labels: other accuracies). Metrics and approvals are left
    out: latencies are measured afresh every night and differ run to run.
    """
    if previous is None:
        return None
    held = previous.get("variants", {})
    if not each_held and set(held) != set(variant_dirs):
        return None
    if _input_hashes(previous.get("lineage", {}).get("inputs", {})) != _input_hashes(inputs):
        return None

    def files(listing: dict[str, Any]) -> dict[str, tuple[str, int]]:
        return {rel: (m["sha256"], m["size_bytes"]) for rel, m in listing.items()}

    for name, directory in variant_dirs.items():
        local = files(published_files(directory))
        if each_held:
            if not any(files(v.get("files", {})) == local for v in held.values()):
                return None
        elif files(held[name].get("files", {})) != local:
            return None
    return str(previous["version"])


def unchanged_in(
    manifests: list[dict[str, Any]],
    inputs: dict[str, Any],
    variant_dirs: dict[str, Path],
    each_held: bool = False,
) -> str | None:
    """The first of `manifests` (newest first: every published version) that holds these files
    from these inputs (unchanged_since); a version older than the latest counts too, so files
    that flip back to version 1's are not published again as version 3."""
    return next(
        (
            version
            for manifest in manifests
            if (version := unchanged_since(manifest, inputs, variant_dirs, each_held))
        ),
        None,
    )


def content_of(inputs: dict[str, Any], variant_dirs: dict[str, Path]) -> str:
    """A key of what a publish would hold: the inputs' hashes and every variant's files, by
    name (what unchanged_since compares), for claiming it against a concurrent identical run."""
    files = {
        name: {rel: meta["sha256"] for rel, meta in published_files(directory).items()}
        for name, directory in sorted(variant_dirs.items())
    }
    text = json.dumps([_input_hashes(inputs), files], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _input_hashes(inputs: dict[str, Any]) -> dict[str, Any]:
    """The content fields of a lineage's inputs (revs and paths may name the same bytes)."""
    return {key: value for key, value in inputs.items() if key.endswith("_sha256")}
