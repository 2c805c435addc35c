"""search: the accuracy-constrained search's study and space (no Prefect): the Optuna study, and
the search space turned into a trial's variants. A measured trial's verdict, the Pareto front and
the report are tasks/search_results.py.

A trial is a chain of techniques (e.g. pruned → tflite_int8) with knobs sampled from
`search.space`. Each step of the chain is an ordinary variant config, named by its content
(`pruned_tflite_int8_<hash>`): the nightly's content-keyed compress cache then serves any trial
whose variants were built before, in this search, a resumed one, or a nightly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tasks.config import VariantGates
from tasks.params_file import validation_message
from tasks.plan import content_key
from tasks.search_config import KnobRange, SearchConfig
from tasks.technique import Technique, TechniqueConfig

if TYPE_CHECKING:
    import optuna


CHAIN = "chain"  # the study parameter that picks the chain of techniques
OUTCOME = "outcome"  # the user attribute holding a trial's TrialOutcome
CONSTRAINT = "gates"  # the trial's constraint (Trial.set_constraint): > 0 when it missed a gate


# ---- the study -------------------------------------------------------------------------------


def study_key(search: SearchConfig, gates: VariantGates, base_key: str, *extra: Any) -> str:
    """What decides a trial's result: the model and data (base_key), the gates, the space and the
    objective. The budget, batch size and storage are not in it: a bigger budget resumes."""
    decides = search.model_dump(
        mode="json", exclude={"budget", "batch", "storage", "study", "run_in_nightly"}
    )
    return content_key(base_key, decides, gates, *extra)


def storage_url(search: SearchConfig, workdir: Path) -> str:
    """The study's database: search.storage, else an SQLite file under the workdir."""
    if search.storage:
        return search.storage
    path = (workdir / "search" / "studies.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(search: SearchConfig, name: str, storage: str, seed: int) -> optuna.Study:
    """Create the study, or load it to resume; trials an interrupted run left RUNNING are failed
    and their parameters queued again (their variants are cached: re-running them is cheap)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: optuna.samplers.BaseSampler
    if search.sampler == "nsga2":
        population = max(2, search.batch)
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["minimize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    # not enqueue_trial(skip_if_exists=True): that also matches the abandoned trial itself, so
    # nothing was ever queued again
    waiting = optuna.trial.TrialState.WAITING
    known = [
        t.system_attrs.get("fixed_params", t.params)
        for t in study.get_trials(deepcopy=False)
        if OUTCOME in t.user_attrs or t.state == waiting
    ]
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        if trial.params and dict(trial.params) not in known:  # a finished twin answers it
            study.enqueue_trial(dict(trial.params))
            known.append(dict(trial.params))
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials a search finished (measured, failed or answered from the study), not those an
    interrupted run left behind (they are queued again)."""
    return sum(OUTCOME in trial.user_attrs for trial in study.get_trials(deepcopy=False))


def distinct_trials(study: optuna.Study) -> int:
    """Trials that count against `budget.trials`: the distinct variants the study finished. A
    sampler's repeat of one (small discrete spaces) is answered from the study and is free."""
    trials = study.get_trials(deepcopy=False)
    return len({t.user_attrs[OUTCOME]["variant"] for t in trials if OUTCOME in t.user_attrs})


def space_size(search: SearchConfig) -> int | None:
    """How many distinct trials the space holds (each chain times its knobs' choices), or None
    where a knob is a continuous range: the search stops when a finite space is measured whole."""
    total = 0
    for chain in search.chains:
        combinations = 1
        for path, knob in search.space.items():
            if path.partition(".")[0] not in chain:
                continue
            count = _choices(knob)
            if count is None:
                return None
            combinations *= count
        total += combinations
    return total


def _choices(knob: KnobRange | list[Any]) -> int | None:
    if not isinstance(knob, KnobRange):
        return len({json.dumps(value) for value in knob})
    if knob.integer:
        # a log-scaled integer knob is sampled on every integer (Optuna allows no step with log)
        step = 1 if knob.log else int(knob.step or 1)
        return (int(knob.high) - int(knob.low)) // step + 1
    if knob.step is None:
        return None
    return math.floor((float(knob.high) - float(knob.low)) / float(knob.step) + 1e-9) + 1


# ---- the space ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its chain, the knobs sampled for it, and the variants that build it (in
    dependency order, the last one the trial's result)."""

    number: int
    chain: tuple[str, ...]
    knobs: dict[str, Any]
    variants: dict[str, TechniqueConfig]
    # why no technique accepts these knobs together (a rule between two sampled knobs, e.g.
    # qat_int8's freeze_bn_after <= epochs): nothing is built, the trial fails with it
    invalid: str | None = None

    @property
    def variant(self) -> str:
        if self.invalid is not None:
            return f"{'_'.join(self.chain)}_invalid_{content_key(self.knobs)[:8]}"
        return list(self.variants)[-1]


def chain_label(chain: list[str] | tuple[str, ...]) -> str:
    return "+".join(chain)


def suggest_plan(
    trial: optuna.Trial,
    search: SearchConfig,
    table: dict[str, Technique],
    listed: dict[str, TechniqueConfig] | None = None,
) -> TrialPlan:
    """The trial's chain and knobs, sampled define-by-run: only the knobs of the chain's
    techniques are asked for."""
    labels = [chain_label(chain) for chain in search.chains]
    label = trial.suggest_categorical(CHAIN, labels)
    chain = search.chains[labels.index(str(label))]
    knobs: dict[str, Any] = {}
    for path, knob in search.space.items():
        if path.partition(".")[0] not in chain:
            continue
        if isinstance(knob, KnobRange):
            if knob.integer:
                step = int(knob.step or 1)
                knobs[path] = trial.suggest_int(
                    path, int(knob.low), int(knob.high), step=step, log=knob.log
                )
            else:
                knobs[path] = trial.suggest_float(
                    path, float(knob.low), float(knob.high), step=knob.step, log=knob.log
                )
        else:
            knobs[path] = trial.suggest_categorical(path, knob)
    try:
        variants = plan_variants(chain, knobs, search, table, listed)
    except ValidationError as exc:
        return TrialPlan(trial.number, tuple(chain), knobs, {}, invalid=validation_message(exc))
    return TrialPlan(trial.number, tuple(chain), knobs, variants)


def plan_variants(
    chain: list[str] | tuple[str, ...],
    knobs: dict[str, Any],
    search: SearchConfig,
    table: dict[str, Technique],
    listed: dict[str, TechniqueConfig] | None = None,
) -> dict[str, TechniqueConfig]:
    """The chain's variant configs: each technique's defaults, search.fixed, then the knobs.
    Names carry a hash of the chain's configs so equal configs share a name (and a cache entry);
    a step equal to a `listed` (params.yaml) variant, from the same source, takes its name, so
    that what the nightly built serves the trial."""
    variants: dict[str, TechniqueConfig] = {}
    source, made = "baseline", []
    same = {
        json.dumps(c.model_dump(mode="json"), sort_keys=True): n for n, c in (listed or {}).items()
    }
    for step, technique in enumerate(chain):
        settings = {
            path.partition(".")[2]: value
            for path, value in {**search.fixed, **knobs}.items()
            if path.partition(".")[0] == technique
        }
        config = table[technique].config.model_validate(
            {"technique": technique, "source": source, **settings}
        )
        made.append(config.model_dump(mode="json", exclude={"source"}))
        name = same.get(json.dumps(config.model_dump(mode="json"), sort_keys=True)) or (
            f"{'_'.join(chain[: step + 1])}_{content_key(made)[:8]}"
        )
        variants[name] = config
        source = name
    return variants


def known_good(
    search: SearchConfig,
    listed: dict[str, TechniqueConfig],
    table: dict[str, Technique],
) -> list[dict[str, Any]]:
    """Trials to run before sampling, cheapest first, chain by chain in the order listed (e.g.
    PTQ, then mixed precision, then QAT): the params.yaml variants the chain describes, else the
    techniques' defaults. Values a knob's range or choices do not hold are left to the sampler."""
    trials: list[dict[str, Any]] = []
    for chain in search.chains:
        written = [
            _listed_knobs(name, listed, search)
            for name in listed
            if _chain_of(name, listed) == tuple(chain)
        ]
        defaults = {
            path: table[path.partition(".")[0]].config.model_fields[path.partition(".")[2]].default
            for path in search.space
            if path.partition(".")[0] in chain
        }
        trials += [_expressible(chain, knobs, search) for knobs in written or [defaults]]
    unique = {json.dumps(t, sort_keys=True): t for t in trials}
    return list(unique.values())


def _listed_knobs(
    name: str, listed: dict[str, TechniqueConfig], search: SearchConfig
) -> dict[str, Any]:
    """The space's knobs as a params.yaml variant (and the variants it starts from) sets them."""
    knobs: dict[str, Any] = {}
    cursor = name
    while cursor in listed:
        config = listed[cursor]
        for path in search.space:
            technique, _, knob = path.partition(".")
            if technique == config.technique:
                knobs[path] = getattr(config, knob)
        cursor = config.source
    return knobs


def _chain_of(name: str, listed: dict[str, TechniqueConfig]) -> tuple[str, ...] | None:
    chain: list[str] = []
    cursor = name
    while cursor != "baseline":
        if cursor not in listed or len(chain) > len(listed):
            return None
        chain.insert(0, listed[cursor].technique)
        cursor = listed[cursor].source
    return tuple(chain)


def _expressible(chain: Any, knobs: dict[str, Any], search: SearchConfig) -> dict[str, Any]:
    """The knobs whose values the space holds, with the chain's parameter."""
    held: dict[str, Any] = {CHAIN: chain_label(chain)}
    for path, value in knobs.items():
        knob = search.space[path]
        if isinstance(knob, KnobRange):
            inside = isinstance(value, int | float) and knob.low <= value <= knob.high
            if inside and (not knob.integer or float(value).is_integer()):
                held[path] = value
        elif value in knob:
            held[path] = value
    return held
