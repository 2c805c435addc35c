"""What a technique is: its declaration (`Technique`), the base of its config, and what `build` gets.

Light on purpose (pydantic and the standard library): params.yaml is validated against the
technique table on machines and in processes that never build a variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from torch import nn

    from tasks.data import Preprocess, Split
    from tasks.variant import VariantRecord

StartsFrom = Literal["torch", "onnx"]
STARTS_FROM: tuple[str, ...] = get_args(StartsFrom)


class TechniqueConfig(BaseModel):
    """A variant's entry in params.yaml: its technique's tag, its source and the technique's knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technique: str
    source: str = Field(description="variant this one starts from ('baseline' or another variant)")


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


BuildFn = Callable[[BuildContext, Any], "VariantRecord"]


@dataclass(frozen=True)
class Technique:
    """One compression technique, declared once in its own module (`TECHNIQUE = Technique(...)`).

    The config union, the list of techniques, the dispatch and the runtime lookup all read these
    declarations; nothing else names a technique.
    """

    name: str  # the `technique:` tag in params.yaml
    config: type[TechniqueConfig]  # its params.yaml entry, with `technique: Literal[name]`
    starts_from: StartsFrom  # "torch": the baseline's (or a torch-producing source's) model; "onnx": an ONNX variant's file
    runtime: str  # runtime of what it produces: onnxruntime | litert | tensorrt | ...
    produces_onnx: bool  # its output is an ONNX model another variant can start from
    build: BuildFn  # build(context, config) -> VariantRecord, written atomically to out_dir
    # its variant directory also holds the torch model (variant.TORCH_FILE): a torch-starting
    # technique may take it as its source (pruned → clustered)
    produces_torch: bool = False
    build_on: str | None = None  # None: built here; else the runner kind that must build it
    # other modules whose code decides what `build` makes (graph rewrites, fine-tuning loops):
    # their source joins the compress cache key, so a change there rebuilds the variant
    uses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _declaration_problem(self)
        if problem:
            raise TypeError(f"technique {self.name!r}: {problem}")

    @property
    def modules(self) -> tuple[str, ...]:
        """Modules whose source decides what `build` makes: part of the compress cache key."""
        return tuple(sorted({self.build.__module__, self.config.__module__, __name__, *self.uses}))


def _declaration_problem(technique: Technique) -> str | None:
    if not technique.name.isidentifier() or technique.name == "baseline":
        return "name must be a Python identifier other than 'baseline'"
    config = technique.config
    if not (isinstance(config, type) and issubclass(config, TechniqueConfig)):
        return f"config must be a subclass of {TechniqueConfig.__module__}.TechniqueConfig"
    tag = config.model_fields["technique"].annotation
    if get_args(tag) != (technique.name,):
        return f"{config.__name__}.technique must be Literal[{technique.name!r}]"
    if technique.starts_from not in STARTS_FROM:
        return f"starts_from must be one of {', '.join(STARTS_FROM)}"
    if not technique.runtime:
        return "runtime must name the runtime of what it produces"
    if technique.produces_onnx and technique.runtime != "onnxruntime":
        return "produces_onnx needs runtime 'onnxruntime'"
    if not callable(technique.build):
        return "build must be a function build(context, config) -> VariantRecord"
    return None
