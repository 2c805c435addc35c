"""Atomic writes: a reader never sees a half-written file or directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=json_default)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; readers (registry, runners) need it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix) to write; on success it replaces `path`,
    on failure it is removed, so a failed run leaves neither a half file nor a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure(figure: Any, path: Path) -> Path:
    """Save a matplotlib figure via a temp file beside `path`, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp)
    finally:
        plt.close(figure)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file under `directory`, as a manifest lists it: {relative path: sha256, size_bytes},
    in sorted path order."""
    directory = Path(directory)
    return {
        p.relative_to(directory).as_posix(): {
            "sha256": sha256_file(p),
            "size_bytes": p.stat().st_size,
        }
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def json_default(value: Any) -> Any:
    """`json.dump`'s `default` for what metrics and manifests hold: numpy values, datetimes, paths."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
