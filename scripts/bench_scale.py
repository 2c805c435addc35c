"""Past one machine, measured: the compression fan-out on threads vs a Dask LocalCluster, and a
fleet at concurrency 1 vs 2. Prints a table per measurement and writes JSON.

    python scripts/bench_scale.py fanout [--params params.yaml] [--out benchmarks/scale-fanout.json]
    python scripts/bench_scale.py fleet [--fleet examples/fleet/fleet.yaml] [--out ...]

Every run gets a fresh work directory and registry (nothing cached from another run). Without
PREFECT_API_URL, Prefect's temporary server runs for the script's duration.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def _subflow_seconds(parent_name: str, flow_name: str) -> float | None:
    """Wall time of the newest run of `flow_name` (the variants fan-out subflow)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    if not runs or runs[0].start_time is None or runs[0].end_time is None:
        return None
    return (runs[0].end_time - runs[0].start_time).total_seconds()


def fanout(args: argparse.Namespace) -> list[dict[str, Any]]:
    from flows.nightly import nightly

    rows: list[dict[str, Any]] = []
    for label, runner in (
        ("threads (max_workers=2)", {"kind": "threads"}),
        ("dask LocalCluster(n_workers=2)", {"kind": "dask", "n_workers": 2}),
    ):
        work = Path(tempfile.mkdtemp(prefix="mp-scale-"))
        started = time.monotonic()
        result = nightly(
            params_file=args.params,
            overrides={"task_runner": runner}
            | ({"train": {"epochs": args.train_epochs}} if args.train_epochs else {}),
            approval="auto",
            registry_uri=str(work / "registry"),
            workdir=str(work / "work"),
        )
        total = time.monotonic() - started
        pids = sorted({b.rsplit(":", 1)[1] for b in result.builders.values()})
        rows.append(
            {
                "runner": label,
                "fanout_s": _subflow_seconds("nightly", "variants"),
                "nightly_s": round(total, 1),
                "status": result.status,
                "flow_pid": os.getpid(),
                "builder_pids": pids,
                "builders": result.builders,
            }
        )
    print("| runner | fan-out wall s | nightly wall s | status | flow pid | builder pids |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        fan = f"{r['fanout_s']:.1f}" if r["fanout_s"] is not None else "-"
        print(
            f"| {r['runner']} | {fan} | {r['nightly_s']} | {r['status']} | {r['flow_pid']} "
            f"| {', '.join(str(pid) for pid in r['builder_pids'])} |"
        )
    return rows


def fleet(args: argparse.Namespace) -> list[dict[str, Any]]:
    from flows.fleet import fleet as fleet_flow
    from tasks.fleet import fleet_result

    rows: list[dict[str, Any]] = []
    for concurrency in (1, 2):
        work = Path(tempfile.mkdtemp(prefix="mp-fleet-"))
        raw = yaml.safe_load(Path(args.fleet).read_text())
        base = Path(args.fleet).resolve().parent
        for model in raw["models"]:  # a fresh registry; params paths made absolute
            model["params"] = str((base / model.get("params", "params.yaml")).resolve())
            extra: dict[str, Any] = {"registry": {"uri": str(work / "registry")}}
            if args.train_epochs:
                extra["train"] = {"epochs": args.train_epochs}
            model["overrides"] = model.get("overrides", {}) | extra
        fleet_file = work / "fleet.yaml"
        fleet_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        started = time.monotonic()
        state = fleet_flow(
            fleet_file=str(fleet_file),
            concurrency=concurrency,
            workdir=str(work / "work"),
            return_state=True,
        )
        wall = time.monotonic() - started
        result = fleet_result(state.result(raise_on_failure=False))
        if result is None:
            raise SystemExit(f"fleet ended {state.name} without a result: {state.message}")
        rows.append(
            {
                "concurrency": concurrency,
                "wall_s": round(wall, 1),
                "state": f"{state.name}: {state.message}",
                "models": [
                    {
                        k: getattr(m, k)
                        for k in ("name", "status", "version", "best_variant", "error")
                    }
                    for m in result.models
                ],
            }
        )
    print("| concurrency | fleet wall s | final state |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['wall_s']} | {r['state']} |")
    print("\n| concurrency | model | status | version | best variant | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        models = r["models"]
        for m in models:
            print(
                f"| {r['concurrency']} | {m['name']} | {m['status']} | {m['version'] or '-'} "
                f"| {m['best_variant'] or '-'} | {m['error'] or ''} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    fan = commands.add_parser("fanout")
    fan.add_argument("--params", default="params.yaml")
    fan.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help="baseline epochs (the fan-out is measured; a shorter baseline saves time on a busy machine)",
    )
    fan.add_argument("--out", default="benchmarks/scale-fanout.json")
    flt = commands.add_parser("fleet")
    flt.add_argument("--fleet", default="examples/fleet/fleet.yaml")
    flt.add_argument("--train-epochs", type=int, default=None, help="baseline epochs, every model")
    flt.add_argument("--out", default="benchmarks/scale-fleet.json")
    args = parser.parse_args()
    rows = fanout(args) if args.what == "fanout" else fleet(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine_cores": os.cpu_count(), "rows": rows}, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
