"""evaluate: run every variant in its own runtime on the test split and compare with the baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.data import Split
from tasks.errors import ModelError, brief
from tasks.io import atomic_dir, atomic_file, read_json, sha256_file, write_json
from tasks.plan import content_key
from tasks.runtimes import load_predictor
from tasks.variant import (
    BASELINE,
    EVALUATION_SPLIT,
    RECORD_NAME,
    TORCH_FILE,
    VariantRecord,
    read_record,
)

# compressed_size_bytes: every model file compressed with zstd at this level, as a release
# pipeline ships it over the air (`zstd -19`); entropy coding is where clustered and
# weight-shared models pay off, so the level is fixed for every variant and the baseline
ZSTD_LEVEL = 19


@dataclass(frozen=True)
class VariantMetrics:
    """One row of metrics/variants.json."""

    status: str
    technique: str
    source: str | None
    runtime: str | None
    accuracy: float | None
    accuracy_drop: float | None  # percentage points, baseline minus variant
    agreement: float | None  # top-1 agreement with the baseline
    kl_divergence: float | None  # mean KL(baseline ‖ variant) over test samples
    per_class_accuracy: list[float | None] | None
    size_bytes: int | None
    # the model file(s) as they travel over the air: zstd at ZSTD_LEVEL (null in files from
    # before it was measured)
    compressed_size_bytes: int | None
    size_ratio: float | None  # baseline size / variant size
    params: int | None
    macs: int | None
    cpu_fp16_accuracy: float | None
    reason: str | None
    split: str  # the split accuracy is measured on
    samples: int  # its size


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, VariantMetrics]
    logits: dict[str, Array]
    labels: Array


def run_variant(variant_dir: Path, images: Array, threads: int = 1, batch_size: int = 64) -> Array:
    predictor = load_predictor(variant_dir, threads=threads)
    return np.concatenate(
        [predictor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def evaluate(
    variants_dir: Path,
    names: list[str],
    test: Split,
    threads: int = 1,
    cache_dir: Path | None = None,
    split: str = EVALUATION_SPLIT,
) -> Evaluation:
    """Metrics for the baseline and each named variant on `test` (the split named `split`:
    the search selects on val); predictions kept per sample. With a cache_dir (one per split
    and evaluation code), a model evaluated before on them is not run again."""
    by_model = ByModel(test.x, threads, cache_dir)
    base_dir = variants_dir / BASELINE
    base_record = read_record(base_dir)
    base_logits, base_compressed, _ = by_model.measure(base_dir)
    base_size = model_size(base_dir)
    logits = {BASELINE: base_logits}
    metrics = {
        BASELINE: metrics_row(
            base_record,
            base_logits,
            base_logits,
            test.y,
            base_size,
            base_size,
            base_compressed,
        )
    }
    for name in names:
        directory = variants_dir / name
        record = read_record(directory)
        if record.status != "ok":
            metrics[name] = metrics_row(record, None, base_logits, test.y, None, base_size)
            continue
        try:
            logits[name], compressed, hit = by_model.measure(directory)
        # a model its own runtime cannot load or run fails its row, not the evaluation
        except (ModelError, RuntimeError, ValueError) as exc:
            failed = replace(record, status="failed", reason=f"{name}: evaluation: {brief(exc)}")
            metrics[name] = metrics_row(failed, None, base_logits, test.y, None, base_size)
            print(f"evaluate: {name} failed: {failed.reason}", flush=True)
            continue
        metrics[name] = metrics_row(
            record,
            logits[name],
            base_logits,
            test.y,
            model_size(directory),
            base_size,
            compressed,
        )
        seen = " (evaluated before)" if hit else ""
        print(f"evaluate: {name} accuracy {metrics[name].accuracy:.4f}{seen}", flush=True)
    metrics = {name: replace(row, split=split) for name, row in metrics.items()}
    return Evaluation(metrics=metrics, logits=logits, labels=test.y)


@dataclass(frozen=True)
class ByModel:
    """A variant's logits on the test images and its compressed size, kept under `directory`
    by the content of its model files and variant.json (all its predictor reads): one rebuilt
    variant does not run the others again. `directory` must be one per test split and
    evaluation code; None keeps nothing."""

    images: Array
    threads: int
    directory: Path | None

    def measure(self, variant_dir: Path) -> tuple[Array, int, bool]:
        """The logits, the zstd size, and whether the logits were kept from an earlier run."""
        entry = self._entry(variant_dir)  # the files hashed once for both
        logits, kept = self._logits(variant_dir, entry)
        return logits, self._compressed_size(variant_dir, entry), kept

    def _logits(self, variant_dir: Path, entry: Path | None) -> tuple[Array, bool]:
        path = None if entry is None else entry / f"logits-{self.threads}-threads.npy"
        if path is not None and path.is_file():
            kept = np.load(path)
            if kept.shape[0] == len(self.images):
                return kept, True
        logits = run_variant(variant_dir, self.images, self.threads)
        if path is not None:
            with atomic_file(path) as tmp:
                np.save(tmp, logits)
        return logits, False

    def _compressed_size(self, variant_dir: Path, entry: Path | None) -> int:
        path = None if entry is None else entry / f"zstd-{ZSTD_LEVEL}.json"
        if path is not None and path.is_file():
            return int(read_json(path)["bytes"])
        size = compressed_size(variant_dir)
        if path is not None:
            write_json(path, {"bytes": size})
        return size

    def _entry(self, variant_dir: Path) -> Path | None:
        if self.directory is None:
            return None
        files = [*model_files(variant_dir), variant_dir / RECORD_NAME]
        return self.directory / content_key({p.name: sha256_file(p) for p in files})


def model_size(variant_dir: Path) -> int:
    """Bytes on disk of the model file(s) (model_files)."""
    return sum(p.stat().st_size for p in model_files(variant_dir))


def compressed_size(variant_dir: Path, level: int = ZSTD_LEVEL) -> int:
    """Bytes of the model file(s) each compressed with zstd at `level`: what a device downloads."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level)
    return sum(len(compressor.compress(p.read_bytes())) for p in model_files(variant_dir))


