"""crashing: a technique whose build crashes, as a buggy plugin or a killed worker does: `how:
raise` raises a RuntimeError (a bug); `how: hang` runs for two minutes; `how: die` builds in a child process that SIGKILLs itself
(what the kernel's out-of-memory killer does to a big build). Used to check that one variant's
crash fails that variant, not the night."""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

from tasks.child_process import in_child_process
from tasks.runtimes.onnxruntime import RUNTIME as ONNX_RUNTIME
from tasks.techniques import Technique, TechniqueConfig
from tasks.techniques.context import BuildContext
from tasks.variant import VariantRecord


class CrashingConfig(TechniqueConfig):
    technique: Literal["crashing"]
    how: Literal["raise", "die", "hang"] = "raise"


def _die() -> None:
    print("crashing: about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)


def build(context: BuildContext, config: CrashingConfig) -> VariantRecord:
    if config.how == "hang":  # a build far longer than its bound, in Python (as training is)
        print(f"crashing: {context.name} hangs for 120 s")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
    if config.how == "die":
        in_child_process(f"{context.name}'s build", _die)
    raise RuntimeError("index 7 is out of bounds for axis 0 with size 7")


TECHNIQUE = Technique(
    name="crashing",
    config=CrashingConfig,
    starts_from="onnx",
    runtime=ONNX_RUNTIME.name,
    produces_onnx=True,
    build=build,
)
