"""The nightly run's plan: content keys that name work directories and cache entries, and the
order variants are built in (a combination after its source)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.technique import VariantConfig


def content_key(*parts: Any) -> str:
    """A short content hash of JSON-able parts (pydantic models by their values)."""

    def plain(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def in_dependency_order(variants: dict[str, VariantConfig]) -> list[tuple[str, VariantConfig]]:
    """Variants ordered so that each comes after the variant it starts from."""
    ordered: list[tuple[str, VariantConfig]] = []
    placed = {"baseline"}
    pending = dict(variants)
    while pending:
        ready = [name for name, cfg in pending.items() if cfg.source in placed]
        if not ready:  # params validation refuses cycles; never spin on what slipped past it
            raise ValueError(f"variants {sorted(pending)}: their sources never reach baseline")
        for name in ready:
            ordered.append((name, pending.pop(name)))
            placed.add(name)
    return ordered
