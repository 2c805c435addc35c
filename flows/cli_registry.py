"""`modelpress registry list|show|decisions|pull|verify`: the registry read from the command line,
without Prefect (a consumer's view of what was published).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.config import RegistryConfig
    from tasks.registry import VerifyReport


def _registry_config(args: argparse.Namespace) -> RegistryConfig:
    """params.registry from --params (./params.yaml if present), with --uri/--endpoint-url on top."""
    from tasks.params_file import load_params, parse_params

    overrides: dict[str, Any] = {}
    if args.uri is not None:
        overrides["uri"] = args.uri
    if args.endpoint_url is not None:
        overrides["endpoint_url"] = args.endpoint_url
    path = args.params if args.params is not None else Path("params.yaml")
    if args.params is None and not path.exists():
        return parse_params({"registry": overrides}, origin="--uri/--endpoint-url").registry
    return load_params(path, overrides={"registry": overrides}).registry


def _registry_list(args: argparse.Namespace) -> None:
    from tasks.registry import open_registry

    registry = open_registry(_registry_config(args))
    models = registry.list_models()
    if not models:
        print(f"no published models in {registry.uri}")
    for model in models:
        versions = registry.list_versions(model)
        bad = _bad_versions(registry, model, versions)
        good = [v for v in versions if v not in bad]
        latest = f"latest {good[-1]}" if good else "none readable"
        flagged = f"; {len(bad)} with a bad manifest ({', '.join(bad)}): run verify" if bad else ""
        print(f"{model}  {len(good)} version(s), {latest}{flagged}")


def _bad_versions(registry: Any, model: str, versions: list[str]) -> dict[str, str]:
    """Versions whose manifest cannot be read (truncated, {}, unreadable), with why."""
    from tasks.errors import RegistryError

    bad = {}
    for version in versions:
        try:
            registry.read_manifest(model, version)
        except RegistryError as exc:
            bad[version] = str(exc)
    return bad


def _registry_show(args: argparse.Namespace) -> None:
    from tasks.registry import open_registry

    registry = open_registry(_registry_config(args))
    if args.version is None:
        versions = registry.list_versions(args.model)
        bad = _bad_versions(registry, args.model, versions)
        lines = [f"{v}  (bad manifest: {bad[v]})" if v in bad else v for v in versions]
        print("\n".join(lines) or f"no published versions of {args.model} in {registry.uri}")
        return
    print(_format_manifest(registry.read_manifest(args.model, args.version)))


def _format_manifest(manifest: dict[str, Any]) -> str:
    """Variants with their format, approval and files (sha256, size)."""
    lines = [f"{manifest['model']} {manifest['version']}  created {manifest['created_at']}"]
    for name, variant in manifest["variants"].items():
        approval = variant.get("approval", {})
        lines.append(
            f"  {name}  format={variant['format']}  approved by {approval.get('approved_by')} "
            f"at {approval.get('approved_at')}"
            + (f"  ({approval['comment']})" if approval.get("comment") else "")
        )
        if approval.get("identity"):  # manifests before the approver list lack these
            review = approval.get("flow_run_url") or approval.get("flow_run_id")
            lines.append(f"    identity: {approval['identity']}; review: {review}")
        lines.extend(_format_files(variant["files"], indent="    "))
        sizes = _format_sizes(variant.get("metrics") or {})
        if sizes:
            lines.append(f"    {sizes}")
    return "\n".join(lines)


def _format_sizes(metrics: dict[str, Any]) -> str:
    """'model N bytes, zstd-19 M bytes' from a variant's metrics; manifests from before the
    compressed size was measured give only the first part."""
    if metrics.get("size_bytes") is None:
        return ""
    text = f"model {metrics['size_bytes']} bytes"
    compressed, how = metrics.get("compressed_size_bytes"), metrics.get("compressed_with") or {}
    if compressed is not None:
        text += f", {how.get('codec', 'zstd')}-{how.get('level', '?')} {compressed} bytes"
    return text


def _format_files(files: dict[str, dict[str, Any]], indent: str) -> list[str]:
    return [f"{indent}{f['sha256']}  {f['size_bytes']:>10}  {rel}" for rel, f in files.items()]


def _registry_pull(args: argparse.Namespace) -> None:
    from tasks.registry import open_registry

    registry = open_registry(_registry_config(args))
    dest = registry.pull(args.model, args.version, args.variant, args.dest)
    files = registry.read_manifest(args.model, args.version)["variants"][args.variant]["files"]
    print(f"pulled {args.model}/{args.version}/{args.variant} into {dest}; verified sha256:")
    print("\n".join(_format_files(files, indent="  ")))


def _registry_decisions(args: argparse.Namespace) -> None:
    """Every review decision of a model, oldest first: who decided what, how we know, and why."""
    from tasks.registry import open_registry

    registry = open_registry(_registry_config(args))
    decisions = registry.list_decisions(args.model)
    if not decisions:
        print(f"no review decisions recorded for {args.model} in {registry.uri}")
    for d in decisions:
        print(f"{d['record']}  bad: {d['bad']}" if "bad" in d else _format_decision(d))


def _format_decision(d: dict[str, Any]) -> str:
    """One decision on two lines: outcome, variants and reviewer; then comment, reason and run."""
    approved = ", ".join(d.get("approved") or []) or "none"
    not_approved = ", ".join(d.get("not_approved") or []) or "none"
    head = (
        f"{d.get('decided_at')}  {d.get('outcome')}  approved: {approved}  "
        f"not approved: {not_approved}  by {d.get('reviewer') or '-'} ({d.get('identity') or '-'})"
    )
    # a refusal's request: what the refused reviewer asked to publish
    details = [f"requested: {', '.join(d['requested'])}"] if d.get("requested") else []
    details += [f"comment: {d['comment']}"] if d.get("comment") else []
    details += [f"reason: {d['reason']}"] if d.get("reason") else []
    details.append(f"run: {d.get('flow_run_url') or d.get('flow_run_id')}")
    return head + "\n  " + "  ".join(details)


def _registry_verify(args: argparse.Namespace) -> None:
    """Check every published file; exit 1 if anything is corrupt, missing or unreadable."""
    from tasks.errors import RegistryError
    from tasks.registry import open_registry
    from tasks.registry.local import LocalRegistry

    registry = open_registry(_registry_config(args))
    if isinstance(registry, LocalRegistry) and not registry.root.is_dir():
        # "OK: 0 versions" would pass a check of the wrong place
        raise RegistryError(f"{registry.root}: no such registry directory; pass --uri")
    report = registry.verify()
    print(_format_report(registry.uri, report))
    if not report.ok:
        sys.exit(1)


def _format_report(uri: str, report: VerifyReport) -> str:
    """A summary line, then `kind  key: detail` for each problem."""
    counts: dict[str, int] = {}
    for problem in report.problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    found = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no problems"
    verdict = "OK" if report.ok else "FAILED"
    lines = [
        f"{verdict}: {uri}: {report.checked_versions} version(s), "
        f"{report.checked_files} file(s) checked; {found}"
    ]
    lines.extend(f"  {p.kind}  {p.key}: {p.detail}" for p in report.problems)
    return "\n".join(lines)


def add_registry_commands(commands: Any) -> None:
    """`modelpress registry list|show|decisions|pull|verify`; each takes --params, --uri, --endpoint-url."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params", type=Path, default=None, help="params.yaml to read (default ./params.yaml)"
    )
    common.add_argument("--uri", help="registry URI: a directory or s3://bucket/prefix")
    common.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto)")
    registry = commands.add_parser(
        "registry", help="list, show, pull and verify published variants; review decisions"
    )
    actions = registry.add_subparsers(dest="registry_command", required=True)
    listing = actions.add_parser("list", parents=[common], help="list published models")
    listing.set_defaults(handler=_registry_list)
    show = actions.add_parser(
        "show", parents=[common], help="list a model's versions, or show one version's manifest"
    )
    show.add_argument("model")
    show.add_argument("version", nargs="?")
    show.set_defaults(handler=_registry_show)
    pull = actions.add_parser(
        "pull", parents=[common], help="download a variant, verified against the manifest"
    )
    pull.add_argument("model")
    pull.add_argument("version")
    pull.add_argument("variant")
    pull.add_argument("dest", type=Path)
    pull.set_defaults(handler=_registry_pull)
    decisions = actions.add_parser(
        "decisions",
        parents=[common],
        help="every review decision of a model: approved, nothing approved, refused, timed out",
    )
    decisions.add_argument("model")
    decisions.set_defaults(handler=_registry_decisions)
    verify = actions.add_parser(
        "verify",
        parents=[common],
        help="check every published file against its manifest; exit 1 if any is corrupt",
    )
    verify.set_defaults(handler=_registry_verify)
