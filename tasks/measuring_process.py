"""Isolation: one fresh process per measurement, so no variant's runtime, threads or memory
shape another's numbers. The parent side (measure_in_subprocess, run_measuring_child), the
child's entry point (`python -m tasks.measuring_process one ...`), and the content keys that let
a measurement of unchanged inputs be reused (measurement_context, measurement_key).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.benchmark import LATENCY_IMAGES, BenchmarkRow, host_facts, measure, read_or_none, rounded
from tasks.config import BenchmarkConfig, RunnerProfile
from tasks.errors import brief, process_ended
from tasks.processes import stop_groups
from tasks.runtimes import RUNTIMES


def measurement_context(
    images_file: Path, runner: str, profile: RunnerProfile, cfg: BenchmarkConfig
) -> str:
    """The content of what every measurement on this runner depends on, apart from the variant:
    the images it is timed on, the runner profile, the timing settings, the host (CPU model and
    flags, CPUs, kernel, Python, runtime versions) and the source of the code that loads and
    times it. measurement_key adds the variant's files."""
    import hashlib
    from importlib import import_module

    from tasks.io import sha256_file
    from tasks.plan import content_key
    from tasks.runtimes import RUNTIME_MODULES

    count = max(LATENCY_IMAGES, cfg.throughput_batch)
    images = hashlib.sha256(_leading_images(images_file, count).tobytes()).hexdigest()
    timing = cfg.model_dump(exclude={"runners", "store_uri", "store_endpoint_url", "reuse"})
    code = {
        module: sha256_file(Path(str(import_module(module).__file__)))
        for module in ("tasks.benchmark", __name__, *RUNTIME_MODULES)
    }
    cpuinfo = read_or_none("/proc/cpuinfo") or ""
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    # the threads are the profile's; the host's name does not change what it measures
    facts = host_facts(threads=0, cpus=sorted(os.sched_getaffinity(0)))
    host = {k: v for k, v in facts.items() if k not in ("hostname", "threads")}
    host |= {"flags": flags, "kernel": platform.release()}
    return content_key(images, runner, profile, timing, code, host)


def measurement_key(variant_dir: Path, context: str) -> str:
    """A measurement's key: the variant's files (its record included) on a runner's context.
    Any change re-measures."""
    from tasks.io import sha256_file
    from tasks.plan import content_key

    files = {
        str(path.relative_to(variant_dir)): sha256_file(path)
        for path in sorted(Path(variant_dir).rglob("*"))
        if path.is_file()
    }
    return content_key(files, context)


def reused_row(measured: Path, name: str) -> BenchmarkRow:
    """An earlier measurement of the same inputs, under this run's variant name."""
    row = json.loads(measured.read_text())
    return BenchmarkRow(**(row | {"variant": name, "reused": True}))


def images_for_measuring(images_file: Path, cfg: BenchmarkConfig, work: Path) -> Path:
    """The test images a measurement uses, in a file of their own: the measuring process runs
    under the runner's memory cap, and a real test set does not fit it (10,000 RGB images at
    96 px are 1 GiB as float32; edge-cpu's cap is 2 GiB of address space)."""
    images = _leading_images(images_file, max(LATENCY_IMAGES, cfg.throughput_batch))
    trimmed = work / "images.npz"
    np.savez(trimmed, x=images)
    return trimmed


def _leading_images(images_file: Path, count: int) -> Array:
    """The first `count` images of an .npz's `x`, read without loading the rest (this process's
    memory is what a forked measuring child starts from, and what its peak RSS reports)."""
    import zipfile

    with zipfile.ZipFile(images_file) as archive, archive.open("x.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        if fortran_order or dtype.hasobject or not shape:
            with np.load(images_file) as loaded:
                return np.asarray(loaded["x"][:count])
        count = min(count, shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        data = member.read(count * row)
    return np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:]).copy()


