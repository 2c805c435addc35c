"""Fetch: the model and data at their DVC revs (retried on I/O trouble), or the local files
params.yaml names; either way every input is named by its sha256 for the lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.config import BaselineConfig, FetchConfig
from tasks.errors import ConfigError, FetchNotFoundError
from tasks.fetch import FetchedFile, fetch_file
from tasks.lineage import data_lineage, fetched_lineage, model_lineage
from tasks.params_model import Params


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O trouble, not a rev or path that does not exist (fail fast on those)."""
    try:
        state.result()
    except FetchNotFoundError:
        return False
    except Exception:
        return True
    return True


@task(name="fetch", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_worth_retrying)
def fetch_task(cfg: FetchConfig, path: str, rev: str, field_name: str, dest: str) -> FetchedFile:
    """Read one DVC-tracked file at a git rev."""
    return fetch_file(cfg, path, rev, field_name, Path(dest))


def fetch_inputs(
    params: Params, model_rev: str | None, data_rev: str | None, dest: Path, root: Path
) -> tuple[Params, dict[str, Any]]:
    """Fetch the model and data at their revs and point params at the fetched files; hash the
    local ones. The lineage names the sha256 of every input file either way."""
    cfg = params.fetch
    model_rev, data_rev = model_rev or cfg.model_rev, data_rev or cfg.data_rev
    if cfg.repo is None and (model_rev or data_rev):
        raise ConfigError("fetch.repo: model_rev/data_rev given but no DVC repo is configured")
    lineage: dict[str, Any] = {"repo": cfg.repo} if cfg.repo else {}
    updates: dict[str, Any] = {}
    if cfg.repo and cfg.data_path:
        fetched = fetch_task(cfg, cfg.data_path, data_rev or "HEAD", "data_rev", str(dest))
        lineage |= {"data": "npz"} | fetched_lineage("data", fetched)
        updates["data"] = params.data.model_copy(
            update={"source": "npz", "path": str(fetched.local_path)}
        )
    else:
        lineage |= data_lineage(params.data, root)
    if cfg.repo and cfg.model_path:
        fetched = fetch_task(cfg, cfg.model_path, model_rev or "HEAD", "model_rev", str(dest))
        lineage |= {"model": "pt2"} | fetched_lineage("model", fetched)
        updates["baseline"] = BaselineConfig(source="pt2", path=str(fetched.local_path))
    else:
        lineage |= model_lineage(params.baseline, root)
    return params.model_copy(update=updates), lineage
