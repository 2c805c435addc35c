"""op_profile: where a variant's inference time goes, per operator type, at batch 1.

ONNX Runtime: its own profiler (`SessionOptions.enable_profiling`), node events summed by op type.
LiteRT: the Python wheel exposes no op profiler, so each op's time is measured by truncation:
the model cut after op k (its output made the graph output) is timed, and op k's time is the
difference from the model cut after op k-1 (a PAD is timed with the convolution XNNPACK fuses
it into: its row shows the count, the time is in the conv's row). It runs with the same delegate (XNNPACK) and
threads as the benchmark, so fallbacks and partitions show up where they cost. The first op's
row also holds the fixed cost of one invoke.

    python -m tasks.op_profile variants/tflite_int8 [--threads 1] [--runs 200] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.errors import ModelPressError
from tasks.variant import model_path, read_record


@dataclass(frozen=True)
class OpRow:
    """One operator type (with its input dtype) in one model."""

    op: str
    dtype: str
    count: int
    total_ms: float
    percent: float


@dataclass(frozen=True)
class OpProfile:
    runtime: str
    model_file: str
    threads: int
    runs: int
    total_ms: float  # the summed op times of one inference
    rows: list[OpRow]


@dataclass(frozen=True)
class LitertOp:
    """One operator of a .tflite model as stored: its builtin name and input/output dtypes."""

    index: int
    op: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]


def profile_variant(variant_dir: Path, threads: int = 1, runs: int = 200) -> OpProfile:
    """Per-op profile of a variant in its own runtime (ONNX Runtime or LiteRT)."""
    record = read_record(variant_dir)
    path = model_path(variant_dir, record)
    if record.runtime == "onnxruntime":
        return profile_onnxruntime(path, threads, runs)
    if record.runtime == "litert":
        return profile_litert(path, threads, runs)
    raise ModelPressError(
        f"{variant_dir}/variant.json: runtime {record.runtime!r} has no op profiler; "
        "expected onnxruntime or litert"
    )


# ---- ONNX Runtime ------------------------------------------------------------------------------


def profile_onnxruntime(onnx_file: Path, threads: int = 1, runs: int = 200) -> OpProfile:
    """ONNX Runtime's own profiler: node run times summed per op type, averaged over runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mp-ortprof-") as work:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        feed = {i.name: _zeros(i.shape, np.float32) for i in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"].removesuffix("_kernel_time")
        per_node[node].append(event["dur"] / 1000)
        op_of[node] = event["args"].get("op_name", "?")
    # the first run includes one-off allocation: a node's time is its median over runs
    totals: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for node, times in per_node.items():
        totals[(op_of[node], "float32")] += float(np.median(times))
        counts[(op_of[node], "float32")] += 1
    return _profile("onnxruntime", onnx_file, threads, runs, totals, counts)


# ---- LiteRT ------------------------------------------------------------------------------------


