"""A fleet of N small models through the deployment mode on the PostgreSQL-backed stack: every
model ends (published, failed with its reason, or timed out), nothing hangs, one summary names
each outcome, the registry verifies clean. Prints a table and writes JSON.

    python scripts/fleet_bench.py --models 50 --concurrency 2 --out benchmarks/fleet.json

The models are the digits default at 16x16 under different names and seeds, two variants each
(onnx_int8, pruned with one fine-tuning epoch). Three are made to fail: a params file that does
not exist, params naming a technique that does not exist, and one whose flow-run process is
SIGKILLed mid-run (what the out-of-memory killer does to a worker's run). The stack is started
with its own state directory and ports, with a work-pool limit of 2 on the nightly's pool beside
the nightly deployment's concurrency limit, and is stopped at the end on every path.

Where the time went is CPU seconds per part of the stack (Prefect server, PostgreSQL, the
nightly worker and its flow-run processes, the fleet's worker), from /proc, and the nightly runs'
time split into waiting for a slot, starting the process, and the tasks (from the API).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = {"iterations": 20, "warmup": 2, "max_seconds": 1.0, "trials": 2,
             "throughput_batch": 8, "throughput_seconds": 0.2, "compare_rounds": 3}  # fmt: skip
GATES = {"defaults": {"min_accuracy": 0.5, "max_accuracy_drop": 20.0, "max_worst_class_drop": None,
                      "min_agreement": 0.5, "min_speedup": None, "min_size_reduction": None,
                      "max_slowdown": None}, "per_variant": {}}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _params(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["image_size"] = 16
    raw["train"] |= {"width": 8, "epochs": 3}
    raw["benchmark"] |= BENCHMARK
    raw["gates"] = raw["gates"] | GATES
    raw["variants"] = {
        "onnx_int8": {"technique": "onnx_int8", "source": "baseline"},
        "pruned": {"technique": "pruned", "source": "baseline", "ratio": 0.5, "round_to": 4,
                   "finetune_epochs": 1},
    }  # fmt: skip
    raw["registry"]["uri"] = str(folder / "registry")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "broken.yaml").write_text("variants:\n  x: {technique: no_such_technique}\n")
    return path


def _fleet(folder: Path, models: int) -> Path:
    entries: list[dict[str, Any]] = [
        {"name": f"digits-{i:02d}", "params": "params.yaml", "overrides": {"seed": i}}
        for i in range(models - 3)
    ]
    entries += [
        {"name": "bad-file", "params": "missing.yaml"},
        {"name": "bad-params", "params": "broken.yaml"},
        {"name": "killed", "params": "params.yaml", "overrides": {"seed": 999}},
    ]
    fleet = {"mode": "deployment", "approval": "auto", "model_timeout_s": 1800, "models": entries}
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def _stack(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["bash", str(ROOT / "infra" / "stack.sh"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"infra/stack.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _kill_when_running(name: str, fleet_run: subprocess.Popen[str]) -> str:
    """SIGKILL the flow-run process of the nightly run called `name` once it has run 8 s (its
    training has begun), while the fleet is still running."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        while fleet_run.poll() is None:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
            running = [r for r in runs if r.state is not None and r.state.is_running()]
            if running and running[0].start_time is not None:
                age = datetime.now(running[0].start_time.tzinfo) - running[0].start_time
                if age.total_seconds() > 8:
                    run_id = str(running[0].id)
                    for process in psutil.process_iter():
                        try:
                            if process.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                                process.kill()
                                return f"killed pid {process.pid} of run {run_id}"
                        except (psutil.NoSuchProcess, psutil.AccessDenied):
                            continue
            if any(r.state is not None and r.state.is_final() for r in runs):
                return "it ended before it could be killed"
            time.sleep(1)
    return "never found running"


def _cpu_seconds(state: Path) -> dict[str, float]:
    """CPU seconds (own and reaped children's) of each stack process tree, by part."""
    parts = {"prefect server": "prefect-server", "nightly worker + flow runs": "worker",
             "fleet worker + fleet run": "worker-fleet", "S3 endpoint": "s3"}  # fmt: skip
    out: dict[str, float] = {}
    for label, name in parts.items():
        pid_file = state / f"{name}.pid"
        if not pid_file.exists():
            continue
        try:
            root = psutil.Process(int(pid_file.read_text()))
            total = 0.0
            for process in [root, *root.children(recursive=True)]:
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            out[label] = round(total, 1)
        except psutil.NoSuchProcess:
            continue
    postgres = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    out["postgresql"] = round(sum(sum(p.cpu_times()[:2]) for p in postgres), 1)
    return out


