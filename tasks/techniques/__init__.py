"""The technique table: built-in techniques, installed ones and those params.yaml names.

A technique is one module declaring `TECHNIQUE = Technique(...)` (see base.py). Three places
supply them, found the same way and checked the same way:

* built-in: the modules of this package listed in BUILTIN;
* installed: entry points of the group `modelpress.techniques` (`name = "pkg.module:TECHNIQUE"`);
* params.yaml: `techniques: [pkg.module:TECHNIQUE]`, for a module on the Python path.

Nothing is imported until a table is asked for: importing this package has no side effects.
"""

from __future__ import annotations

import importlib
import threading
from functools import cache
from importlib.metadata import entry_points

from tasks.errors import ConfigError, brief
from tasks.technique import Technique, TechniqueConfig

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "Technique",
    "TechniqueConfig",
    "builtin_techniques",
    "installed_techniques",
    "load_reference",
    "runtimes_produced",
    "technique_named",
    "technique_of",
    "technique_table",
]

BUILTIN: tuple[str, ...] = (
    "tflite_int8",
    "pruned",
    "distilled",
    "tensorrt_fp16",
    "openvino_int8",
    "tflite_fp16",
    "tflite_dynamic",
    "onnx_int8",
    "qat_int8",
    "qat_onnx_int8",
    "clustered",
    "low_rank",
)
ENTRY_POINT_GROUP = "modelpress.techniques"

# Every technique found in this process, by name: the dispatch finds a validated config's
# technique here (params.yaml's references are resolved when it is loaded), as Olive's pass
# registry does; a process that builds variants loads its params.yaml first.
_found: dict[str, Technique] = {}
_found_lock = threading.Lock()


@cache
def builtin_techniques() -> dict[str, Technique]:
    """The techniques in this package, in BUILTIN order."""
    table = {}
    for module in BUILTIN:
        technique = importlib.import_module(f"{__name__}.{module}").TECHNIQUE
        table[technique.name] = technique
    return _remember(table)


@cache
def installed_techniques() -> dict[str, Technique]:
    """Techniques that installed packages register under the entry-point group, by name."""
    table: dict[str, Technique] = {}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        where = f"entry point {point.name!r} of group {ENTRY_POINT_GROUP} ({point.value})"
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plugin: name it, whatever it raised
            raise ConfigError(f"{where}: cannot load it ({brief(exc)})") from None
        _add(table, _checked(loaded, where), where, error=ConfigError)
    return _remember(table)


def load_reference(reference: str) -> Technique:
    """The Technique a 'package.module:OBJECT' reference names (ValueError saying what is wrong)."""
    module_name, colon, attribute = reference.partition(":")
    if not (colon and module_name and attribute.isidentifier()):
        raise ValueError("expected 'package.module:OBJECT', a Technique on the Python path")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise ValueError(f"cannot import {module_name!r} ({brief(exc)})") from None
    if not hasattr(module, attribute):
        raise ValueError(f"module {module_name!r} has no {attribute!r}")
    return _checked(getattr(module, attribute), reference, error=ValueError)


def technique_table(references: tuple[str, ...] = ()) -> dict[str, Technique]:
    """Built-in, then installed, then referenced techniques, by name; a name given twice is refused
    (ValueError for a reference, ConfigError for an entry point)."""
    table = dict(builtin_techniques())
    for name, technique in installed_techniques().items():
        where = f"entry point {name!r} of group {ENTRY_POINT_GROUP}"
        _add(table, technique, where, error=ConfigError)
    for reference in references:
        _add(table, load_reference(reference), reference)
    return _remember(table)


def technique_named(name: str) -> Technique:
    """A technique found in this process; unknown: a one-line error naming the known ones."""
    if name not in _found:
        technique_table()  # built-ins and entry points, found on first use
    if name not in _found:
        raise ConfigError(f"unknown technique {name!r}; expected one of {', '.join(_found)}")
    return _found[name]


def technique_of(config: TechniqueConfig) -> Technique:
    """The technique a validated variant config belongs to. A config that crossed a process
    boundary (a Dask process worker unpickles it) names a technique that process may never
    have found, one params.yaml brought: its declaration is looked for in the module that
    defines the config's class, which unpickling imported."""
    if config.technique not in _found:
        _remember_declared_beside(type(config))
    technique = technique_named(config.technique)
    if not isinstance(config, technique.config):
        raise ConfigError(
            f"technique {config.technique!r}: config is a {type(config).__name__}, "
            f"expected {technique.config.__name__}"
        )
    return technique


def _remember_declared_beside(config_class: type[TechniqueConfig]) -> None:
    """The Technique objects of the module that defines `config_class`, for the dispatch."""
    import sys

    module = sys.modules.get(config_class.__module__)
    declared = [
        value
        for value in vars(module).values()
        if isinstance(value, Technique) and value.config is config_class
    ] if module is not None else []  # fmt: skip
    _remember({technique.name: technique for technique in declared})


def runtimes_produced(table: dict[str, Technique] | None = None) -> tuple[str, ...]:
    """Runtimes a variant can have: the baseline's ONNX export, then each technique's, once each
    (what the registry's formats and the runtime table must cover)."""
    runtimes = ["onnxruntime", *(t.runtime for t in (table or technique_table()).values())]
    return tuple(dict.fromkeys(runtimes))


def _checked(obj: object, where: str, error: type[Exception] = ConfigError) -> Technique:
    if not isinstance(obj, Technique):
        raise error(f"{where} is a {type(obj).__name__}, expected a tasks.techniques.Technique")
    return obj


def _add(
    table: dict[str, Technique],
    technique: Technique,
    where: str,
    error: type[Exception] = ValueError,
) -> None:
    """Add a technique by its name; the same object twice is harmless, another one is not."""
    existing = table.get(technique.name)
    if existing is not None and existing is not technique:
        raise error(
            f"{where}: technique {technique.name!r} is already defined by "
            f"{existing.build.__module__}"
        )
    table[technique.name] = technique


def _remember(table: dict[str, Technique]) -> dict[str, Technique]:
    """Record a validated table for the dispatch; the latest definition of a name wins."""
    with _found_lock:
        _found.update(table)
    return table
