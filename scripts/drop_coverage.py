"""How often the drop gate passes a variant whose true drop equals the gate: the full table.

Each cell simulates `--repeats` test splits of n images for a variant with the given true
drop and discordance rate ((b + c) / n), and reports the share that pass the gate (upper bound
at most the gate) under Tango's score interval (what ModelPress gates on) and under the
conditional McNemar bound it gated on before. At the default confidence 0.95 the gate's error
must stay at or under 2.5 %; tests/unit/test_statistics.py runs a smaller grid in the suite.

    python scripts/drop_coverage.py [--gates 1 2 5] [--repeats 20000] [--out benchmarks/drop_coverage.json]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from tasks.arrays import Array
from tasks.io import write_json
from tasks.statistics import clopper_pearson, simulate_pass_rate, smallest_certifying_size

SIZES = (50, 100, 359, 2000, 10000)
RATE_FACTORS = (1.0, 1.5, 3.0, 10.0, 30.0)  # discordance rate as a multiple of the true drop


def conditional_mcnemar(b: Array, c: Array, n: Array, confidence: float) -> tuple[Array, Array]:
    """The old bound: Clopper-Pearson on b given b + c, as if b + c were known."""
    highs = []
    for bi, ci, ni in zip(b, c, n, strict=True):
        discordant = int(bi + ci)
        high = clopper_pearson(int(bi), discordant, confidence)[1] if discordant else 0.5
        highs.append((2 * high - 1) * discordant / ni)
    return np.zeros(len(highs)), np.array(highs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=20000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/drop_coverage.json"))
    args = parser.parse_args(argv)
    started, rows = time.monotonic(), []
    noise = 3 * math.sqrt(0.025 * 0.975 / args.repeats)
    print(
        f"pass rate at a true drop equal to the gate; nominal {(1 - args.confidence) / 2:.3f} (+{noise:.4f} simulation noise at 3 SE)"
    )
    print("| gate (pts) | n | discordance | Tango (now) | conditional McNemar (before) |")
    print("|---|---|---|---|---|")
    for gate in args.gates:
        for n in SIZES:
            for factor in RATE_FACTORS:
                rate = min(1.0, gate / 100 * factor)
                tango = simulate_pass_rate(
                    n, gate, rate, gate, args.confidence, args.repeats, seed=n
                )
                old = simulate_pass_rate(
                    n,
                    gate,
                    rate,
                    gate,
                    args.confidence,
                    args.repeats,
                    seed=n,
                    bounds=conditional_mcnemar,
                )
                rows.append(
                    {
                        "gate": gate,
                        "n": n,
                        "discordance": rate,
                        "tango": tango,
                        "conditional_mcnemar": old,
                    }
                )
                print(f"| {gate:g} | {n} | {rate:.3f} | {tango:.4f} | {old:.4f} |")
    smallest = {f"{gate:g}": smallest_certifying_size(gate, args.confidence) for gate in args.gates}
    print("smallest test split that can certify each gate:", smallest)
    write_json(
        args.out,
        {
            "confidence": args.confidence,
            "repeats": args.repeats,
            "rows": rows,
            "smallest_certifying_size": smallest,
            "seconds": time.monotonic() - started,
        },
    )
    print(f"wrote {args.out} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
