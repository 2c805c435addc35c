"""The `modelpress` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from flows.cli_registry import add_registry_commands
from tasks.cli_support import run_main

# Without PREFECT_API_URL a command starts a temporary Prefect server and gives it 20 s to answer
# (Prefect's default); on a busy 2-core machine its start took longer and the run died with
# "Timed out while attempting to connect to ephemeral Prefect API server". A setting the user
# gives wins.
EPHEMERAL_STARTUP_S = "120"


def _prefect_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_S)


def _table(args: argparse.Namespace) -> None:
    """metrics/variants.json (dvc repro, the nightly's evaluation) or a nightly's review.json."""
    from tasks.report import format_review, format_table, load_metrics

    metrics = load_metrics(args.metrics)
    if isinstance(metrics, list):
        print(format_review(metrics, args.metrics, markdown=args.markdown))
        return
    print(format_table(metrics, markdown=args.markdown))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress", description="ModelPress: compress, validate, publish"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="print the variants table from a metrics file")
    table.add_argument("metrics", type=Path, nargs="?", default=Path("metrics/variants.json"))
    table.add_argument("--markdown", action="store_true", help="print a markdown table")
    table.set_defaults(handler=_table)
    add_registry_commands(commands)
    nightly = commands.add_parser(
        "nightly",
        add_help=False,
        help="run the nightly flow once, here (modelpress nightly --help)",
    )
    nightly.add_argument("args", nargs=argparse.REMAINDER)
    nightly.set_defaults(handler=_nightly)
    searching = commands.add_parser(
        "search",
        add_help=False,
        help="search for the best variant within the gates (modelpress search --help)",
    )
    searching.add_argument("args", nargs=argparse.REMAINDER)
    searching.set_defaults(handler=lambda args: search_main(args.args))
    fleet = commands.add_parser(
        "fleet", help="run one nightly per model of a fleet.yaml, a few at a time"
    )
    fleet.add_argument("fleet_file", nargs="?", default="fleet.yaml")
    fleet.add_argument(
        "--concurrency",
        type=_positive(int),
        help="nightlies at a time when no Prefect limit is set yet: the slots of the global "
        "concurrency limit modelpress-nightlies (local) or the nightly deployment's limit "
        "(deployment); an existing limit wins (fleet.yaml's)",
    )
    fleet.add_argument(
        "--mode",
        choices=["deployment", "local"],
        help="deployment: run_deployment on a work pool; local: subflows here (fleet.yaml's)",
    )
    fleet.add_argument("--approval", choices=["ui", "auto"])
    fleet.add_argument("--workdir", default=".modelpress")
    fleet.set_defaults(handler=_fleet)
    return parser


def _fleet(args: argparse.Namespace) -> None:
    """Print the fleet summary; exit 1 when any model failed (the line says how many)."""
    from flows._console import deliver_prefect_queues, say_user_errors_once
    from flows.fleet import fleet
    from tasks.fleet import fleet_result, load_fleet

    say_user_errors_once()
    load_fleet(args.fleet_file)  # a bad fleet.yaml: its one line, before any server starts
    try:
        state = fleet(
            fleet_file=args.fleet_file,
            concurrency=args.concurrency,
            mode=args.mode,
            approval=args.approval,
            workdir=args.workdir,
            return_state=True,
        )
    finally:
        deliver_prefect_queues()
    outcome = state.result(raise_on_failure=False)
    if fleet_result(outcome) is None:
        raise outcome if isinstance(outcome, BaseException) else RuntimeError(state.message)
    print(f"fleet: {state.message}")
    if state.is_failed():
        sys.exit(1)


def _nightly(args: argparse.Namespace) -> None:
    nightly_main(args.args)


def _run_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options `modelpress nightly` and `modelpress search` share: which inputs, where the
    work and the registry are, how approval is given."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model-rev")
    parser.add_argument("--data-rev")
    parser.add_argument("--approval", choices=["ui", "auto"])
    parser.add_argument("--registry-uri")
    parser.add_argument("--version")
    parser.add_argument("--workdir", default=".modelpress")
    parser.add_argument(
        "--verbose", action="store_true", help="show the converters' output (TensorFlow's)"
    )
    return parser


def nightly_main(argv: list[str] | None = None) -> None:
    """`modelpress nightly`: run the flow once, here, and print where everything went."""
    _prefect_defaults()
    from flows._console import deliver_prefect_queues, result_text, say_user_errors_once
    from flows.nightly import nightly  # imports Prefect: only when asked

    parser = _run_parser("modelpress nightly", nightly.description)
    parser.add_argument(
        "--publish-unchanged",
        action="store_true",
        help="publish a new version even when its files equal the last published version's",
    )
    parser.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        help="where the compression fan-out runs (default: params.yaml's task_runner.kind)",
    )
    parser.add_argument("--dask-address", help="an existing Dask scheduler (implies dask)")
    parser.add_argument("--dask-workers", type=int, help="LocalCluster worker processes")
    args = parser.parse_args(argv)
    if args.verbose:
        from tasks.quiet import show_converter_output

        show_converter_output()
    say_user_errors_once()

    def run() -> None:
        from prefect.exceptions import PrefectHTTPStatusError

        from tasks.errors import ServerAuthError
        from tasks.params_file import load_params

        # a bad params file is one line now, not after Prefect's temporary server has started
        params = load_params(args.params, _runner_overrides(args))
        refuse_ui_without_server(args.approval or params.review.approval)
        check_before_work(params, args.workdir)
        try:
            result = nightly(
                params_file=args.params,
                overrides=_runner_overrides(args),
                model_rev=args.model_rev,
                data_rev=args.data_rev,
                approval=args.approval,
                registry_uri=args.registry_uri,
                version=args.version,
                workdir=args.workdir,
                publish_unchanged=args.publish_unchanged,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 401:
                raise ServerAuthError.from_settings() from None
            raise
        finally:
            deliver_prefect_queues()
        print(result_text(result))

    run_main(run)


EXIT_INFEASIBLE = 3  # the search ran, and no trial met the gates


def search_main(argv: list[str] | None = None) -> None:
    """`modelpress search`: run the search flow once, here; exit 3 when nothing met the goal."""
    _prefect_defaults()
    from flows._console import deliver_prefect_queues, say_user_errors_once, search_text
    from flows.search import search  # imports Prefect: only when asked

    parser = _run_parser("modelpress search", search.description)
    parser.add_argument(
        "--trials",
        type=_positive(int),
        help="budget: distinct trials in the study, at least 1 (search.budget; repeats are free)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive(float),
        help="budget: wall seconds of this run; no trial starts after it (search.budget)",
    )
    parser.add_argument(
        "--objective",
        choices=["p50", "size", "compressed_size"],
        help="what to minimise (search.objective.minimize)",
    )
    parser.add_argument(
        "--objective-runner", help="the runner p50 is measured on (search.objective.runner)"
    )
    parser.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="GATE=VALUE",
        help="a goal of this run, e.g. max_accuracy_drop=0.5 (search.constraints; repeatable); "
        f"GATE is one of: {', '.join(_gate_names())}",
    )
    parser.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="A+B",
        help="a chain of techniques to try, e.g. pruned+tflite_int8 (replaces search.chains; "
        "repeatable, cheapest first)",
    )
    args = parser.parse_args(argv)
    if args.verbose:
        from tasks.quiet import show_converter_output

        show_converter_output()
    say_user_errors_once()
    budget = {
        k: v for k, v in (("trials", args.trials), ("seconds", args.seconds)) if v is not None
    }
    section: dict[str, Any] = {"budget": budget} if budget else {}
    objective = {
        k: v
        for k, v in (("minimize", args.objective), ("runner", args.objective_runner))
        if v is not None
    }
    if objective:
        section["objective"] = objective
    if args.constraint:
        section["constraints"] = _constraints(args.constraint, parser)
    if args.chain:
        section["chains"] = [chain.split("+") for chain in args.chain]
    overrides = {"search": section} if section else None
    status: list[str] = []

    def run() -> None:
        from tasks.params_file import load_params

        # a bad search: section is one line, before Prefect starts
        params = load_params(args.params, overrides)
        refuse_ui_without_server(args.approval or params.review.approval)
        check_before_work(params, args.workdir)
        try:
            result = search(
                params_file=args.params,
                overrides=overrides,
                model_rev=args.model_rev,
                data_rev=args.data_rev,
                approval=args.approval,
                registry_uri=args.registry_uri,
                version=args.version,
                workdir=args.workdir,
            )
        finally:
            deliver_prefect_queues()
        print(search_text(result))
        status.append(result.status)

    run_main(run)
    if status == ["infeasible"]:
        print("search: no trial met the gates (see the report above)", file=sys.stderr)
        sys.exit(EXIT_INFEASIBLE)


def _constraints(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """--constraint GATE=VALUE pairs as search.constraints (values read as YAML: 0.5, true)."""
    import yaml

    constraints: dict[str, Any] = {}
    for pair in pairs:
        gate, sep, value = pair.partition("=")
        if not sep or not gate or not value:
            parser.error(f"--constraint {pair!r}: expected GATE=VALUE, e.g. max_accuracy_drop=0.5")
        if gate.strip() not in _gate_names():
            parser.error(
                f"--constraint {pair!r}: unknown gate {gate.strip()!r}; "
                f"expected one of {', '.join(_gate_names())}"
            )
        constraints[gate.strip()] = yaml.safe_load(value)
    return constraints


def check_before_work(params: Any, workdir: str) -> None:
    """What would otherwise fail after minutes of work, or with a traceback: a --workdir that
    is a file, a Dask scheduler that does not answer."""
    from tasks.errors import ConfigError

    where = Path(workdir)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--workdir {workdir}: a file; expected a directory (created if missing)")
    if params.task_runner.address is not None:
        from flows.runners import scheduler_answers

        scheduler_answers(params.task_runner.address)


def refuse_ui_without_server(approval: str) -> None:
    """Approval in the UI needs a Prefect server a reviewer can open: without PREFECT_API_URL
    the run would start a temporary server, which serves no UI, and pause on it until its
    timeout with nobody able to resume it."""
    from prefect.settings import PREFECT_API_URL

    from tasks.errors import ConfigError

    if approval == "ui" and not PREFECT_API_URL.value():
        raise ConfigError(
            "review.approval: ui needs a Prefect server with its UI, and PREFECT_API_URL is not "
            "set (a temporary server has no UI to approve on): start one (make stack; then "
            'eval "$(infra/stack.sh env)") or pass --approval auto'
        )


def _gate_names() -> list[str]:
    from tasks.config import VariantGates

    return list(VariantGates.model_fields)


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number above 0 (a budget of 0 would be a search that never runs)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _runner_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """--task-runner/--dask-address/--dask-workers as params overrides (task_runner: section)."""
    runner: dict[str, Any] = {}
    if args.task_runner is not None:
        runner["kind"] = args.task_runner
    if args.dask_address is not None:
        runner |= {"kind": "dask", "address": args.dask_address}
    if args.dask_workers is not None:
        runner["n_workers"] = args.dask_workers
    return {"task_runner": runner} if runner else None


def _hold_back_native_output(args: list[str]) -> None:
    """Unless --verbose: TensorFlow's C++ lines (oneDNN, absl, the converter's settings) go to
    a file in the temp folder, not between the log lines and the results table. A temp file,
    not the workdir: a run refused for bad input leaves the workspace as it was."""
    import os
    import tempfile
    from datetime import UTC, datetime

    from tasks.quiet import native_output_to

    if {"--verbose", "-h", "--help"} & set(args):
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(tempfile.gettempdir()) / f"modelpress-{os.getuid()}"
    native_output_to(folder / f"native-output-{stamp}-{os.getpid()}.log")


def main(argv: list[str] | None = None) -> None:
    _prefect_defaults()
    from flows.interrupts import stop_cleanly

    argv = sys.argv[1:] if argv is None else argv
    command = f"modelpress {argv[0]}" if argv else "modelpress"
    with stop_cleanly(command, _kept(argv)):
        if argv[:1] == ["nightly"]:  # its own parser owns every option, --help included
            _hold_back_native_output(argv[1:])
            _nightly(argparse.Namespace(args=argv[1:]))
            return
        if argv[:1] == ["search"]:
            _hold_back_native_output(argv[1:])
            search_main(argv[1:])
            return
        args = build_parser().parse_args(argv)
        run_main(lambda: args.handler(args))


def _kept(argv: list[str]) -> str:
    """What an interrupted run leaves for the next one."""
    workdir = ".modelpress"
    for index, arg in enumerate(argv):
        if arg == "--workdir" and index + 1 < len(argv):
            workdir = argv[index + 1]
        elif arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
    return (
        f"what had finished (data, baseline, built variants, evaluations) is cached under "
        f"{workdir} and the next run reuses it; the registry holds only whole versions"
    )


if __name__ == "__main__":
    main()
