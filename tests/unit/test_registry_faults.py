"""Faults in the middle of a publish (local registry): a fault-injection wrapper fails step k.

The wrapper below is test-only: it subclasses LocalRegistry and counts calls to the storage
primitives a publish makes (`_exists`, `_read`, `_create`, `_sha256_of`); call number k raises
instead of, or right after, doing its work. `run_fault_loop` fails k = 0, 1, 2, ... until a
publish passes every step, and after each fault checks the invariant: the model shows its
complete previous state or the complete new version, never a manifest with missing or corrupt
files. The same publish is then retried; it must complete and `verify()` must be clean.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tasks.registry.local
from tasks.registry import LocalRegistry, PublishEntry, Registry, RegistryError
from tests.unit.test_registry import make_entry

T = TypeVar("T")
LINEAGE = {"git_commit": "abc123", "params": {"a": 1}}
VARIANTS = ("pruned", "tflite_int8", "distilled")  # a 3-variant publish: 2 files each


class InjectedFault(Exception):
    """Raised by the fault-injection wrapper: the process "dies" at this step."""


@dataclass
class Tally:
    """What a fault loop did; `partial` counts states that broke the invariant (must stay 0)."""

    cases: int = 0
    faults: int = 0
    states: int = 0
    partial: int = 0
    messages: list[str] = field(default_factory=list)  # what each failed publish raised

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.faults += other.faults
        self.states += other.states
        self.partial += other.partial
        self.messages += other.messages


class FaultPlan:
    """Which storage call fails and how; shared by the local and the S3 wrappers."""

    def __init__(self, fail: Callable[[str], BaseException], after: bool = False) -> None:
        self.fail = fail  # builds the exception for a step, given the step's name
        self.after = after  # True: do the step's work, then fail (a lost reply / a crash after)
        self.fail_at: int | None = None
        self.calls = 0
        self.fired = False
        self.before_fault: Callable[[], None] | None = None  # e.g. stop the S3 server

    def arm(self, step: int) -> None:
        self.fail_at, self.calls, self.fired = step, 0, False

    def disarm(self) -> None:
        self.fail_at = None

    def step(
        self, name: str, work: Callable[[], T], partial: Callable[[], object] | None = None
    ) -> T:
        """Run one storage call, failing it if it is call number `fail_at` since arm().

        A failing call first does `partial` (part of its work, e.g. half a write) if given.
        """
        index, self.calls = self.calls, self.calls + 1
        if index != self.fail_at:
            return work()
        self.fired = True
        if self.before_fault is not None:
            self.before_fault()
            return work()  # the real call meets the real outage
        if self.after:
            work()
        elif partial is not None:
            partial()
        raise self.fail(name)


class FaultyLocalRegistry(LocalRegistry):
    """Fault-injection wrapper (tests only): every storage primitive goes through `plan.step`."""

    def __init__(self, root: Path, plan: FaultPlan) -> None:
        super().__init__(root)
        self.plan = plan

    def _exists(self, key: str) -> bool:
        return self.plan.step(
            f"exists {key}", lambda: super(FaultyLocalRegistry, self)._exists(key)
        )

    def _read(self, key: str) -> bytes | None:
        return self.plan.step(f"read {key}", lambda: super(FaultyLocalRegistry, self)._read(key))

    def _create(self, key: str, source: Path | bytes, sha256: str) -> bool:
        return self.plan.step(
            f"create {key}",
            lambda: super(FaultyLocalRegistry, self)._create(key, source, sha256),
        )

    def _sha256_of(self, key: str) -> str:
        return self.plan.step(
            f"sha256 {key}", lambda: super(FaultyLocalRegistry, self)._sha256_of(key)
        )


# ── the loop and the invariant (also used by tests/integration/test_registry_s3_faults.py) ──


def make_entries(root: Path) -> dict[str, PublishEntry]:
    """Three variant directories of two files each, wrapped as PublishEntries."""
    return {
        name: make_entry(root, name, name.encode() * (100 + 37 * n))
        for n, name in enumerate(VARIANTS)
    }


def expected_files(entries: dict[str, PublishEntry]) -> set[str]:
    """'<variant>/<file>' for every file a publish of `entries` lists."""
    return {
        f"{variant}/{path.relative_to(entry.directory).as_posix()}"
        for variant, entry in entries.items()
        for path in entry.directory.rglob("*")
        if path.is_file()
    }


def state_is_whole(
    registry: Registry,
    model: str,
    version: str,
    previous: dict[str, Any],
    entries: dict[str, PublishEntry],
) -> bool:
    """The invariant: `model` shows exactly its previous version, or that plus the whole new one.

    verify() must find nothing corrupt, missing or unreadable (orphans of the interrupted
    publish are allowed, and only inside the version being published); the previous version's
    manifest is unchanged; a listed new version lists every file of the publish.
    """
    report = registry.verify()
    if not report.ok:
        return False
    if any(not p.key.startswith(f"{model}/{version}") for p in report.problems):
        return False
    versions = registry.list_versions(model)
    if versions not in (["1"], ["1", version]):
        return False
    if registry.read_manifest(model, "1") != previous:
        return False
    if versions == ["1"]:
        return True
    manifest = registry.read_manifest(model, version)
    listed = {f"{v}/{rel}" for v, entry in manifest["variants"].items() for rel in entry["files"]}
    return listed == expected_files(entries)


def run_fault_loop(
    registry_for: Callable[[int], Registry],
    plan: FaultPlan,
    entries: dict[str, PublishEntry],
    *,
    steps: list[int] | None = None,
    after_fault: Callable[[], None] = lambda: None,
    limit: int = 40,
) -> Tally:
    """Fail publish step k for each k (all steps when `steps` is None); check, retry, verify.

    Each k gets its own registry from `registry_for(k)` (whose storage calls go through
    `plan`) holding model "m": version "1" published cleanly, then version 2 from
    allocate_version (so the publish goes to a reserved version), published with a fault.
    """
    tally = Tally(cases=1)
    for k in steps if steps is not None else range(limit):
        model, registry = "m", registry_for(k)
        registry.publish(model, "1", entries, {"previous": True})
        version = registry.allocate_version(model)
        previous = registry.read_manifest(model, "1")
        plan.arm(k)
        try:
            registry.publish(model, version, entries, LINEAGE)
        except (RegistryError, InjectedFault) as exc:
            assert plan.fired, f"step {k}: failed without an injected fault: {exc}"
            assert "\n" not in str(exc)
            tally.messages.append(str(exc))
        finally:
            plan.disarm()
        if not plan.fired:
            assert steps is None, f"step {k} does not exist: the publish made {plan.calls} calls"
            assert k >= 5, "a 3-variant publish has at least a claim, 6 files and a manifest"
            break
        tally.faults += 1
        after_fault()
        tally.states += 1
        tally.partial += not state_is_whole(registry, model, version, previous, entries)
        registry.publish(model, version, entries, LINEAGE)  # the retry completes it
        report = registry.verify()
        tally.states += 1
        tally.partial += not (
            report.problems == [] and state_is_whole(registry, model, version, previous, entries)
        )
        assert registry.list_versions(model) == ["1", version]
    else:
        assert steps is not None, f"the publish still had steps left after {limit}"
    return tally


def report_tally(request: pytest.FixtureRequest, total: Tally) -> None:
    """Print a module's fault totals as one line (past output capture); partial must be 0."""
    line = (
        f"{request.module.__name__}: fault cases {total.cases}, faults injected {total.faults}, "
        f"states checked {total.states}, partial/corrupt states {total.partial}"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if total.cases and capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")
    assert total.partial == 0, line


@pytest.fixture(scope="module")
def fault_tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Totals over this module's fault tests, reported after them."""
    total = Tally()
    yield total
    report_tally(request, total)


# ── the local faults ────────────────────────────────────────────────────────────────────────


def crash(name: str) -> BaseException:
    return InjectedFault(f"injected crash at: {name}")


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, PublishEntry]:
    return make_entries(tmp_path / "variants")


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(False, id="crash-before"),
        pytest.param(True, id="crash-after", marks=pytest.mark.slow),
    ],
)
def test_a_crash_at_any_publish_step_leaves_a_whole_state(
    tmp_path: Path, entries: dict[str, PublishEntry], fault_tally: Tally, after: bool
) -> None:
    plan = FaultPlan(crash, after=after)

    tally = run_fault_loop(
        lambda k: FaultyLocalRegistry(tmp_path / f"registry{k}", plan), plan, entries
    )

    fault_tally.add(tally)
    assert tally.faults >= 9 and tally.partial == 0


