"""lineage: sha256 of every local input that can change a result, and of the code that reads it.

The nightly flow keys its caches on these (a path or a placeholder would serve a changed file
from cache) and records them in the manifest's lineage, as it does for files fetched through DVC.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any

from tasks.code_closure import import_closure
from tasks.config import BaselineConfig, DataConfig
from tasks.errors import DataError, ModelError
from tasks.fetch import FetchedFile
from tasks.io import file_checksums, sha256_file

# The embedded default: scikit-learn's bundled digits file, read by tasks.data._load_digits.
DIGITS_PACKAGE, DIGITS_FILE = "sklearn.datasets.data", "digits.csv.gz"


def sha256_tree(root: Path) -> str:
    """sha256 over every file under `root`: its relative path and its bytes, in sorted order.

    A renamed, added, removed or edited file (an ImageFolder image moved to another class
    folder included) gives another hash. Hidden files count too: cheaper to re-run than to
    guess which files a loader reads.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a directory")
    digest = hashlib.sha256()
    for relative, file in file_checksums(root).items():
        name = relative.encode()
        # length-prefixed fields: no two different trees can give the same byte stream
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(file["size_bytes"].to_bytes(8, "big"))
        digest.update(bytes.fromhex(file["sha256"]))
    return digest.hexdigest()


def module_source_sha256(module: str, field: str) -> str:
    """sha256 of an importable module's source file (found without running it)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ModelError(f"{field}: cannot import {module!r} ({exc})") from None
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        raise ModelError(f"{field}: cannot find the source file of module {module!r}")
    return sha256_file(Path(spec.origin))


def code_sha256(*modules: str) -> str:
    """One sha256 over the source files of `modules` and of every module of theirs they import
    (tasks/code_closure.py): part of a cache key, because Prefect's TASK_SOURCE hashes only the
    task wrapper, not the tasks/ code it calls, and a hand-kept list misses a helper."""
    digest = hashlib.sha256()
    for module in import_closure(*modules):
        digest.update(module.encode() + b"\0" + module_source_sha256(module, "code").encode())
    return digest.hexdigest()


def data_lineage(cfg: DataConfig, root: Path) -> dict[str, Any]:
    """What the data came from: the npz file's or ImageFolder tree's sha256, or for the embedded
    digits the sha256 of scikit-learn's bundled file (its resizing and splitting is tasks.data
    code, keyed separately)."""
    if cfg.source == "digits":
        bundled = importlib.resources.files(DIGITS_PACKAGE) / DIGITS_FILE
        with importlib.resources.as_file(bundled) as path:
            return {"data": "digits", "data_file": DIGITS_FILE, "data_sha256": sha256_file(path)}
    path = Path(root) / str(cfg.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    if cfg.source == "idx":
        from tasks.idx import idx_files, idx_sha256

        files = {"/".join(key): path.name for key, path in idx_files(path).items()}
        return {
            "data": "idx",
            "data_path": cfg.path,
            "data_files": files,
            "data_sha256": idx_sha256(path),
            # the reader is not tasks.data: its code joins the key as an input
            "data_reader_sha256": module_source_sha256("tasks.idx", "data.source"),
        }
    if cfg.source == "imagefolder":
        return {"data": cfg.source, "data_path": cfg.path, "data_sha256": sha256_tree(path)}
    if not path.is_file():
        raise DataError(f"data.path: {path} is not a file; expected an .npz archive")
    return {"data": cfg.source, "data_path": cfg.path, "data_sha256": sha256_file(path)}


def model_lineage(cfg: BaselineConfig, root: Path) -> dict[str, Any]:
    """What the baseline came from: the .pt2 file's sha256, or the factory module's source and
    the state_dict file's sha256. A trained baseline has no model file: it is determined by the
    data, the train params, the seed and the training code (`code_sha256`), and the factory
    module's source where it trains the user's architecture."""
    if cfg.source == "train" and cfg.factory is None:
        return {"model": "train"}
    if cfg.source == "train":  # the user's architecture, trained here from scratch
        module = str(cfg.factory).partition(":")[0]
        return {
            "model": "train",
            "factory": cfg.factory,
            "factory_source_sha256": module_source_sha256(module, "baseline.factory"),
        }
    if cfg.source == "pretrained":
        return _pretrained_lineage(cfg, root)
    path = Path(root) / str(cfg.path)
    if not path.is_file():
        kind = ".pt2 file" if cfg.source == "pt2" else "state_dict file"
        raise ModelError(f"baseline.path: {path}: {kind} not found")
    if cfg.source == "pt2":
        return {"model": "pt2", "model_path": cfg.path, "model_sha256": sha256_file(path)}
    module = str(cfg.factory).partition(":")[0]
    return {
        "model": "factory",
        "factory": cfg.factory,
        "factory_source_sha256": module_source_sha256(module, "baseline.factory"),
        "weights_path": cfg.path,
        "weights_sha256": sha256_file(path),
    }


def _pretrained_lineage(cfg: BaselineConfig, root: Path) -> dict[str, Any]:
    """The ImageNet weights' checked sha256 (None at a width that starts untrained) and the
    code that builds the architecture."""
    from tasks.pretrained import ARCH_MODULES, WEIGHTS, weights_sha256

    arch = str(cfg.arch)
    lineage: dict[str, Any] = {"model": "pretrained", "arch": arch, "width": cfg.width}
    if cfg.width == 1.0:
        lineage["weights_file"] = WEIGHTS[arch].file
        lineage["weights_sha256"] = weights_sha256(arch, Path(root) / cfg.weights_dir)
    lineage["arch_code_sha256"] = code_sha256(*ARCH_MODULES[arch])
    return lineage


def fetched_lineage(kind: str, fetched: FetchedFile) -> dict[str, str]:
    """What a file fetched through DVC came from: its path, rev, commit and sha256."""
    return {
        f"{kind}_path": fetched.path,
        f"{kind}_rev": fetched.rev,
        f"{kind}_commit": fetched.commit,
        f"{kind}_sha256": fetched.sha256,
    }
