"""Data: load the embedded digits, a user .npz, an ImageFolder tree or IDX files; split and record
preprocessing.

Splits are stored as float32 pixels in [0, 1], layout NCHW, at the configured size. Normalisation
(mean/std) is recorded in preprocess.json and applied by every runtime wrapper, so a deployed
artifact carries what it needs to reproduce its inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.arrays import Array
from tasks.config import DataConfig
from tasks.errors import DataError
from tasks.io import atomic_dir, read_json, write_json
from tasks.lineage import data_lineage

# ImageNet's RGB statistics: what torchvision-style pretrained backbones were trained with
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

SPLITS: tuple[str, ...] = ("train", "calib", "val", "test")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
RESIZE = "bilinear"  # how every source is brought to image_size x image_size (PIL)


@dataclass(frozen=True)
class Split:
    x: Array  # float32 (N, C, H, W) in [0, 1]
    y: Array  # int64 (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Preprocess:
    """Everything a runtime needs to turn [0, 1] pixels into model inputs."""

    image_size: int
    channels: int
    num_classes: int
    mean: list[float]
    std: list[float]
    layout: str = "NCHW"
    pixel_range: tuple[float, float] = (0.0, 1.0)
    class_names: list[str] | None = None  # in label order; None: the npz named none
    resize: str = RESIZE
    channel_order: str = "grayscale"  # RGB for 3 channels
    # what the data was: its source, the sha256 of a local file/tree, and each split's size
    data_source: str = "digits"
    data_sha256: str | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)

    def normalize(self, x: Array) -> Array:
        """[0, 1] NCHW pixels → normalised float32 NCHW model input."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((x.astype(np.float32) - mean) / std).astype(np.float32)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class PreparedData:
    splits: dict[str, Split]
    preprocess: Preprocess


def prepare(cfg: DataConfig, seed: int, root: Path = Path(".")) -> PreparedData:
    """Load the configured source, check it, split it deterministically and fix normalisation."""
    if cfg.source == "idx":
        splits, class_names = _idx_splits(cfg, root / str(cfg.path), seed)
        y = np.concatenate([split.y for split in splits.values()])
        num_classes = _check_labels(cfg, y, class_names)
    else:
        x, y, class_names = _load_source(cfg, root)
        num_classes = _check_labels(cfg, y, class_names)
        _check_pixels(x, cfg.path or "digits")
        splits = split_stratified(x, y, cfg.splits.model_dump(), seed)
    _check_class_names(cfg, class_names, num_classes)
    mean, std = _normalisation(cfg, splits["train"].x)
    preprocess = Preprocess(
        image_size=cfg.image_size,
        channels=cfg.channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        class_names=class_names,
        channel_order="RGB" if cfg.channels == 3 else "grayscale",
        data_source=cfg.source,
        data_sha256=_source_sha256(cfg, root),
        split_sizes={name: len(split) for name, split in splits.items()},
    )
    return PreparedData(splits=splits, preprocess=preprocess)


