"""fetch: read the baseline model and the data at a git rev from a DVC repo (tag, branch or commit).

The same rev gives byte-identical files; a rev that does not exist fails before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.config import FetchConfig
from tasks.errors import FetchError, FetchNotFoundError, ModelPressError, brief


@dataclass(frozen=True)
class FetchedFile:
    repo: str
    path: str  # inside the repo
    rev: str  # as asked (tag, branch or commit)
    commit: str  # the git commit it resolved to
    local_path: Path
    sha256: str
    size_bytes: int


def resolve_rev(repo: str, rev: str, field: str) -> str:
    """The commit `rev` names in `repo`, or a FetchError naming the field."""
    local = Path(repo)
    if local.exists():
        done = subprocess.run(
            ["git", "-C", str(local), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise FetchNotFoundError(f"{field}: rev {rev!r} does not exist in {repo}")
        return done.stdout.strip()
    done = subprocess.run(
        ["git", "ls-remote", repo, rev], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        # git's own first "fatal:" line says why; its last line is advice ("and the repository
        # exists."), which printed as a Python list said nothing
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("fatal:")), lines[0] if lines else "")
        raise FetchError(f"fetch.repo: cannot reach {repo} ({why.removeprefix('fatal: ')})")
    if not done.stdout.strip():
        if len(rev) >= 7 and all(ch in "0123456789abcdef" for ch in rev.lower()):
            return rev  # a commit hash: ls-remote lists only refs
        raise FetchNotFoundError(f"{field}: rev {rev!r} does not exist in {repo}")
    return done.stdout.split()[0]


def fetch_file(cfg: FetchConfig, path: str, rev: str, field: str, dest_dir: Path) -> FetchedFile:
    """Stream `path` at `rev` through DVC into dest_dir (content-addressed name), atomically."""
    import dvc.api

    assert cfg.repo is not None
    commit = resolve_rev(cfg.repo, rev, field)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".fetch-", suffix=".tmp")
    digest, size = hashlib.sha256(), 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            dvc.api.open(
                path,
                repo=cfg.repo,
                rev=commit,
                mode="rb",
                remote=cfg.remote,
                remote_config=cfg.remote_config or None,
            ) as source,
        ):
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        sha256 = digest.hexdigest()
        target = dest_dir / f"{sha256[:16]}-{Path(path).name}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except FileNotFoundError:
        raise FetchNotFoundError(f"{field}: {path} not found in {cfg.repo} at {rev}") from None
    except ModelPressError:
        raise
    except Exception as exc:  # DVC raises many types: missing remote data, bad remote config
        raise FetchError(
            f"{field}: cannot read {path} at {rev} from {cfg.repo} ({brief(exc)})"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return FetchedFile(cfg.repo, path, rev, commit, target, sha256, size)