def _timeline() -> dict[str, Any]:
    """Nightly runs from the API: time waiting for a slot, process start, tasks by kind."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    waits, starts, runs_s = [], [], []
    by_task: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly"])), limit=200
        )
        for run in runs:
            if run.start_time is None or run.end_time is None:
                continue
            if run.created is not None:
                waits.append((run.start_time - run.created).total_seconds())
            runs_s.append((run.end_time - run.start_time).total_seconds())
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), limit=200
            )
            first = min((t.start_time for t in tasks if t.start_time), default=None)
            if first is not None:
                starts.append((first - run.start_time).total_seconds())
            for t in tasks:
                kind = t.name.split("-")[0]
                by_task[kind] = by_task.get(kind, 0.0) + (t.total_run_time.total_seconds())
    mean = lambda xs: round(sum(xs) / len(xs), 1) if xs else None  # noqa: E731
    return {
        "nightly_runs": len(runs_s),
        "mean_wait_for_slot_s": mean(waits),
        "mean_start_to_first_task_s": mean(starts),
        "mean_run_s": mean(runs_s),
        "task_seconds_total": {k: round(v, 1) for k, v in sorted(by_task.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fleet.json")
    args = parser.parse_args()
    if args.models < 4:
        raise SystemExit("--models: at least 4 (three are made to fail)")
    folder = Path(tempfile.mkdtemp(prefix="modelpress-fleet-bench-"))
    state = folder / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {"MODELPRESS_BIN": str(Path(sys.executable).parent), "MODELPRESS_STACK_STATE": str(state),
            "PREFECT_PORT": str(_free_port()), "S3_PORT": str(_free_port())}  # fmt: skip
    _params(folder)
    fleet = _fleet(folder, args.models)
    started = time.monotonic()
    try:
        _stack(env, "up", "--db", "postgres")
        up_s = time.monotonic() - started
        api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
        os.environ |= {"PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect-home"),
                       "PREFECT_API_AUTH_STRING": (state / "credentials" / "worker").read_text().strip()}  # fmt: skip
        prefect = str(Path(sys.executable).parent / "prefect")
        subprocess.run([prefect, "work-pool", "set-concurrency-limit", "modelpress-local", "2"],
                       check=True, capture_output=True)  # fmt: skip
        began = time.monotonic()
        fleet_run = subprocess.Popen(
            [prefect, "deployment", "run", "fleet/fleet", "--param", f"fleet_file={fleet}",
             "--param", f"workdir={folder / 'work'}", "--watch", "--watch-timeout", "36000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        killed = _kill_when_running("killed", fleet_run)
        output, _ = fleet_run.communicate()
        wall_s = time.monotonic() - began
        cpu = _cpu_seconds(state)
        timeline = _timeline()
        summary = _summary()
        verify = subprocess.run(
            [sys.executable, "-m", "flows.cli", "registry", "verify", "--uri",
             str(folder / "registry")], cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        _stack(env, "down")
        pg_dir = (
            (state / "postgres.dir").read_text().strip()
            if (state / "postgres.dir").exists()
            else ""
        )
        if pg_dir.startswith("/var/lib/postgresql/"):  # as root: outside the temp folder
            shutil.rmtree(pg_dir, ignore_errors=True)
    outcomes = summary.get("outcomes", {})
    report = {
        "models": args.models,
        "stack_up_s": round(up_s, 1),
        "fleet_wall_s": round(wall_s, 1),
        "models_per_hour": round(args.models / (wall_s / 3600), 1),
        "fleet_exit": fleet_run.returncode,
        "killed": killed,
        "outcomes": outcomes,
        "registry_verify": verify.stdout.strip().splitlines()[:1],
        "registry_verify_exit": verify.returncode,
        "cpu_seconds": cpu,
        "timeline": timeline,
        "cores": os.cpu_count(),
        "summary_head": summary.get("head"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(_table(report))
    print(output[-1500:] if fleet_run.returncode else "")


def _summary() -> dict[str, Any]:
    """The fleet-summary artifact: each model's status."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-summary"])),
            limit=1,
        )
    if not artifacts:
        return {}
    text = str(artifacts[0].data)
    statuses: dict[str, int] = {}
    failures = {}
    for line in text.splitlines()[4:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 2:
            continue
        status = cells[1].split(":")[0]
        statuses[status] = statuses.get(status, 0) + 1
        if status in ("failed", "timed-out"):
            failures[cells[0]] = cells[1][:160]
    return {"head": text.splitlines()[0], "outcomes": {"counts": statuses, "failed": failures}}


def _table(report: dict[str, Any]) -> str:
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| models | {report['models']} (3 made to fail) |",
        f"| fleet wall time | {report['fleet_wall_s']:.0f} s |",
        f"| models per hour | {report['models_per_hour']} on {report['cores']} cores |",
        f"| outcomes | {report['outcomes'].get('counts')} |",
        f"| registry verify | {report['registry_verify']} (exit {report['registry_verify_exit']}) |",
    ]
    for part, seconds in report["cpu_seconds"].items():
        rows.append(f"| CPU s: {part} | {seconds} |")
    t = report["timeline"]
    rows += [
        f"| nightly: mean wait for a slot | {t['mean_wait_for_slot_s']} s |",
        f"| nightly: mean process start to first task | {t['mean_start_to_first_task_s']} s |",
        f"| nightly: mean run | {t['mean_run_s']} s |",
        f"| task seconds (all runs) | {t['task_seconds_total']} |",
    ]
    for name, why in report["outcomes"].get("failed", {}).items():
        rows.append(f"| {name} | {why.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
