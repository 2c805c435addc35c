"""What every runtime module declares (`Runtime`) and what its loader returns (`LoadedModel`).

Images go in as float32 NCHW pixels in [0, 1]; each loader applies the variant's own
preprocessing (normalisation, layout, int8 quantisation) as recorded in variant.json. A loaded
model is split into prepare → infer → finish so a benchmark can time `infer` alone, the way the
runtimes' own benchmark tools do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.variant import VariantRecord

# one step of a loaded model: arrays in, arrays out
Step = Callable[[Array], Array]


@dataclass(frozen=True)
class LoadedModel:
    """A variant in its runtime: images → logits, in three steps."""

    prepare: Step  # [0, 1] NCHW images → the runtime's input (normalised, laid out, quantised)
    infer: Step  # runtime input → raw output (the part a benchmark times)
    finish: Step  # raw output → float32 logits

    def __call__(self, images: Array) -> Array:
        return self.finish(self.infer(self.prepare(images)))


Predictor = LoadedModel
# (the model file, its variant.json, CPU threads) → the loaded model; imports the runtime lazily
Loader = Callable[[Path, VariantRecord, int], LoadedModel]


@dataclass(frozen=True)
class Runtime:
    """One runtime, declared once in its own module as `RUNTIME`; tasks.runtimes holds the table."""

    name: str  # variant.json's `runtime`
    format: str  # the registry manifest's `format` for its variants
    model_file: str  # the model file's name in a variant directory
    packages: tuple[str, ...]  # pip distributions it needs; the first is the runtime itself
    edge: bool  # the slim `pip install .[edge]` (no torch, no TensorFlow) can run it
    runner_kinds: frozenset[str]  # runner kinds (params.yaml `runners.*.kind`) that measure it
    load: Loader
    # the pyproject extra that installs `packages` (None: installed by hand, e.g. TensorRT's)
    extra: str | None = None
    # files the model file needs beside it in the variant directory (an OpenVINO IR's weights)
    companion_files: tuple[str, ...] = ()

    @property
    def install_hint(self) -> str:
        """How a machine gets this runtime, for the error that says it lacks it."""
        if self.extra is None:
            return f"install {', '.join(self.packages)}"
        return f"pip install '.[{self.extra}]'"


def normalize(images: Array, record: VariantRecord) -> Array:
    """[0, 1] pixels → the variant's normalised float32 input, with its recorded mean/std."""
    spec = record.preprocess or {}
    mean = np.asarray(spec.get("mean", [0.0]), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.get("std", [1.0]), dtype=np.float32).reshape(1, -1, 1, 1)
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)
