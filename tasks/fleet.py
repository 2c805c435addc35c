"""The fleet: every model a team compresses, one nightly each (fleet.yaml).

    concurrency: 2            # nightlies at a time (see below: a Prefect concurrency limit)
    mode: deployment          # deployment: run_deployment on a work pool | local: subflows here
    deployment: nightly/nightly
    start_timeout_s: 21600    # a nightly not started by then (no worker polls its pool) ends timed-out
    model_timeout_s: null     # a nightly running longer is cancelled; null: its params' night bound
    approval: null            # ui | auto | null (each params file's review.approval)
    models:
      - name: digits-resnet   # its registry name (registry.model_name)
        params: params.yaml   # relative to fleet.yaml
      - name: fraud-cnn
        params: params.yaml
        repo: https://git.example.com/ml/fraud.git   # a DVC repo (fetch.repo) with its paths/revs
        model_path: models/model.pt2
        data_path: data/train.npz
        model_rev: v7
        data_rev: v7

Plain functions: the Prefect flow is flows/fleet.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import ConfigError


class FleetModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # registry name (overrides registry.model_name): the registry's own rule, so '../evil' and
    # a 300-character name fail here, not in a child run after the others started
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    params: str = "params.yaml"
    repo: str | None = None  # a git + DVC repo: fetch.repo of the params file, overridden
    model_path: str | None = None
    data_path: str | None = None
    model_rev: str | None = None
    data_rev: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)  # any other params.yaml keys


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: Annotated[int, Field(ge=1)] = 2
    mode: Literal["deployment", "local"] = "local"
    deployment: str = "nightly/nightly"
    start_timeout_s: Annotated[int, Field(ge=1)] = 21_600
    model_timeout_s: Annotated[int, Field(ge=1)] | None = None
    approval: Literal["ui", "auto"] | None = None
    models: Annotated[list[FleetModel], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_names(self) -> FleetConfig:
        names = [m.name for m in self.models]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"models: {name!r} appears twice (one registry name, one entry)")
        return self


def load_fleet(path: Path | str) -> FleetConfig:
    """fleet.yaml, validated; a bad file is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: fleet file not found (a fleet.yaml with a `models:` list)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a `models:` list")
    try:
        fleet = FleetConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "fleet"
        raise ConfigError(f"{path}: {where}: {error['msg']}") from None
    for index, model in enumerate(fleet.models):
        if ".." in model.name:
            raise ConfigError(
                f"{path}: models.{index}.name: '..' is not allowed in a registry name"
            )
    return fleet


def entry_errors(fleet: FleetConfig, path: Path | str) -> dict[str, str]:
    """Entry name → why its params cannot run (file missing, invalid, ...), found before any
    nightly starts: such an entry fails with that line and the others run. It used to fail
    inside its child run with a traceback, and the summary said "see the error line"."""
    from tasks.params_file import load_params

    errors = {}
    for index, model in enumerate(fleet.models):
        parameters = nightly_parameters(model, path)
        try:
            load_params(parameters["params_file"], parameters["overrides"])
        except ConfigError as exc:
            errors[model.name] = f"models.{index}: {exc}"
    return errors


def nightly_parameters(model: FleetModel, fleet_file: Path | str) -> dict[str, Any]:
    """The nightly flow's parameters for one fleet entry (params path absolute: a worker runs it
    from the deployment's working directory, not from where fleet.yaml is)."""
    params_file = Path(model.params)
    if not params_file.is_absolute():
        params_file = Path(fleet_file).resolve().parent / params_file
    fetch = {
        key: value
        for key in ("repo", "model_path", "data_path", "model_rev", "data_rev")
        if (value := getattr(model, key)) is not None
    }
    overrides = _merge(model.overrides, {"registry": {"model_name": model.name}})
    if fetch:
        overrides = _merge(overrides, {"fetch": fetch})
    return {"params_file": str(params_file), "overrides": overrides}


def model_bound_s(parameters: dict[str, Any], fleet: FleetConfig) -> int:
    """How long one model's nightly may run once started: fleet.yaml's model_timeout_s, else
    its own night bound (its params' timeouts) and a minute for the run to report its end."""
    from tasks.params_file import load_params
    from tasks.timeouts import night_bound_s

    if fleet.model_timeout_s is not None:
        return fleet.model_timeout_s
    return night_bound_s(load_params(parameters["params_file"], parameters["overrides"])) + 60


def latest_published(parameters: dict[str, Any]) -> tuple[str | None, str | None]:
    """The model's newest version in its registry and the smallest variant in it (every
    published variant passed every gate), for the nightly parameters of a fleet entry."""
    from tasks.params_file import load_params
    from tasks.registry import open_registry

    params = load_params(parameters["params_file"], parameters.get("overrides"))
    registry = open_registry(params.registry)
    name = params.registry.model_name
    versions = registry.list_versions(name)
    if not versions:
        return None, None
    variants = registry.read_manifest(name, versions[-1])["variants"]
    sizes = {
        variant: sum(f["size_bytes"] for f in entry["files"].values())
        for variant, entry in variants.items()
    }
    best = min(sizes, key=lambda v: (sizes[v], v)) if sizes else None
    return versions[-1], best


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ModelOutcome:
    name: str
    status: str  # the nightly's status (published, unchanged, ...), failed or timed-out
    version: str | None = None
    best_variant: str | None = None
    link: str | None = None  # the model's nightly flow run in the UI (or its id)
    error: str | None = None  # failed: one line


@dataclass(frozen=True)
class FleetResult:
    models: list[ModelOutcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[ModelOutcome]:
        """The models whose nightly did not end well: failed, or stopped at a time bound."""
        return [m for m in self.models if m.status in ("failed", "timed-out")]


class FleetFailed(Exception):
    """Some models failed or timed out: the fleet's Failed state carries this, holding every
    model's outcome. A failed state's data must be an exception: a worker's flow-run process
    raised "FleetResult cannot be resolved into an exception" for a bare FleetResult."""

    def __init__(self, message: str, result: FleetResult) -> None:
        super().__init__(message, result)
        self.result = result

    def __str__(self) -> str:
        return str(self.args[0])


def fleet_result(outcome: object) -> FleetResult | None:
    """The FleetResult of a fleet run's result, whether it ended Completed or Failed."""
    if isinstance(outcome, FleetFailed):
        return outcome.result
    return outcome if isinstance(outcome, FleetResult) else None


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def summary_markdown(result: FleetResult) -> str:
    """The fleet summary: one row per model."""
    rows = [
        "| model | status | published version | best variant | run |",
        "|---|---|---|---|---|",
    ]
    for m in result.models:
        status = f"{m.status}: {m.error}" if m.status in ("failed", "timed-out") else m.status
        link = f"[run]({m.link})" if m.link and m.link.startswith("http") else (m.link or "-")
        rows.append(
            f"| {m.name} | {status.replace('|', '/')} | {m.version or '-'} "
            f"| {m.best_variant or '-'} | {link} |"
        )
    failed = sum(m.status == "failed" for m in result.models)
    timed_out = sum(m.status == "timed-out" for m in result.models)
    ended = f"{failed} failed" + (f", {timed_out} timed out" if timed_out else "")
    head = f"**{len(result.models)} models, {ended}**, {result.wall_s:.0f} s"
    return head + "\n\n" + "\n".join(rows)