def model_files(variant_dir: Path) -> list[Path]:
    """The model file(s) of a variant directory: what the registry publishes of it but
    variant.json (not the torch module a torch-producing variant keeps for its successors)."""
    return sorted(
        p for p in variant_dir.iterdir() if p.is_file() and p.name not in (RECORD_NAME, TORCH_FILE)
    )


def metrics_row(
    record: VariantRecord,
    logits: Array | None,
    base_logits: Array,
    labels: Array,
    size: int | None,
    base_size: int,
    compressed: int | None = None,
) -> VariantMetrics:
    common: dict[str, Any] = dict(
        status=record.status,
        technique=record.technique,
        source=record.source,
        runtime=record.runtime,
        params=record.params,
        macs=record.macs,
        reason=record.reason,
        cpu_fp16_accuracy=record.extra.get("cpu_fp16_accuracy"),
        split=EVALUATION_SPLIT,
        samples=len(labels),
    )
    if logits is None:
        return VariantMetrics(
            accuracy=None,
            accuracy_drop=None,
            agreement=None,
            kl_divergence=None,
            per_class_accuracy=None,
            size_bytes=None,
            compressed_size_bytes=None,
            size_ratio=None,
            **common,
        )
    predicted, base_predicted = logits.argmax(1), base_logits.argmax(1)
    acc, base_acc = float((predicted == labels).mean()), float((base_predicted == labels).mean())
    return VariantMetrics(
        accuracy=round(acc, 6),
        accuracy_drop=round(100.0 * (base_acc - acc), 4),
        agreement=round(float((predicted == base_predicted).mean()), 6),
        kl_divergence=round(mean_kl(base_logits, logits), 6),
        per_class_accuracy=per_class_accuracy(predicted, labels),
        size_bytes=size,
        compressed_size_bytes=compressed,
        size_ratio=round(base_size / size, 3) if size else None,
        **common,
    )


def mean_kl(reference_logits: Array, logits: Array) -> float:
    """Mean over samples of KL(softmax(reference) ‖ softmax(logits))."""
    log_p, log_q = _log_softmax(reference_logits), _log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def _log_softmax(logits: Array) -> Array:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def per_class_accuracy(predicted: Array, labels: Array) -> list[float | None]:
    """Accuracy per class index; None for a class absent from the test split (JSON has no NaN)."""
    return [
        round(float((predicted[labels == c] == c).mean()), 6) if (labels == c).any() else None
        for c in range(int(labels.max()) + 1)
    ]


def read_predictions(predictions_file: Path | str) -> dict[str, Array]:
    """predictions.npz as write_evaluation wrote it: `labels`, and per variant its `logits__<name>`
    and `pred__<name>`, all read into memory (the file is closed on return)."""
    with np.load(predictions_file) as saved:
        return {key: saved[key] for key in saved.files}


def write_evaluation(evaluation: Evaluation, metrics_dir: Path, plot_file: Path) -> None:
    """metrics/variants.json, per-sample predictions, and the accuracy-vs-size plot data."""
    with atomic_dir(metrics_dir) as staging:
        arrays: dict[str, Any] = {"labels": evaluation.labels}
        for name, logits in evaluation.logits.items():
            arrays[f"logits__{name}"] = logits
            arrays[f"pred__{name}"] = logits.argmax(1)
        np.savez(staging / "predictions.npz", **arrays)
        write_json(
            staging / "variants.json",
            {name: asdict(row) for name, row in evaluation.metrics.items()},
        )
    points = [
        {
            "variant": name,
            "size_kb": round(row.size_bytes / 1024, 1),
            "compressed_kb": _kib(row.compressed_size_bytes),
            "accuracy": row.accuracy,
        }
        for name, row in evaluation.metrics.items()
        if row.status == "ok" and row.size_bytes is not None
    ]
    write_json(plot_file, points)


def _kib(size: int | None) -> float | None:
    return None if size is None else round(size / 1024, 1)
