"""Variants built where they run: a TensorRT engine is specific to its GPU, so the nightly run
asks a CUDA runner to build it (an EngineRequest), and the runner hands back where it put the
engine and the logits it computed on the test images (a BuiltEngine). Merging brings those
engines into the run: their files, metrics and per-sample predictions."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluate import VariantMetrics
from tasks.plan import content_key
from tasks.store import ArtifactStore
from tasks.technique import VariantConfig
from tasks.techniques import technique_of
from tasks.variant import VariantRecord, read_record


@dataclass(frozen=True)
class EngineRequest:
    """Build variant `config` on the runner from the source variant at `source_key`."""

    source_key: str  # the source's name in the run; its store key once uploaded
    config: dict[str, Any]
    build_on: str  # the runner kind that builds it (the technique's `build_on`)

    def as_json(self) -> dict[str, Any]:
        return {"source_key": self.source_key, "config": self.config, "build_on": self.build_on}


@dataclass(frozen=True)
class BuiltEngine:
    """Where a runner put an engine it built, and the logits it computed with it."""

    key: str
    logits_key: str
    build: Any  # the builder's own notes (TensorRT version, timings), kept as given

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> BuiltEngine:
        return cls(key=payload["key"], logits_key=payload["logits_key"], build=payload.get("build"))


@dataclass(frozen=True)
class MergedEngines:
    """The run's variants, metrics and predictions with the runner-built engines in them."""

    records: dict[str, VariantRecord]
    dirs: dict[str, str]
    metrics: dict[str, VariantMetrics]
    predictions_file: Path


def engine_requests(
    variants: dict[str, VariantConfig], records: dict[str, VariantRecord]
) -> dict[str, EngineRequest]:
    """Variants skipped here because they must be built on a runner, whose source was built."""
    requests = {}
    for name, cfg in variants.items():
        build_on = technique_of(cfg).build_on
        if build_on and records[name].status == "skipped" and records[cfg.source].status == "ok":
            requests[name] = EngineRequest(cfg.source, cfg.model_dump(), build_on)
    return requests


def merge_engines(
    engines: dict[str, BuiltEngine],
    store: ArtifactStore,
    merged: MergedEngines,
    variants_root: Path,
    run_dir: Path,
) -> MergedEngines:
    """Fetch each built engine; its metrics come from the logits the runner computed."""
    from tasks.evaluate import (  # the runtimes: only when merging
        compressed_size,
        metrics_row,
        model_size,
        read_predictions,
    )

    records, dirs, metrics = dict(merged.records), dict(merged.dirs), dict(merged.metrics)
    predictions: dict[str, Any] = read_predictions(merged.predictions_file)
    base_dir = Path(dirs["baseline"])
    for name, built in engines.items():
        directory = store.get_dir(built.key, variants_root / f"{name}-engine-{_key(built)}")
        logits = np.load(io.BytesIO(store.get_bytes(built.logits_key)))
        records[name], dirs[name] = read_record(directory), str(directory)
        metrics[name] = metrics_row(
            records[name],
            logits,
            predictions["logits__baseline"],
            predictions["labels"],
            model_size(directory),
            model_size(base_dir),
            compressed_size(directory),
        )
        predictions[f"logits__{name}"], predictions[f"pred__{name}"] = logits, logits.argmax(1)
    predictions_file = run_dir / "predictions.npz"
    np.savez(predictions_file, **predictions)
    return MergedEngines(records, dirs, metrics, predictions_file)


def _key(built: BuiltEngine) -> str:
    return content_key(asdict(built))  # the runner's JSON, as keyed before it was typed
