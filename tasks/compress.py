"""The per-variant stage: dispatch one variant from params.yaml to its technique's module
(tasks/techniques/, or one params.yaml or an installed package brings).

A technique that cannot handle this model (VariantError) records the variant as failed, with
the reason, instead of stopping the pipeline; a variant whose source failed is failed in turn.
Bad input (config, files) still stops with a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import ConfigError, ModelError, VariantError
from tasks.io import atomic_dir
from tasks.technique import VariantConfig
from tasks.techniques import technique_of
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord, read_record, write_record

if TYPE_CHECKING:
    from tasks.params_model import Params


def compress(
    params: Params, name: str, data_dir: Path, baseline_dir: Path, source_dir: Path, out_dir: Path
) -> VariantRecord:
    """Build variant `name` of params.yaml into out_dir; returns its record (ok, skipped or failed)."""
    if name not in params.variants:
        known = ", ".join(params.variants) or "none"
        raise ConfigError(f"variants.{name}: unknown variant; params.yaml defines: {known}")
    return build_variant(
        name, params.variants[name], params.seed, data_dir, baseline_dir, source_dir, out_dir
    )


def build_variant(
    name: str,
    cfg: VariantConfig,
    seed: int,
    data_dir: Path,
    baseline_dir: Path,
    source_dir: Path,
    out_dir: Path,
) -> VariantRecord:
    """Dispatch one variant to its technique's module (found in the technique table), torch
    on BUILD_THREADS threads wherever it runs: the same inputs build the same bytes."""
    import torch

    from tasks.train import BUILD_THREADS

    torch.set_num_threads(BUILD_THREADS)
    technique = technique_of(cfg)
    source = read_record(source_dir)
    if source.status != "ok":
        reason = f"source '{source.name}' is {source.status}"
        return _record_failure(name, cfg.technique, cfg.source, reason, out_dir)
    context = BuildContext(
        name=name,
        seed=seed,
        source_dir=source_dir,
        out_dir=out_dir,
        data_dir=data_dir,
        baseline_dir=baseline_dir,
    )
    try:
        return technique.build(context, cfg)
    except VariantError as exc:
        return _record_failure(name, cfg.technique, cfg.source, str(exc), out_dir)
    except ModelError as exc:
        # the variant's own model failed a check (its export differs from its torch model, say):
        # that variant fails, the night goes on with the others
        return _record_failure(name, cfg.technique, cfg.source, f"{name}: {exc}", out_dir)


def _record_failure(
    name: str, technique: str, source: str, reason: str, out_dir: Path
) -> VariantRecord:
    record = VariantRecord(
        name=name, technique=technique, status="failed", source=source, reason=reason
    )
    with atomic_dir(out_dir) as staging:
        write_record(staging, record)
    return record
