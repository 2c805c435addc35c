"""sensitivity: which int8 layers cost accuracy on LiteRT, and what keeping each in float costs.

The study on top of tasks.litert_debugger: each of the `top` layers with the largest own error
is kept alone in float, evaluated end to end on the val split (accuracy recovered, the drop's
bound) and timed interleaved with the all-int8 model (its latency cost). It ends with what to
set: the `float_fallback` names that recover the most, or that no layer needs float.

    python -m tasks.sensitivity --name tflite_int8 [--top 8] [--samples 500]

reads the newest nightly's workspace (`--workdir .modelpress`, after `make run`) or a `dvc repro`
layout (`--data data --variants variants`), and writes `<dir>.sensitivity.{json,md,png}` beside
the variant's directory, where the nightly's review attaches them.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.errors import ConfigError
from tasks.io import write_json
from tasks.litert_debugger import (
    EXACT_ERROR,
    LayerError,
    by_error,
    calibrated_model,
    float_model,
    interleaved_ratio,
    layer_errors,
    nhwc,
    predict,
    quantized_model,
)


@dataclass(frozen=True)
class LayerSensitivity:
    """The model with only this layer kept in float, evaluated end to end."""

    name: str
    op: str
    nrmse: float
    accuracy: float
    drop_points: float  # fp32 accuracy minus this model's, in points
    drop_upper: float  # upper bound of the paired confidence interval of that drop
    recovered_points: float  # this model's accuracy minus the all-int8 model's
    agreement: float  # top-1 agreement with fp32
    error_rank: int  # its place by own error (1: largest): `float_fallback: k` keeps ranks 1..k
    # lower bound of the points recovered (paired interval against the all-int8 model): above 0,
    # the recovery is real on these images, not one or two images' noise
    recovered_low: float = 0.0
    # its p50 over the all-int8 model's, timed interleaved (1.43: keeping it float costs +43 %)
    latency_ratio: float | None = None
    latency_low: float | None = None
    latency_high: float | None = None


@dataclass(frozen=True)
class Ranking:
    variant: str
    split: str
    samples: int
    confidence: float
    fp32_accuracy: float
    int8_accuracy: float
    int8_drop_upper: float
    int8_agreement: float
    rows: list[LayerSensitivity]  # most sensitive first: keeping it float recovers the most
    layers: list[LayerError]  # every quantized layer, graph order


# ── the ranking ──


def rank_layers(
    variant: str,
    saved_model: Path,
    calib: Array,
    eval_x: Array,
    eval_y: Array,
    per_channel: bool,
    int8_io: bool,
    top: int,
    split: str = "val",
    confidence: float = 0.95,
    timed: bool = True,
) -> Ranking:
    """The `top` layers with the largest own error, each kept alone in float, evaluated and
    (`timed`) timed against the all-int8 model; ranked by the accuracy float recovers."""
    from tasks.statistics import paired_drop_interval

    calibrated = calibrated_model(saved_model, calib)
    layers = layer_errors(calibrated, calib, per_channel)
    reference = predict(float_model(saved_model), eval_x)
    int8_model = quantized_model(calibrated, per_channel, int8_io)
    int8 = predict(int8_model, eval_x)
    rows = []
    for error_rank, layer in enumerate(by_error(layers)[:top], 1):
        mixed_model = quantized_model(calibrated, per_channel, int8_io, [layer.tensor])
        mixed = predict(mixed_model, eval_x)
        drop, _, upper = paired_drop_interval(eval_y, reference, mixed, confidence)
        ratio, low, high = (
            interleaved_ratio(mixed_model, int8_model, eval_x) if timed else (None, None, None)
        )
        _, _, still_lost = paired_drop_interval(eval_y, int8, mixed, confidence)
        rows.append(
            LayerSensitivity(
                name=layer.name,
                op=layer.op,
                nrmse=layer.nrmse,
                accuracy=float(np.mean(mixed == eval_y)),
                drop_points=drop,
                drop_upper=upper,
                recovered_points=100.0 * float(np.mean(mixed == eval_y) - np.mean(int8 == eval_y)),
                agreement=float(np.mean(mixed == reference)),
                error_rank=error_rank,
                recovered_low=-still_lost,
                latency_ratio=ratio,
                latency_low=low,
                latency_high=high,
            )
        )
    # most sensitive: keeping it float recovers the most; then agreement; then its own error
    rows.sort(key=lambda r: (-r.recovered_points, -r.agreement, -r.nrmse))
    _, _, int8_upper = paired_drop_interval(eval_y, reference, int8, confidence)
    return Ranking(
        variant=variant,
        split=split,
        samples=len(eval_y),
        confidence=confidence,
        fp32_accuracy=float(np.mean(reference == eval_y)),
        int8_accuracy=float(np.mean(int8 == eval_y)),
        int8_drop_upper=int8_upper,
        int8_agreement=float(np.mean(int8 == reference)),
        rows=rows,
        layers=layers,
    )


def ranking_markdown(ranking: Ranking) -> str:
    lines = [
        f"### Layer sensitivity: {ranking.variant}",
        "",
        f"{ranking.split} split, {ranking.samples} samples: fp32 "
        f"{100 * ranking.fp32_accuracy:.2f}%, all-int8 {100 * ranking.int8_accuracy:.2f}% "
        f"(drop upper bound {ranking.int8_drop_upper:.2f} pt, agreement "
        f"{100 * ranking.int8_agreement:.2f}%). Each row: only that layer kept in float; rows "
        "ranked by the points it recovers. *Error rank* is its place by own error, the order "
        "`float_fallback: k` keeps layers in (ranks 1..k); *p50 cost* is its p50 over the "
        "all-int8 model's, timed interleaved on one thread.",
        "",
        "| rank | layer | op | error rank | own error (steps) | accuracy | drop (pt) "
        "| drop upper (pt) | recovered (pt) | recovered, lower bound | agreement | p50 cost |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(ranking.rows, 1):
        lines.append(
            f"| {rank} | `{row.name}` | {row.op} | {row.error_rank} | {row.nrmse:.3f} "
            f"| {100 * row.accuracy:.2f}% | {row.drop_points:+.2f} | {row.drop_upper:+.2f} "
            f"| {row.recovered_points:+.2f} | {row.recovered_low:+.2f} "
            f"| {100 * row.agreement:.2f}% | {_cost(row)} |"
        )
    return "\n".join([*lines, "", f"**Conclusion:** {conclusion(ranking)}"]) + "\n"


def _cost(row: LayerSensitivity) -> str:
    if row.latency_ratio is None or row.latency_low is None or row.latency_high is None:
        return "-"
    return (
        f"{100 * (row.latency_ratio - 1):+.0f}% ({100 * (row.latency_low - 1):+.0f}"
        f"…{100 * (row.latency_high - 1):+.0f}%)"
    )


def conclusion(ranking: Ranking) -> str:
    """What to set, in one sentence a user can act on."""
    real = [row for row in ranking.rows if row.recovered_low > 0]
    if not ranking.rows:
        return "no quantized layer has an error: nothing to keep in float."
    if not real:
        best = max(row.recovered_points for row in ranking.rows)
        return (
            f"no layer needs float: keeping any one of the {len(ranking.rows)} layers with the "
            f"largest error in float recovers at most {best:+.2f} pt, not distinguishable from "
            f"nothing on {ranking.samples} images (leave float_fallback at 0)."
        )
    names = [row.name for row in real]
    costs = [_cost(row) for row in real]
    by_error = [row.name for row in sorted(ranking.rows, key=lambda r: r.error_rank)][: len(real)]
    same = set(by_error) == set(names)
    order = (
        f"`float_fallback: {len(real)}` keeps the same layers"
        if same
        else f"`float_fallback: {len(real)}` would keep {', '.join(by_error)} (by own error), "
        "not these: name them"
    )
    return (
        f"keep {', '.join(names)} in float (`float_fallback: [{', '.join(names)}]`): each alone "
        f"recovers accuracy beyond noise, at p50 cost {', '.join(costs)}; {order}."
    )


def ranking_plot(ranking: Ranking, path: Path) -> Path:
    """Every layer's own error (bars) and, for the evaluated layers only, the points recovered
    (a layer left out of the evaluation has no bar, not a bar of 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recovered = {row.name: row.recovered_points for row in ranking.rows}
    layers = [lay for lay in ranking.layers if lay.nrmse > EXACT_ERROR]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(layers)), 6), sharex=True)
    names = [lay.name for lay in layers]
    top.bar(names, [lay.nrmse for lay in layers], color="tab:blue")
    top.set_ylabel("own error (quant. steps)")
    top.set_title(f"{ranking.variant}: per-layer int8 sensitivity")
    evaluated = [n for n in names if n in recovered]
    bottom.bar(evaluated, [recovered[n] for n in evaluated], color="tab:orange")
    for name in names:
        if name not in recovered:
            bottom.annotate(
                "not run",
                (names.index(name), 0),
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                color="gray",
            )
    bottom.axhline(0, color="gray", linewidth=0.5)
    bottom.set_ylabel("pt recovered in float")
    bottom.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_ranking(ranking: Ranking, prefix: Path) -> dict[str, Path]:
    """`<prefix>.sensitivity.json/.md/.png`."""
    paths = {ext: prefix.with_name(f"{prefix.name}.sensitivity.{ext}") for ext in ("json", "md")}
    write_json(paths["json"], asdict(ranking))
    paths["md"].write_text(ranking_markdown(ranking))
    paths["png"] = ranking_plot(ranking, prefix.with_name(f"{prefix.name}.sensitivity.png"))
    return paths