def litert_ops(tflite_file: Path) -> list[LitertOp]:
    """The model's operators in execution order, with builtin names and tensor dtypes."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(tflite_file))
    graph = model.subgraphs[0]
    ops = []
    for index, op in enumerate(graph.operators):

        def dtypes(tensors: list[int]) -> tuple[str, ...]:
            return tuple(fb.type_to_name(graph.tensors[t].type).lower() for t in tensors if t >= 0)

        ops.append(
            LitertOp(
                index=index,
                op=fb.opcode_to_name(model, op.opcodeIndex) or "CUSTOM",
                input_dtypes=dtypes(list(op.inputs)),
                output_dtypes=dtypes(list(op.outputs)),
            )
        )
    return ops


def profile_litert(tflite_file: Path, threads: int = 1, runs: int = 200) -> OpProfile:
    """Per-op times by truncation (see the module docstring), summed per op type and dtype."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    ops = litert_ops(tflite_file)
    raw = bytes(Path(tflite_file).read_bytes())
    previous = 0.0
    totals: dict[tuple[str, str], float] = defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="mp-tflprof-") as work:
        for op in ops:
            if op.op == "PAD" and op.index + 1 < len(ops):
                # XNNPACK fuses an explicit PAD into the convolution after it; a cut between
                # them would time a PAD that never runs alone: its time goes to that conv
                continue
            model = fb.read_model_from_bytearray(bytearray(raw))
            graph = model.subgraphs[0]
            graph.outputs = [graph.operators[op.index].outputs[0]]
            graph.operators = graph.operators[: op.index + 1]
            model.signatureDefs = None  # they name the full model's outputs
            cut = Path(work) / f"cut{op.index}.tflite"
            fb.write_model(model, str(cut))
            try:
                elapsed = _litert_p50(cut, threads, runs)
            except RuntimeError:
                # a cut XNNPACK cannot set up runs nowhere: an fp16 model's DEQUANTIZE of a
                # constant weight made the output (XNNPACK folds it into the op that reads it);
                # its time, if any, is in the next op that runs
                continue
            totals[(op.op, _main_dtype(op))] += max(0.0, elapsed - previous)
            previous = max(previous, elapsed)
    return _profile("litert", tflite_file, threads, runs, totals, _count_ops(ops))


def _litert_p50(tflite_file: Path, threads: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_file), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], _zeros(detail["shape"], detail["dtype"]))
    timings = []
    for i in range(runs + 10):
        tick = time.perf_counter()
        interpreter.invoke()
        if i >= 10:
            timings.append(1000 * (time.perf_counter() - tick))
    return float(np.median(timings))


def _main_dtype(op: LitertOp) -> str:
    return (op.input_dtypes or op.output_dtypes or ("?",))[0]


def _count_ops(ops: list[LitertOp]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for op in ops:
        counts[(op.op, _main_dtype(op))] += 1
    return counts


# ---- shared ------------------------------------------------------------------------------------


def _zeros(shape: object, dtype: type) -> Array:
    """Zeros of a model input's shape; dynamic (None, -1, named) dimensions become 1."""
    dims = [d if isinstance(d, int | np.integer) and d > 0 else 1 for d in shape]  # type: ignore[attr-defined]
    return np.zeros([int(d) for d in dims], dtype=dtype)


def _profile(
    runtime: str,
    model_file: Path,
    threads: int,
    runs: int,
    totals: dict[tuple[str, str], float],
    counts: dict[tuple[str, str], int],
) -> OpProfile:
    total = sum(totals.values())
    rows = [
        OpRow(
            op=op,
            dtype=dtype,
            count=counts.get((op, dtype), 0),
            total_ms=round(ms, 4),
            percent=round(100 * ms / total, 1) if total else 0.0,
        )
        for (op, dtype), ms in sorted(
            ((key, totals.get(key, 0.0)) for key in counts | totals), key=lambda kv: -kv[1]
        )
    ]
    return OpProfile(runtime, str(model_file), threads, runs, round(total, 4), rows)


def format_profile(profile: OpProfile) -> str:
    """A plain-text table: op type, dtype, count, total ms per inference, % of the time."""
    lines = [
        f"{profile.runtime} {profile.model_file} ({profile.threads} thread(s), "
        f"median of {profile.runs} runs): {profile.total_ms:.3f} ms in ops",
        f"{'op':<24} {'dtype':<8} {'count':>5} {'total ms':>9} {'%':>6}",
    ]
    for row in profile.rows:
        lines.append(
            f"{row.op:<24} {row.dtype:<8} {row.count:>5} {row.total_ms:>9.4f} {row.percent:>6.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tasks.io import write_json

    parser = argparse.ArgumentParser(prog="python -m tasks.op_profile", description=__doc__)
    parser.add_argument("variant", type=Path, help="a variant directory (holds variant.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the profile as JSON here")
    args = parser.parse_args(argv)
    try:
        profile = profile_variant(args.variant, args.threads, args.runs)
    except ModelPressError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(format_profile(profile))
    if args.out:
        write_json(args.out, asdict(profile))


if __name__ == "__main__":
    main()
