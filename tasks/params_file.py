"""Reading params.yaml: load, validate against the technique table, and say what is wrong in one
line naming the file, the line and the key as written."""

from __future__ import annotations

import functools
import operator
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import Field, ValidationError, create_model

from tasks.errors import ConfigError, brief
from tasks.params_model import Params, TechniqueReferences

if TYPE_CHECKING:
    from tasks.technique import Technique

# how pydantic names the member of a union in an error's location: KnobRange, list[...], function-after[...]
_UNION_MEMBER = re.compile(r"^(KnobRange|[a-z_-]+\[.*\])$")


def _validate(raw: dict[str, Any]) -> Params:
    """Params with each variant validated against its technique's config model: the union is
    built from the technique table, which params.yaml's `techniques` may extend."""
    from tasks.techniques import technique_table

    references = TechniqueReferences.model_validate(raw).techniques
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
        return list(technique_table(tuple(TechniqueReferences.model_validate(raw).techniques)))
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
