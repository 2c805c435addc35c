"""The whole params.yaml as one typed model: its sections (tasks/config.py, tasks/search_config.py)
and the checks between them (variant sources, gates and runners that exist, the search's chains)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.config import (
    BaselineConfig,
    BenchmarkConfig,
    DataConfig,
    FetchConfig,
    GatesConfig,
    RegistryConfig,
    ReviewConfig,
    RunnerProfile,
    ScheduleConfig,
    Section,
    TaskRunnerConfig,
    TimeoutsConfig,
    TrainConfig,
    default_model_name,
)
from tasks.search_config import SearchConfig, check_search
from tasks.technique import VariantConfig

if TYPE_CHECKING:
    from tasks.technique import Technique


def _resolve_reference(reference: str) -> str:
    """A 'package.module:OBJECT' that names a Technique (ValueError saying what is wrong)."""
    from tasks.techniques import load_reference

    load_reference(reference)
    return reference


TechniqueReference = Annotated[str, AfterValidator(_resolve_reference)]


class TechniqueReferences(BaseModel):
    """params.yaml's first pass: the techniques it brings, which decide how `variants` reads."""

    model_config = ConfigDict(extra="ignore")

    techniques: list[TechniqueReference] = Field(default_factory=list)

    @field_validator("techniques")
    @classmethod
    def _one_technique_per_name(cls, value: list[str]) -> list[str]:
        from tasks.techniques import technique_table

        technique_table(tuple(value))  # ValueError: a name the built-in or another one has
        return value


class Params(Section):
    seed: int = 0
    data: DataConfig = DataConfig()
    baseline: BaselineConfig = BaselineConfig()
    train: TrainConfig = TrainConfig()
    # techniques from outside the repo: 'package.module:OBJECT' naming a tasks.techniques.Technique
    techniques: list[TechniqueReference] = Field(default_factory=list)
    # validated against the technique table (see _params_model): each entry is its technique's model
    variants: dict[str, VariantConfig] = Field(default_factory=dict)
    fetch: FetchConfig = FetchConfig()
    gates: GatesConfig = GatesConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    runners: dict[str, RunnerProfile] = Field(
        default_factory=lambda: {
            "cloud-cpu": RunnerProfile(),
            "edge-cpu": RunnerProfile(threads=1, cpu_affinity=[0], memory_limit_mb=2048),
        }
    )
    review: ReviewConfig = ReviewConfig()
    registry: RegistryConfig = RegistryConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    search: SearchConfig = SearchConfig()
    task_runner: TaskRunnerConfig = TaskRunnerConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()

    @model_validator(mode="before")
    @classmethod
    def _pretrained_normalises_like_imagenet(cls, raw: Any) -> Any:
        # a pretrained backbone was trained on ImageNet's statistics: the default for it
        if not isinstance(raw, dict):
            return raw
        baseline, data = raw.get("baseline"), raw.get("data")
        if not isinstance(baseline, dict) or baseline.get("source") != "pretrained":
            return raw
        data = dict(data) if isinstance(data, dict) else {}
        if not {"normalize", "mean", "std"} & set(data):
            return raw | {"data": data | {"normalize": "imagenet"}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _registry_name_from_the_model(cls, raw: Any) -> Any:
        # unnamed, a user's own model would be published as the digits example's
        if not isinstance(raw, dict):
            return raw
        registry = dict(raw["registry"]) if isinstance(raw.get("registry"), dict) else {}
        if "model_name" in registry:
            return raw
        return raw | {"registry": registry | {"model_name": default_model_name(raw)}}

    @model_validator(mode="after")
    def _normalisation_stated(self) -> Params:
        # The default (the train split's mean/std) is right for the CNN trained here and a
        # silent accuracy killer for a model trained elsewhere on other statistics.
        imported = self.baseline.source != "train" or bool(
            self.fetch.repo and self.fetch.model_path
        )
        data = self.data
        if imported and data.normalize is None and (data.mean is None or data.std is None):
            origin = (
                f"baseline.source {self.baseline.source}"
                if self.baseline.source != "train"
                else "fetch.model_path"
            )
            raise ValueError(
                f"data.normalize: an imported model ({origin}) needs its input normalisation stated: "
                "data.mean and data.std (what it was trained with), "
                "data.normalize: none (raw [0, 1] pixels) or data.normalize: train "
                "(this data's train-split mean/std)"
            )
        return self

    @model_validator(mode="after")
    def _variant_graph(self, info: ValidationInfo) -> Params:
        from tasks.techniques import technique_table

        context = info.context or {}
        table = context.get("techniques") or technique_table(tuple(self.techniques))
        for name, variant in self.variants.items():
            _check_variant_source(name, variant, self.variants, table)
        _check_no_cycle(self.variants)
        for name in self.gates.per_variant:
            if name not in self.variants and name != "baseline":
                raise ValueError(f"gates.per_variant.{name}: not a variant in 'variants'")
        for name in self.benchmark.runners:
            if name not in self.runners:
                known = ", ".join(self.runners) or "none"
                raise ValueError(
                    f"benchmark.runners: {name!r} is not a profile in 'runners' ({known})"
                )
        check_search(self.search, self.runners, self.gates.defaults, table)
        return self


# ASCII only and bounded: a variant's name becomes folder and file names (the registry's rule is
# wider; any name this accepts, it accepts, so a run is never refused at publish for its name)
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")


def _check_no_cycle(variants: dict[str, Any]) -> None:
    """Every chain of `source:` ends at the baseline: a cycle would leave nothing ready to build."""
    for start in variants:
        chain, name = [start], variants[start].source
        while name != "baseline" and name in variants:
            if name in chain:
                loop = " -> ".join([*chain[chain.index(name) :], name])
                raise ValueError(
                    f"variants.{start}.source: the sources form a cycle ({loop}); every chain "
                    "of sources must end at baseline"
                )
            chain.append(name)
            name = variants[name].source


def _check_variant_source(
    name: str, variant: Any, variants: dict[str, Any], table: dict[str, Technique]
) -> None:
    if not _VARIANT_NAME.fullmatch(name) or name == "baseline":
        raise ValueError(
            f"variants.{name}: use 1-64 ASCII letters, digits and '_' in variant names "
            "(starting with a letter or digit), not 'baseline'"
        )
    source = variant.source
    if source == "baseline":
        return
    if source not in variants:
        raise ValueError(f"variants.{name}.source: {source!r} is not 'baseline' nor a variant")
    if table[variant.technique].starts_from == "torch":
        if not table[variants[source].technique].produces_torch:
            torch_ones = sorted(t.name for t in table.values() if t.produces_torch)
            raise ValueError(
                f"variants.{name}.source: technique '{variant.technique}' starts from a torch "
                f"model and {source!r} has none (use baseline or a variant of: "
                f"{', '.join(torch_ones)})"
            )
        return
    if not table[variants[source].technique].produces_onnx:
        onnx = sorted(t.name for t in table.values() if t.produces_onnx)
        raise ValueError(
            f"variants.{name}.source: {source!r} does not produce ONNX "
            f"(use one of: baseline, {', '.join(onnx)} variants)"
        )