def measure_in_subprocess(
    name: str,
    variant_dir: Path,
    images_file: Path,
    runner: str,
    profile: RunnerProfile,
    cfg: BenchmarkConfig,
    timeout_s: float = 600,
) -> BenchmarkRow:
    """Run `measure` in a fresh Python process; a crash or timeout becomes a failed row."""
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as work:
        out = Path(work) / "row.json"
        images_file = images_for_measuring(images_file, cfg, Path(work))
        command = [
            sys.executable,
            "-m",
            "tasks.measuring_process",
            "one",
            "--name",
            name,
            "--variant",
            str(variant_dir),
            "--images",
            str(images_file),
            "--runner",
            runner,
            "--profile",
            profile.model_dump_json(),
            "--config",
            cfg.model_dump_json(),
            "--out",
            str(out),
        ]
        answer = run_measuring_child(command, out, timeout_s)
        if isinstance(answer, str):
            return BenchmarkRow.failed(name, runner, answer)
        return BenchmarkRow(**answer)


def run_measuring_child(command: list[str], out: Path, timeout_s: float) -> dict[str, Any] | str:
    """Run a measuring child in its own process group; its JSON answer from `out`, or why there
    is none in one line (its last stderr line, how it ended, or the timeout). On a timeout the
    whole group is killed, so nothing it started keeps measuring beside the next one."""
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_groups(child)
        child.communicate()
        return f"timed out after {timeout_s:.0f}s"
    except BaseException:  # an interrupt: the child and what it started go with this process
        stop_groups(child)
        child.communicate()
        raise
    if child.returncode != 0 or not out.exists():
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        if lines and child.returncode >= 0:
            return brief(lines[-1])
        return f"its measuring process {process_ended(child.returncode)}"
    answer: dict[str, Any] = json.loads(out.read_text())
    return answer


def _one(args: argparse.Namespace) -> None:
    """The child side of measure_in_subprocess."""
    from tasks.io import write_json

    profile = RunnerProfile.model_validate_json(args.profile)
    cfg = BenchmarkConfig.model_validate_json(args.config)
    with np.load(args.images) as archive:
        images = archive["x"].astype(np.float32)
    row = measure(args.name, Path(args.variant), images, args.runner, profile, cfg)
    model_file = Path(args.variant) / RUNTIMES["litert"].model_file
    if model_file.exists():
        direct = direct_litert_p50(
            model_file, images, row.host["threads"], cfg.iterations, cfg.trials
        )
        row = BenchmarkRow(**(asdict(row) | {"direct_p50_ms": rounded(direct)}))
    write_json(Path(args.out), asdict(row))


def direct_litert_p50(
    model_file: Path, images: Array, threads: int, iterations: int, trials: int = 1
) -> float:
    """p50 (ms) of LiteRT's Interpreter called directly in a plain loop: the harness's cross-check.

    Independent of tasks.runtimes.litert: its own interpreter, its own input quantisation. The median
    over `trials` loops, as the harness reports, so one disturbed loop cannot decide it.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_file), num_threads=threads)
    detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(detail["index"], [1, *images.shape[2:], images.shape[1]])
    interpreter.allocate_tensors()
    scale, zero_point = detail["quantization"]
    nhwc = images.transpose(0, 2, 3, 1)
    if detail["dtype"] == np.int8:
        mean = np.float32(nhwc.mean())  # any in-range input exercises the same int8 kernels
        nhwc = np.clip(np.round((nhwc - mean) / scale + zero_point), -128, 127).astype(np.int8)
    p50s = []
    for _ in range(trials):
        timings = []
        for i in range(iterations + 10):
            x = nhwc[i % len(nhwc)][None]
            tick = time.perf_counter()
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            interpreter.get_tensor(output_index)
            if i >= 10:
                timings.append(1000 * (time.perf_counter() - tick))
        p50s.append(float(np.percentile(timings, 50)))
    return float(np.median(p50s))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="measure one variant (the harness's child)")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser(
        "one", help="measure one variant in this process (used by the harness)"
    )
    for flag in ("--name", "--variant", "--images", "--runner", "--profile", "--config", "--out"):
        one.add_argument(flag, required=True)
    one.set_defaults(handler=_one)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    from tasks.cli_support import run_main

    run_main(main)
