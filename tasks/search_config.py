"""The `search:` section of params.yaml (the accuracy-constrained search, flows/search.py) and its
checks against the techniques and the rest of the file."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasks.config import PositiveInt, Section, VariantGates

if TYPE_CHECKING:
    from tasks.technique import Technique

Scalar = bool | int | float | str | None


class KnobRange(Section):
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


class SearchObjective(Section):
    # p50: p50 latency on `runner`; size: model files; compressed_size: zstd-compressed model
    # files where evaluation records them (compressed_size_bytes), else size
    minimize: Literal["p50", "size", "compressed_size"] = "p50"
    runner: str | None = None  # the runner profile trials are measured on; null: the first of
    # benchmark.runners


class SearchBudget(Section):
    """Stop at whichever comes first; the batch in flight finishes."""

    # distinct configurations in the study, earlier (resumed) runs' included; repeats are free
    trials: PositiveInt | None = 20
    seconds: Annotated[float, Field(gt=0)] | None = None  # wall time of this run

    @model_validator(mode="after")
    def _bounded(self) -> SearchBudget:
        if self.trials is None and self.seconds is None:
            raise ValueError("give trials and/or seconds: a search needs a budget")
        return self


class SearchConfig(Section):
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


def check_search(
    search: SearchConfig,
    runners: Collection[str],
    gates: VariantGates,
    table: dict[str, Technique],
) -> None:
    """The search section against the rest of params.yaml (its runner profiles, the default
    gates) and the techniques: chains that can be built, knobs that exist."""
    if search.objective.runner is not None and search.objective.runner not in runners:
        known = ", ".join(runners) or "none"
        raise ValueError(
            f"search.objective.runner: {search.objective.runner!r} is not a profile in 'runners' "
            f"({known})"
        )
    try:
        VariantGates.model_validate(gates.model_dump() | search.constraints)
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
