"""Benchmark: clustered, low_rank and the Deep Compression chain on the default data.

Builds the baseline (prepare, train, ONNX export) and the variants of params/all-techniques.yaml
named below into a work directory, evaluates each in its runtime, and prints one table:
accuracy, drop, size, zstd-19 compressed size, ratio vs the baseline's compressed size, params,
MACs. Writes the rows as JSON.

    PYTHONPATH=$PWD python scripts/shrink_bench.py [--params params/all-techniques.yaml]
        [--work .modelpress/shrink_bench] [--json metrics/shrink_bench.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = ("clustered", "low_rank", "dc_pruned", "dc_clustered", "deep_compression")


def _accuracy(variant_dir: Path, data_dir: Path) -> float:
    import numpy as np

    from tasks.data import load_split
    from tasks.evaluate import run_variant

    test = load_split(data_dir, "test")
    return float((np.asarray(run_variant(variant_dir, test.x)).argmax(1) == test.y).mean())


def prepare_baseline(params_path: Path, work: Path) -> None:
    from tasks.data import prepare, write_prepared
    from tasks.export import export_baseline
    from tasks.io import read_json
    from tasks.params_file import load_params
    from tasks.train import make_baseline, save_baseline

    if (work / "variants" / "baseline" / "variant.json").exists():
        return
    params = load_params(params_path)
    root = params_path.resolve().parent.parent if params_path.parent.name == "params" else Path()
    write_prepared(prepare(params.data, params.seed, root=root), work / "data")
    result = make_baseline(params.baseline, params.train, work / "data", params.seed, root=root)
    save_baseline(result, params.baseline, work / "models" / "baseline", root=root)
    sha = read_json(work / "models" / "baseline" / "baseline.json")["sha256"]
    export_baseline(
        work / "models" / "baseline", sha, work / "data", work / "variants" / "baseline"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params/all-techniques.yaml"))
    parser.add_argument("--work", type=Path, default=Path(".modelpress/shrink_bench"))
    parser.add_argument("--json", type=Path, default=Path("metrics/shrink_bench.json"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)

    from tasks.compress import build_variant
    from tasks.evaluate import ZSTD_LEVEL, compressed_size
    from tasks.params_file import load_params
    from tasks.variant import model_path, read_record

    params = load_params(args.params)
    work = args.work
    prepare_baseline(args.params, work)
    names = ["baseline", *args.variants]
    for name in args.variants:
        cfg = params.variants[name]
        out = work / "variants" / name
        if not (out / "variant.json").exists():
            build_variant(name, cfg, params.seed, work / "data", work / "models" / "baseline",
                          work / "variants" / cfg.source, out)  # fmt: skip

    rows = []
    base_acc = base_z = None
    for name in names:
        directory = work / "variants" / name
        record = read_record(directory)
        if record.status != "ok":
            rows.append({"variant": name, "status": record.status, "reason": record.reason})
            continue
        path = model_path(directory, record)
        acc = _accuracy(directory, work / "data")
        size, zsize = path.stat().st_size, compressed_size(directory)
        if name == "baseline":
            base_acc, base_z = acc, zsize
        assert base_acc is not None and base_z is not None
        rows.append({
            "variant": name,
            "technique": record.technique,
            "source": record.source,
            "runtime": record.runtime,
            "accuracy": acc,
            "drop_pt": 100 * (base_acc - acc),
            "size_bytes": size,
            "compressed_size_bytes": zsize,
            "compressed_ratio_vs_baseline": base_z / zsize,
            "params": record.params,
            "macs": record.macs,
            "macs_before": record.extra.get("macs_before"),
        })  # fmt: skip

    header = f"{'variant':18} {'acc':>7} {'drop pt':>8} {'size B':>9} {'zstd19 B':>9} {'x base':>7} {'params':>8} {'MACs':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "accuracy" not in r:
            print(f"{r['variant']:18} {r['status']}: {r['reason']}")
            continue
        print(
            f"{r['variant']:18} {r['accuracy']:7.4f} {r['drop_pt']:8.2f} {r['size_bytes']:9,} "
            f"{r['compressed_size_bytes']:9,} {r['compressed_ratio_vs_baseline']:7.2f} "
            f"{r['params'] or 0:8,} {r['macs'] or 0:10,}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"zstd_level": ZSTD_LEVEL, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