class TornWrites:
    """Fault-injection wrapper of the module's copy function: copy k writes half, then ENOSPC."""

    def __init__(self, copy: Callable[[Path | bytes, Any], str]) -> None:
        self.copy = copy
        self.plan = FaultPlan(lambda name: OSError(errno.ENOSPC, "No space left on device"))

    def __call__(self, source: Path | bytes, handle: Any) -> str:
        def write_half() -> None:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            handle.write(data[: len(data) // 2])
            handle.flush()

        return self.plan.step("copy", lambda: self.copy(source, handle), partial=write_half)


def test_a_torn_write_at_any_publish_step_leaves_a_whole_state(
    tmp_path: Path,
    entries: dict[str, PublishEntry],
    fault_tally: Tally,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torn = TornWrites(tasks.registry.local._copy_hashing)
    monkeypatch.setattr(tasks.registry.local, "_copy_hashing", torn)

    tally = run_fault_loop(lambda k: LocalRegistry(tmp_path / f"registry{k}"), torn.plan, entries)

    fault_tally.add(tally)
    assert tally.faults == 8 and tally.partial == 0  # claim, 6 files, manifest
    assert all("No space left on device; check that the registry" in m for m in tally.messages)
    assert not list(tmp_path.rglob("*.tmp")), "a temp file was left behind"


@pytest.mark.slow
def test_repeated_crashes_then_a_clean_retry(
    tmp_path: Path, entries: dict[str, PublishEntry], fault_tally: Tally
) -> None:
    """Crash at step k, retry and crash at step j, ... : every state on the way stays whole."""
    plan = FaultPlan(crash, after=True)
    registry = FaultyLocalRegistry(tmp_path / "registry", plan)
    registry.publish("m", "1", entries, {"previous": True})
    previous = registry.read_manifest("m", "1")
    version = registry.allocate_version("m")
    tally = Tally(cases=1)

    for k in (1, 3, 5, 7, 2, 0, 8):  # 8, the manifest, last: it lands, then the "crash"
        plan.arm(k)
        with pytest.raises((RegistryError, InjectedFault)):
            registry.publish("m", version, entries, LINEAGE)
        plan.disarm()
        tally.faults += 1
        tally.states += 1
        tally.partial += not state_is_whole(registry, "m", version, previous, entries)

    registry.publish("m", version, entries, LINEAGE)
    fault_tally.add(tally)
    assert registry.verify().problems == [] and tally.partial == 0
