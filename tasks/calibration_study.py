"""How much calibration data an int8 variant needs: its accuracy against calibration set size.

One SavedModel conversion, then for each size the first n samples of the calib split (as the
variant itself takes them) calibrate the model, which is quantized and evaluated on the
evaluation split with the gates' own statistics: a Clopper-Pearson band on the accuracy and the
paired (Tango) interval on the drop from fp32 that the accuracy-drop gate uses.

    python -m tasks.calibration_study --name tflite_int8 [--sizes 32 64 128 256 512 1000]

reads the newest nightly's workspace (`--workdir .modelpress`, after `make run`) or a `dvc repro`
layout (`--data data --variants variants`); prints the table and its conclusion and writes
`<dir>.calibration.{json,md,png}` beside the variant's directory (the review attaches them).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.io import write_json

SIZES = (32, 64, 128, 256, 512, 1000)


@dataclass(frozen=True)
class CalibrationPoint:
    size: int
    accuracy: float
    accuracy_low: float  # confidence band of the accuracy (Clopper-Pearson)
    accuracy_high: float
    drop_points: float  # fp32 minus int8, points
    drop_lower: float  # paired interval of the drop, as the accuracy-drop gate computes it
    drop_upper: float
    agreement: float


@dataclass(frozen=True)
class CalibrationStudy:
    variant: str
    split: str
    samples: int
    confidence: float
    available: int  # calibration samples the calib split holds
    fp32_accuracy: float
    points: list[CalibrationPoint]


def study_sizes(requested: Sequence[int], available: int) -> list[int]:
    """The requested sizes the calib split allows, plus all of it where it is smaller than asked."""
    sizes = sorted({n for n in requested if 0 < n <= available})
    if available > 0 and any(n > available for n in requested) and available not in sizes:
        sizes.append(available)
    return sizes


def calibration_study(
    variant: str,
    saved_model: Path,
    calib: Array,
    eval_x: Array,
    eval_y: Array,
    sizes: Sequence[int],
    per_channel: bool,
    int8_io: bool,
    split: str = "test",
    confidence: float = 0.95,
) -> CalibrationStudy:
    """int8 accuracy for each calibration size; `calib` and `eval_x` normalised NHWC float32."""
    from tasks import litert_debugger as debugger
    from tasks.statistics import clopper_pearson, paired_drop_interval

    reference = debugger.predict(debugger.float_model(saved_model), eval_x)
    points = []
    for size in study_sizes(sizes, len(calib)):
        calibrated = debugger.calibrated_model(saved_model, calib[:size])
        int8 = debugger.predict(debugger.quantized_model(calibrated, per_channel, int8_io), eval_x)
        right = int(np.sum(int8 == eval_y))
        low, high = clopper_pearson(right, len(eval_y), confidence)
        drop, drop_low, drop_high = paired_drop_interval(eval_y, reference, int8, confidence)
        points.append(
            CalibrationPoint(
                size=size,
                accuracy=right / len(eval_y),
                accuracy_low=low,
                accuracy_high=high,
                drop_points=drop,
                drop_lower=drop_low,
                drop_upper=drop_high,
                agreement=float(np.mean(int8 == reference)),
            )
        )
    return CalibrationStudy(
        variant=variant,
        split=split,
        samples=len(eval_y),
        confidence=confidence,
        available=len(calib),
        fp32_accuracy=float(np.mean(reference == eval_y)),
        points=points,
    )


def study_table(study: CalibrationStudy) -> str:
    pct = f"{100 * study.confidence:.0f}%"
    lines = [
        f"Calibration study: {study.variant} ({study.split} split, {study.samples} samples, "
        f"fp32 {100 * study.fp32_accuracy:.2f}%, calib split holds {study.available})",
        "",
        f"| calib samples | int8 accuracy | {pct} band | drop (pt) | {pct} drop interval (pt) "
        "| agreement |",
        "|---:|---:|---|---:|---|---:|",
    ]
    for p in study.points:
        lines.append(
            f"| {p.size} | {100 * p.accuracy:.2f}% | {100 * p.accuracy_low:.2f}–"
            f"{100 * p.accuracy_high:.2f}% | {p.drop_points:+.2f} | "
            f"{p.drop_lower:+.2f} … {p.drop_upper:+.2f} | {100 * p.agreement:.2f}% |"
        )
    return "\n".join([*lines, "", f"**Conclusion:** {conclusion(study)}"]) + "\n"


def study_plot(study: CalibrationStudy, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [p.size for p in study.points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(
        sizes,
        [100 * p.accuracy_low for p in study.points],
        [100 * p.accuracy_high for p in study.points],
        alpha=0.25,
        label=f"{100 * study.confidence:.0f}% band",
    )
    ax.plot(sizes, [100 * p.accuracy for p in study.points], "o-", label="int8")
    ax.axhline(100 * study.fp32_accuracy, color="gray", linestyle="--", label="fp32")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("calibration samples")
    ax.set_ylabel(f"accuracy on {study.split} (%)")
    ax.set_title(f"{study.variant}: accuracy vs calibration size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_study(study: CalibrationStudy, prefix: Path) -> dict[str, Path]:
    """`<prefix>.calibration.json/.md/.png`."""
    paths = {ext: prefix.with_name(f"{prefix.name}.calibration.{ext}") for ext in ("json", "md")}
    write_json(paths["json"], asdict(study))
    paths["md"].write_text(study_table(study))
    paths["png"] = study_plot(study, prefix.with_name(f"{prefix.name}.calibration.png"))
    return paths


def conclusion(study: CalibrationStudy) -> str:
    """The fewest samples whose accuracy the largest size cannot tell apart from its own (their
    accuracy bands overlap), in one sentence a user can act on."""
    if not study.points:
        return "the calib split holds no sample: nothing to calibrate with."
    largest = study.points[-1]
    if len(study.points) == 1:
        return f"only {largest.size} sample(s) were tried: add sizes to compare."
    enough = next(
        p
        for p in study.points
        if p.accuracy_high >= largest.accuracy_low and largest.accuracy_high >= p.accuracy_low
    )
    if enough is largest:
        return (
            f"{largest.size} samples are the fewest that reach this accuracy: every smaller "
            "size is distinguishably worse; more calibration data may help further."
        )
    return (
        f"{enough.size} samples are enough: larger sizes (up to {largest.size}) are within "
        f"noise of it on {study.samples} images (set calibration_samples: {enough.size})."
    )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    from tasks.sensitivity import add_workspace_arguments

    parser = argparse.ArgumentParser(prog="python -m tasks.calibration_study", description=__doc__)
    add_workspace_arguments(parser)
    parser.add_argument("--name", default="tflite_int8", help="a tflite_int8 variant")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samples", type=int, default=None, help="test samples (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from tasks.cli_support import run_main

    run_main(lambda: _main(_arguments(argv)))


def _main(args: argparse.Namespace) -> None:
    from tasks.data import load_split
    from tasks.litert_debugger import nhwc
    from tasks.sensitivity import int8_setup, source_dir
    from tasks.techniques.tflite_int8 import saved_model
    from tasks.variant import EVALUATION_SPLIT
    from tasks.workspace import study_inputs

    where = study_inputs(args.params, args.data, args.variants, args.workdir)
    cfg, calib, preprocess = int8_setup(where.params_file, args.name, where.data_dir)
    test = load_split(where.data_dir, EVALUATION_SPLIT)
    n = len(test.y) if args.samples is None else args.samples
    source = source_dir(where.variant_dirs, cfg.source, args.name)
    with tempfile.TemporaryDirectory(prefix="mp-calibration-") as work:
        model_dir = saved_model(source, cfg, calib, preprocess, Path(work))
        study = calibration_study(
            args.name,
            model_dir,
            nhwc(calib.x, preprocess.mean, preprocess.std),
            nhwc(test.x[:n], preprocess.mean, preprocess.std),
            test.y[:n],
            args.sizes,
            cfg.per_channel,
            cfg.int8_io,
            split=EVALUATION_SPLIT,
        )
    paths = write_study(study, where.variant_dirs.get(args.name, where.out_dir / args.name))
    print(study_table(study))
    print(f"written: {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