def split_stratified(
    x: Array,
    y: Array,
    fractions: dict[str, float],
    seed: int,
    names: tuple[str, ...] = SPLITS,
) -> dict[str, Split]:
    """Per-class shuffled split into `names` by their fractions (renormalised to add up to 1);
    same seed, same split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Array]] = {name: [] for name in names}
    shares = np.asarray([fractions[name] for name in names])
    cumulative = np.cumsum(shares / shares.sum())
    for label in np.unique(y):
        indices = rng.permutation(np.flatnonzero(y == label))
        cuts = np.round(cumulative * len(indices)).astype(int)
        for name, start, stop in zip(names, np.r_[0, cuts[:-1]], cuts, strict=True):
            parts[name].append(indices[start:stop])
    splits = {}
    for name in names:
        chosen = np.sort(np.concatenate(parts[name]))
        if chosen.size == 0:
            raise DataError(
                f"data.splits.{name}: split is empty ({len(y)} samples); "
                "raise its fraction or provide more data"
            )
        splits[name] = Split(x=x[chosen], y=y[chosen])
    return splits


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    """Write <split>.npz and preprocess.json into out_dir atomically."""
    with atomic_dir(out_dir) as staging:
        for name, split in prepared.splits.items():
            np.savez(staging / f"{name}.npz", x=split.x, y=split.y)
        write_json(staging / "preprocess.json", asdict(prepared.preprocess))


def load_split(data_dir: Path, name: str) -> Split:
    path = Path(data_dir) / f"{name}.npz"
    if not path.exists():
        raise DataError(f"{path}: split not found; run the 'prepare' stage first")
    with np.load(path) as archive:
        return Split(x=archive["x"].astype(np.float32), y=archive["y"].astype(np.int64))


def load_preprocess(data_dir: Path) -> Preprocess:
    path = Path(data_dir) / "preprocess.json"
    if not path.exists():
        raise DataError(f"{path}: not found; run the 'prepare' stage first")
    raw = read_json(path)
    raw["pixel_range"] = tuple(raw["pixel_range"])
    return Preprocess(**raw)


# ---- sources -------------------------------------------------------------------------------


def _load_source(cfg: DataConfig, root: Path) -> tuple[Array, Array, list[str] | None]:
    if cfg.source == "digits":
        return (*_load_digits(cfg), [str(d) for d in range(10)])
    path = root / str(cfg.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    if cfg.source == "npz":
        return _load_npz(path, cfg)
    return _load_imagefolder(path, cfg)


def _source_sha256(cfg: DataConfig, root: Path) -> str | None:
    """sha256 of a local data source (the npz file, or the ImageFolder tree), as the flow's
    lineage records it; None for the embedded digits."""
    if cfg.source == "digits":
        return None
    return str(data_lineage(cfg, root)["data_sha256"])


def _load_digits(cfg: DataConfig) -> tuple[Array, Array]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x = _resize(images, cfg.image_size)
    if cfg.channels == 3:
        x = np.repeat(x, 3, axis=1)
    return x, digits.target.astype(np.int64)


def _idx_splits(
    cfg: DataConfig, directory: Path, seed: int
) -> tuple[dict[str, Split], list[str] | None]:
    """IDX files: train/calib/val split from the official train file by data.splits (its test
    fraction unused), test = the official t10k file, so test accuracy is the published one."""
    from tasks.idx import read_idx_split

    train_x, train_y = _subsample(*read_idx_split(directory, "train"), cfg.max_samples, seed)
    test_x, test_y = _subsample(*read_idx_split(directory, "t10k"), cfg.max_samples, seed)
    fractions = cfg.splits.model_dump()
    splits = split_stratified(
        _idx_pixels(train_x, cfg), train_y, fractions, seed, names=("train", "calib", "val")
    )
    splits["test"] = Split(x=_idx_pixels(test_x, cfg), y=test_y)
    names = list(cfg.class_names) if cfg.class_names is not None else None
    return splits, names


def _subsample(images: Array, labels: Array, limit: int | None, seed: int) -> tuple[Array, Array]:
    """At most `limit` samples, classes taken in turn (a handful still holds every class)."""
    if limit is None or limit >= len(labels):
        return images, labels
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # each sample's position within its class
    for label in np.unique(labels):
        members = order[labels[order] == label]
        rank[members] = np.arange(len(members))
    chosen = np.sort(order[np.lexsort((np.arange(len(order)), rank[order]))][:limit])
    return images[chosen], labels[chosen]


def _idx_pixels(images: Array, cfg: DataConfig) -> Array:
    """uint8 (N, H, W) → float32 (N, C, size, size) in [0, 1]; 3 channels repeat the grey one."""
    x = images.astype(np.float32)[:, None] / 255.0
    if x.shape[2:] != (cfg.image_size, cfg.image_size):
        x = _resize(x, cfg.image_size)
    return np.repeat(x, 3, axis=1) if cfg.channels == 3 else x


def _load_npz(path: Path, cfg: DataConfig) -> tuple[Array, Array, list[str] | None]:
    try:
        archive = np.load(path)
    except Exception as exc:  # numpy raises several types for a corrupt archive
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array; expected an .npz archive with 'x' and 'y'")
    with archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise DataError(f"{path}: missing array(s) {sorted(missing)}; expected 'x' and 'y'")
        try:
            x, y = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
        except ValueError:  # object arrays need pickle, which we never enable
            raise DataError(
                f"{path}: x/y/class_names are object arrays; expected numeric x, y and a "
                "string class_names (np.array([...], dtype=str))"
            ) from None
    if x.ndim != 4 or x.shape[1] != cfg.channels:
        raise DataError(
            f"{path}: x has shape {x.shape}; expected (N, {cfg.channels}, H, W) (data.channels)"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape}; expected ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has dtype {y.dtype}; expected integer class labels")
    if x.dtype == np.uint8:
        pixels = x.astype(np.float32) / 255.0
    elif x.dtype == np.float32:
        _check_pixels(x, str(path))
        pixels = x
    else:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 or float32")
    if pixels.shape[2:] != (cfg.image_size, cfg.image_size):
        pixels = _resize(pixels, cfg.image_size)
    return pixels, y.astype(np.int64), _npz_class_names(path, names, cfg)


def _npz_class_names(path: Path, names: Array | None, cfg: DataConfig) -> list[str] | None:
    """data.class_names, else the npz's own class_names array, else None."""
    if cfg.class_names is not None:
        return list(cfg.class_names)
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{path}: class_names has shape {names.shape} and dtype {names.dtype}; "
            "expected a 1-D array of strings"
        )
    return [str(name) for name in names.tolist()]


