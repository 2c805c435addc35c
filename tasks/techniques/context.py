"""What a technique's `build(context, config)` gets: where its variant is built from and into,
and lazy loaders for what it may ask (splits, preprocessing, the teacher, the source's model).

Apart from the declaration (base.py) because these loaders import the data, training and
variant modules, which import the config, which imports the declaration: together they were
an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from tasks.data import Preprocess, Split
    from tasks.variant import VariantRecord


@dataclass(frozen=True)
class BuildContext:
    """Where one variant is built from and into; the loaders read only what a technique asks for.

    data_dir and baseline_dir are None where a variant is built away from the prepared data (a
    runner building an engine from its source's files): there, preprocess comes from the source's
    variant.json and teacher() is None.
    """

    name: str
    seed: int
    source_dir: Path
    out_dir: Path
    data_dir: Path | None = None
    baseline_dir: Path | None = None

    def split(self, name: str) -> Split:
        """One prepared split (train, calib, val, test)."""
        from tasks.data import load_split
        from tasks.errors import ModelError

        if self.data_dir is None:
            raise ModelError(f"{self.name}: split '{name}' asked for where no data was prepared")
        return load_split(self.data_dir, name)

    def preprocess(self) -> Preprocess:
        """How images become inputs: the prepared data's, else the source variant's record."""
        from tasks.data import load_preprocess
        from tasks.variant import preprocess_from_record

        if self.data_dir is None:
            return preprocess_from_record(self.source_record())
        return load_preprocess(self.data_dir)

    def teacher(self) -> nn.Module | None:
        """The baseline torch model, or None where it is not at hand."""
        from tasks.train import load_baseline

        return None if self.baseline_dir is None else load_baseline(self.baseline_dir)

    def source_model(self) -> nn.Module | None:
        """The torch model this variant starts from: the baseline's, or the torch file a
        torch-producing source variant saved next to its model (None where not at hand)."""
        from tasks.variant import load_torch_model

        record = self.source_record()
        if record.technique == "baseline":
            return self.teacher()
        return load_torch_model(self.source_dir, record)

    def editable_source_model(self, technique: str) -> nn.Module:
        """A copy of the source's torch model to change, in eval mode and with real layers (an
        imported .pt2 program is modularized); a one-line VariantError where there is none."""
        import copy

        from tasks.errors import VariantError
        from tasks.models import with_layers

        source_model = self.source_model()
        if source_model is None:
            raise VariantError(f"{self.name}: {technique} needs its source's torch model")
        return with_layers(copy.deepcopy(source_model).eval())

    def fine_tune(self, model: nn.Module, epochs: int, batch_size: int, lr: float) -> None:
        """Train `model` for `epochs` on the train split, the val split reported each epoch."""
        from tasks.train import FitSettings, fit

        if epochs:
            settings = FitSettings(epochs, batch_size, lr)
            fit(model, self.split("train"), self.split("val"), self.preprocess(), settings,
                self.seed, self.name)  # fmt: skip

    def baseline_sha256(self) -> str | None:
        """sha256 of the baseline's weights (baseline.json), or None where it is not at hand."""
        from tasks.io import read_json

        if self.baseline_dir is None:
            return None
        return str(read_json(self.baseline_dir / "baseline.json")["sha256"])

    def source_record(self) -> VariantRecord:
        """variant.json of the variant this one starts from."""
        from tasks.variant import read_record

        return read_record(self.source_dir)