# ── entry point ──


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks.sensitivity", description=__doc__)
    add_workspace_arguments(parser)
    parser.add_argument("--name", default="tflite_int8", help="a tflite_int8 variant")
    parser.add_argument("--top", type=int, default=8, help="layers evaluated end to end")
    parser.add_argument("--samples", type=int, default=None, help="val samples (default: all)")
    parser.add_argument(
        "--no-timing", action="store_true", help="skip each layer's p50 cost (faster)"
    )
    return parser.parse_args(argv)


def add_workspace_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the data and variants are: the nightly's workspace or dvc repro's folders."""
    parser.add_argument("--params", type=Path, default=None, help="default: the run's own")
    parser.add_argument("--workdir", type=Path, default=Path(".modelpress"))
    parser.add_argument("--data", type=Path, default=None, help="dvc repro's data folder")
    parser.add_argument("--variants", type=Path, default=None, help="dvc repro's variants")


def main(argv: list[str] | None = None) -> None:
    from tasks.cli_support import run_main

    run_main(lambda: _main(_arguments(argv)))


def _main(args: argparse.Namespace) -> None:
    from tasks.techniques.tflite_int8 import saved_model
    from tasks.workspace import study_inputs

    where = study_inputs(args.params, args.data, args.variants, args.workdir)
    cfg, calib, preprocess = int8_setup(where.params_file, args.name, where.data_dir)
    val = _split(where.data_dir, "val", args.samples)
    source = source_dir(where.variant_dirs, cfg.source, args.name)
    with tempfile.TemporaryDirectory(prefix="mp-sensitivity-") as work:
        model_dir = saved_model(source, cfg, calib, preprocess, Path(work))
        ranking = rank_layers(
            args.name,
            model_dir,
            nhwc(calib.x[: cfg.calibration_samples], preprocess.mean, preprocess.std),
            nhwc(val.x, preprocess.mean, preprocess.std),
            val.y,
            cfg.per_channel,
            cfg.int8_io,
            args.top,
            timed=not args.no_timing,
        )
    # beside the variant's own directory, where the nightly's review attaches it
    paths = write_ranking(ranking, where.variant_dirs.get(args.name, where.out_dir / args.name))
    print(ranking_markdown(ranking))
    print(f"written: {', '.join(str(p) for p in paths.values())}")


def source_dir(variant_dirs: dict[str, Path], source: str, name: str) -> Path:
    """The directory of the variant `name` is built from; one line when it was not built."""
    if source not in variant_dirs:
        raise ConfigError(
            f"variants.{name}.source: {source!r} has no built variant here (found "
            f"{', '.join(sorted(variant_dirs)) or 'none'}); run the pipeline first"
        )
    return variant_dirs[source]


def int8_setup(params_file: Path, name: str, data_dir: Path) -> tuple[Any, Any, Any]:
    """A tflite_int8 variant's config, the calib split and the preprocessing, checked."""
    from tasks.data import load_preprocess, load_split
    from tasks.params_file import load_params
    from tasks.techniques.tflite_int8 import TfliteInt8Config

    cfg = load_params(params_file).variants.get(name)
    if not isinstance(cfg, TfliteInt8Config):
        raise ConfigError(f"variants.{name}: expected a tflite_int8 variant in {params_file}")
    return cfg, load_split(data_dir, "calib"), load_preprocess(data_dir)


def _split(data_dir: Path, name: str, samples: int | None) -> Any:
    from tasks.data import Split, load_split

    split = load_split(data_dir, name)
    return split if samples is None else Split(x=split.x[:samples], y=split.y[:samples])


if __name__ == "__main__":
    main()