def _load_imagefolder(path: Path, cfg: DataConfig) -> tuple[Array, Array, list[str]]:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{path}: found {len(class_dirs)} class folder(s); expected at least 2")
    mode = "L" if cfg.channels == 1 else "RGB"
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = [f for f in sorted(class_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:  # a class the model must predict but never sees
            raise DataError(f"{class_dir}: class folder has no .png/.jpg/.jpeg images")
        for file in files:
            try:
                with Image.open(file) as img:
                    images.append(_image_pixels(img, mode, cfg.image_size, file))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{file}: not a readable image ({type(exc).__name__})") from None
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs]


def _image_pixels(img: Any, mode: str, size: int, file: Path) -> Array:
    """One image as (C, H, W) float32 in [0, 1], resized. A 16-bit image is scaled by its own
    range (65535), not converted to 8 bits: Pillow's convert("L") clips every value above 255,
    and a 16-bit grey PNG became 99.7 % white."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        if grey.max(initial=0.0) > 1.0:
            raise DataError(f"{file}: 32-bit integer pixels above 65535; expected 8 or 16 bits")
        plane = np.asarray(
            Image.fromarray(grey, mode="F").resize((size, size), Image.Resampling.BILINEAR)
        )
        channels = 1 if mode == "L" else 3
        return np.repeat(np.clip(plane, 0.0, 1.0)[None], channels, axis=0).astype(np.float32)
    if img.mode == "F":
        raise DataError(f"{file}: floating-point pixels; expected 8- or 16-bit integer images")
    resized = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _resize(x: Array, size: int) -> Array:
    from PIL import Image

    out = np.empty((*x.shape[:2], size, size), dtype=np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = Image.fromarray(x[i, c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)


# ---- checks --------------------------------------------------------------------------------


def _check_pixels(x: Array, origin: str) -> None:
    if x.size == 0:
        return  # reported as "no samples" with the labels
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        raise DataError(f"{origin}: x has {bad} NaN/Inf pixel value(s); expected finite pixels")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{origin}: float32 pixels span [{low:.3g}, {high:.3g}]; expected [0, 1]")


def _check_labels(cfg: DataConfig, y: Array, class_names: list[str] | None) -> int:
    origin = cfg.path or "digits"
    if len(y) == 0:
        raise DataError(f"{origin}: no samples")
    # ImageFolder's classes are its folders; an npz's names are checked against its labels
    inferred = len(class_names) if class_names and cfg.source != "npz" else int(y.max()) + 1
    num_classes = cfg.num_classes or inferred
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{origin}: labels span [{low}, {high}]; expected 0..{num_classes - 1} "
            f"(data.num_classes={num_classes})"
        )
    present = np.unique(y)
    if present.size < 2:
        name = f" '{class_names[present[0]]}'" if class_names else ""
        raise DataError(
            f"{origin}: only 1 class present (class {present[0]}{name}); expected at least 2"
        )
    return num_classes


def _check_class_names(cfg: DataConfig, names: list[str] | None, num_classes: int) -> None:
    if names is not None and len(names) != num_classes:
        where = "data.class_names" if cfg.class_names is not None else f"{cfg.path}: class_names"
        raise DataError(
            f"{where}: {len(names)} name(s) for {num_classes} classes; expected one each"
        )


def _normalisation(cfg: DataConfig, train_x: Array) -> tuple[list[float], list[float]]:
    if cfg.normalize == "none":
        return [0.0] * cfg.channels, [1.0] * cfg.channels
    if cfg.normalize == "imagenet":  # one grey channel: the average of ImageNet's three
        if cfg.channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return [round(float(np.mean(IMAGENET_MEAN)), 6)], [round(float(np.mean(IMAGENET_STD)), 6)]
    mean = cfg.mean or [float(v) for v in train_x.mean(axis=(0, 2, 3))]
    std = cfg.std or [max(float(v), 1e-3) for v in train_x.std(axis=(0, 2, 3))]
    return [round(v, 6) for v in mean], [round(v, 6) for v in std]
