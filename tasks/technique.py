"""What a technique is: its declaration (`Technique`) and the base of its config (every variant's
entry in params.yaml). The built-in techniques and the table are tasks/techniques/; what `build`
gets is tasks/techniques/context.py.

Light on purpose (pydantic and the standard library, nothing of ModelPress's): params.yaml is
validated against the technique table on machines and in processes that never build a variant,
and every module that names a variant's config imports this one, below the techniques.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# the runtimes of tasks/runtimes/ by name, here so that a declaration is checked without
# importing them (they import the variant records, which import the config, which imports this)
RUNTIME_NAMES: tuple[str, ...] = ("onnxruntime", "litert", "openvino", "tensorrt")

StartsFrom = Literal["torch", "onnx"]
STARTS_FROM: tuple[str, ...] = get_args(StartsFrom)


class TechniqueConfig(BaseModel):
    """A variant's entry in params.yaml: its technique's tag, its source and the technique's knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technique: str
    source: str = Field(description="variant this one starts from ('baseline' or another variant)")


# a variant's config, as params.yaml's `variants` holds it: its technique's own model, a subclass
VariantConfig = TechniqueConfig


# build(context: tasks.techniques.context.BuildContext, config) -> tasks.variant.VariantRecord;
# typed loosely here so that the declaration imports nothing that builds (see the docstring)
BuildFn = Callable[[Any, Any], Any]


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
    # modules whose code decides what `build` makes that it does not import (a child process's
    # `python -m` module): their source joins the compress cache key. What the technique's
    # module imports, directly or not, joins it without being listed (tasks/code_closure.py).
    uses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _declaration_problem(self)
        if problem:
            raise TypeError(f"technique {self.name!r}: {problem}")

    @property
    def modules(self) -> tuple[str, ...]:
        """Modules whose source decides what `build` makes: part of the compress cache key."""
        # the build context's loaders (fine_tune, the teacher) decide what a build makes too
        context = "tasks.techniques.context"
        return tuple(
            sorted({self.build.__module__, self.config.__module__, __name__, context, *self.uses})
        )


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
    if technique.runtime not in RUNTIME_NAMES:
        # 'tvm' was accepted and failed only when its first variant was evaluated
        return (
            f"runtime {technique.runtime!r} is not one ModelPress evaluates; expected one of "
            f"{', '.join(RUNTIME_NAMES)}"
        )
    if technique.produces_onnx and technique.runtime != "onnxruntime":
        return "produces_onnx needs runtime 'onnxruntime'"
    if not callable(technique.build):
        return "build must be a function build(context, config) -> VariantRecord"
    return None
