"""tasks.data: sources, deterministic stratified splits, round trips and one-line DataErrors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.config import DataConfig, SplitFractions
from tasks.data import (
    SPLITS,
    PreparedData,
    Preprocess,
    load_preprocess,
    load_split,
    prepare,
    write_prepared,
)
from tasks.errors import DataError

DIGITS_TOTAL = 1797


def _digits_cfg(**extra: object) -> DataConfig:
    return DataConfig(source="digits", image_size=16, **extra)


@pytest.fixture(scope="module")
def digits() -> PreparedData:
    return prepare(_digits_cfg(), seed=0)


def _error(cfg: DataConfig, root: Path, seed: int = 0) -> str:
    with pytest.raises(DataError) as info:
        prepare(cfg, seed, root=root)
    message = str(info.value)
    assert message.strip(), "error message is empty"
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    return message


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _npz_cfg(name: str = "d.npz", **extra: object) -> DataConfig:
    return DataConfig(source="npz", path=name, **{"image_size": 16, **extra})


def _balanced_labels(per_class: int, classes: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class).astype(np.int64)


def _float_images(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, size, size), dtype=np.float32)


# ---- the embedded digits ----------------------------------------------------------------------


def test_digits_give_the_four_splits_in_nchw_float32(digits: PreparedData) -> None:
    assert tuple(digits.splits) == SPLITS == ("train", "calib", "val", "test")
    for name, split in digits.splits.items():
        assert split.x.dtype == np.float32, name
        assert split.y.dtype == np.int64, name
        assert split.x.ndim == 4 and split.x.shape[1:] == (1, 16, 16), name
        assert split.x.shape[0] == split.y.shape[0] == len(split), name
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0, name
        assert float(split.x.max()) > 0.5, f"{name}: pixels look blank"


def test_digits_sizes_add_up_and_follow_the_fractions(digits: PreparedData) -> None:
    sizes = {name: len(split) for name, split in digits.splits.items()}
    assert sum(sizes.values()) == DIGITS_TOTAL
    for name, fraction in SplitFractions().model_dump().items():
        assert abs(sizes[name] / DIGITS_TOTAL - fraction) < 0.01, (name, sizes)


def test_digits_every_class_in_every_split(digits: PreparedData) -> None:
    for name, split in digits.splits.items():
        assert set(np.unique(split.y).tolist()) == set(range(10)), name


def test_digits_splits_do_not_share_images(digits: PreparedData) -> None:
    seen: dict[bytes, str] = {}
    collisions = 0
    for name, split in digits.splits.items():
        for row in split.x:
            key = row.tobytes()
            if key in seen and seen[key] != name:
                collisions += 1
            seen[key] = name
    # digits has a handful of pixel-identical images; a leaking split would give hundreds
    assert collisions < 10


def test_digits_preprocess_record(digits: PreparedData) -> None:
    pre = digits.preprocess
    assert pre.num_classes == 10
    assert pre.channels == 1
    assert pre.image_size == 16
    assert pre.input_shape == (1, 16, 16)
    assert pre.class_names == [str(d) for d in range(10)]
    train_x = digits.splits["train"].x
    assert pre.mean == [pytest.approx(float(train_x.mean()), abs=1e-5)]
    assert pre.std == [pytest.approx(float(train_x.std()), abs=1e-5)]


def test_digits_in_three_channels_repeat_the_gray_plane() -> None:
    prepared = prepare(_digits_cfg(channels=3), seed=0)
    x = prepared.splits["val"].x
    assert x.shape[1:] == (3, 16, 16)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    assert len(prepared.preprocess.mean) == 3


def test_same_seed_gives_byte_identical_splits(digits: PreparedData) -> None:
    again = prepare(_digits_cfg(), seed=0)
    for name in SPLITS:
        assert again.splits[name].x.tobytes() == digits.splits[name].x.tobytes(), name
        assert again.splits[name].y.tobytes() == digits.splits[name].y.tobytes(), name
    assert again.preprocess == digits.preprocess


def test_different_seed_gives_different_splits(digits: PreparedData) -> None:
    other = prepare(_digits_cfg(), seed=1)
    for name in SPLITS:
        # stratified by class: the sizes stay, the members change
        assert len(other.splits[name]) == len(digits.splits[name]), name
        assert other.splits[name].x.tobytes() != digits.splits[name].x.tobytes(), name


def test_configured_mean_and_std_are_used_verbatim() -> None:
    prepared = prepare(_digits_cfg(mean=[0.25], std=[0.5]), seed=0)
    assert prepared.preprocess.mean == [0.25]
    assert prepared.preprocess.std == [0.5]


# ---- writing and reading back -----------------------------------------------------------------


def test_write_prepared_round_trips(digits: PreparedData, tmp_path: Path) -> None:
    out = tmp_path / "data"
    write_prepared(digits, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "calib.npz",
        "preprocess.json",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "staging dir left behind"
    for name in SPLITS:
        split = load_split(out, name)
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        np.testing.assert_array_equal(split.x, digits.splits[name].x)
        np.testing.assert_array_equal(split.y, digits.splits[name].y)
    loaded = load_preprocess(out)
    assert loaded == digits.preprocess
    assert loaded.pixel_range == (0.0, 1.0)
    assert json.loads((out / "preprocess.json").read_text())["layout"] == "NCHW"


def test_write_prepared_replaces_the_whole_directory(digits: PreparedData, tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.npz").write_bytes(b"old")
    write_prepared(digits, out)
    assert not (out / "stale.npz").exists()
    assert (out / "train.npz").exists()


def test_load_split_and_preprocess_missing_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.npz: split not found; run the 'prepare' stage"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match=r"preprocess\.json: not found; run the 'prepare' stage"):
        load_preprocess(tmp_path)


def test_normalize_uses_mean_and_std() -> None:
    pre = Preprocess(image_size=2, channels=1, num_classes=2, mean=[0.5], std=[0.25])
    x = np.array([[[[0.0, 0.5], [1.0, 0.75]]]], dtype=np.float32)
    out = pre.normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[[-2.0, 0.0], [2.0, 1.0]]]])


def test_normalize_is_per_channel() -> None:
    pre = Preprocess(
        image_size=1, channels=3, num_classes=2, mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 2.0]
    )
    x = np.ones((2, 3, 1, 1), dtype=np.float64)
    out = pre.normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0, 0], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


# ---- user .npz --------------------------------------------------------------------------------


def test_npz_uint8_is_scaled_and_resized(tmp_path: Path) -> None:
    y = _balanced_labels(10, 3)
    x = np.zeros((len(y), 1, 8, 8), dtype=np.uint8)
    x[y == 1] = 255  # class 1 white, class 0 black, class 2 mid gray
    x[y == 2] = 51
    _write_npz(tmp_path / "d.npz", x=x, y=y)
    prepared = prepare(_npz_cfg(), seed=0, root=tmp_path)
    assert prepared.preprocess.num_classes == 3
    assert prepared.preprocess.class_names is None
    total = 0
    for name, split in prepared.splits.items():
        total += len(split)
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (1, 16, 16), name
        assert set(np.unique(split.y).tolist()) == {0, 1, 2}, name
        for image, label in zip(split.x, split.y, strict=True):
            expected = {0: 0.0, 1: 1.0, 2: 51 / 255}[int(label)]
            np.testing.assert_allclose(image, expected, atol=1e-6)
    assert total == 30


def test_npz_float32_keeps_each_pixel_with_its_label(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    # every sample a constant image whose value encodes its label and its index
    values = (np.arange(len(y)) + 1) / 100 + y * 0.5
    x = np.broadcast_to(values[:, None, None, None], (len(y), 1, 16, 16)).astype(np.float32)
    _write_npz(tmp_path / "d.npz", x=x, y=y.astype(np.int32))
    prepared = prepare(_npz_cfg(), seed=3, root=tmp_path)
    seen = []
    for split in prepared.splits.values():
        assert split.y.dtype == np.int64
        for image, label in zip(split.x, split.y, strict=True):
            value = float(image[0, 0, 0])
            np.testing.assert_array_equal(image, np.float32(value))  # untouched: no resize
            assert int(value >= 0.5) == label
            seen.append(value)
    assert sorted(seen) == pytest.approx(sorted(values.astype(np.float32).tolist()))


def test_npz_float32_of_another_size_is_resized(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y), size=20), y=y)
    prepared = prepare(_npz_cfg(), seed=0, root=tmp_path)
    for split in prepared.splits.values():
        assert split.x.shape[1:] == (1, 16, 16)
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0


def test_npz_num_classes_may_exceed_the_labels_seen(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    prepared = prepare(_npz_cfg(num_classes=5), seed=0, root=tmp_path)
    assert prepared.preprocess.num_classes == 5


def test_npz_class_names_array_names_the_labels_in_order(tmp_path: Path) -> None:
    y = _balanced_labels(10, 3)
    names = np.array(["cat", "dog", "owl"])
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y, class_names=names)
    prepared = prepare(_npz_cfg(), seed=0, root=tmp_path)
    assert prepared.preprocess.class_names == ["cat", "dog", "owl"]
    # params name them too: params win (e.g. a data file you cannot change)
    prepared = prepare(_npz_cfg(class_names=["a", "b", "c"]), seed=0, root=tmp_path)
    assert prepared.preprocess.class_names == ["a", "b", "c"]


def test_npz_class_names_must_name_every_class(tmp_path: Path) -> None:
    y = _balanced_labels(10, 3)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y, class_names=np.array(["a", "b"]))
    assert "d.npz: class_names: 2 name(s) for 3 classes" in _error(_npz_cfg(), tmp_path)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    message = _error(_npz_cfg(class_names=["a", "b", "c", "d"], num_classes=3), tmp_path)
    assert message == "data.class_names: 4 name(s) for 3 classes; expected one each"


def test_npz_records_what_a_consumer_needs(tmp_path: Path) -> None:
    from tasks.io import sha256_file

    y = _balanced_labels(10, 3)
    path = _write_npz(tmp_path / "d.npz", x=_float_images(len(y), channels=3), y=y)
    prepared = prepare(_npz_cfg(channels=3), seed=0, root=tmp_path)
    pre = prepared.preprocess
    assert (pre.resize, pre.channel_order, pre.data_source) == ("bilinear", "RGB", "npz")
    assert pre.data_sha256 == sha256_file(path)
    assert pre.split_sizes == {name: len(split) for name, split in prepared.splits.items()}


# ---- ImageFolder ------------------------------------------------------------------------------


def _png(path: Path, value: int, size: int = 6, mode: str = "L") -> None:
    color: int | tuple[int, int, int] = value if mode == "L" else (value, value, value)
    Image.new(mode, (size, size), color).save(path)


def _imagefolder(root: Path, classes: dict[str, int], per_class: int = 12) -> Path:
    for name, value in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            _png(folder / f"img{i:02d}.png", value, size=6 + i % 3)
    return root


def test_imagefolder_classes_in_sorted_folder_order(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "imgs", {"zebra": 255, "apple": 0, "mango": 102})
    (root / "apple" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()  # not a class
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=16)
    prepared = prepare(cfg, seed=0, root=tmp_path)
    assert prepared.preprocess.class_names == ["apple", "mango", "zebra"]
    assert prepared.preprocess.num_classes == 3
    total = 0
    expected = {0: 0.0, 1: 102 / 255, 2: 1.0}  # label index follows the sorted names
    for name, split in prepared.splits.items():
        total += len(split)
        assert split.x.shape[1:] == (1, 16, 16), name
        assert set(np.unique(split.y).tolist()) == {0, 1, 2}, name
        for image, label in zip(split.x, split.y, strict=True):
            np.testing.assert_allclose(image, expected[int(label)], atol=1e-6)
    assert total == 36


def test_imagefolder_in_rgb(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for name, value in {"a": 10, "b": 200}.items():
        (root / name).mkdir(parents=True)
        for i in range(10):
            _png(root / name / f"{i}.png", value, mode="RGB")
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=8, channels=3)
    prepared = prepare(cfg, seed=0, root=tmp_path)
    assert prepared.splits["train"].x.shape[1:] == (3, 8, 8)
    assert len(prepared.preprocess.mean) == 3


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_png_is_scaled_by_its_own_range_not_clipped(tmp_path: Path, channels: int) -> None:
    """Pillow's convert("L") clipped every 16-bit value above 255: 99.7 % of pixels became 1.0
    and the run published a model trained on white squares."""
    from PIL import Image

    root = tmp_path / "imgs"
    levels = {"dark": 10_000, "light": 50_000}  # of 65535
    for name, value in levels.items():
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((9, 9), value + i, dtype=np.uint16)).save(
                root / name / f"{i}.png"
            )
    assert Image.open(root / "dark" / "0.png").mode == "I;16"
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=8, channels=channels)
    prepared = prepare(cfg, seed=0, root=tmp_path)
    for split in prepared.splits.values():
        assert split.x.shape[1] == channels
        for image, label in zip(split.x, split.y, strict=True):
            value = levels[prepared.preprocess.class_names[int(label)]]
            np.testing.assert_allclose(image, value / 65535, atol=20 / 65535)


# ---- errors: one line, naming the file or field -----------------------------------------------


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (np.nan, "x has 1 NaN/Inf pixel value(s)"),
        (np.inf, "x has 1 NaN/Inf pixel value(s)"),
        (-np.inf, "x has 1 NaN/Inf pixel value(s)"),
        (1.5, "float32 pixels span [0, 1.5]; expected [0, 1]"),
        (-0.25, "float32 pixels span [-0.25, 1]; expected [0, 1]"),
    ],
    ids=["nan", "inf", "-inf", "above-1", "below-0"],
)
def test_bad_float_pixels(tmp_path: Path, bad: float, detail: str) -> None:
    y = _balanced_labels(10, 2)
    x = _float_images(len(y))
    x[0, 0, 0, 0] = 0.0
    x[1, 0, 0, 0] = 1.0
    x[3, 0, 5, 5] = bad
    _write_npz(tmp_path / "d.npz", x=x, y=y)
    message = _error(_npz_cfg(), tmp_path)
    assert str(tmp_path / "d.npz") in message
    assert detail in message


def test_labels_above_num_classes(tmp_path: Path) -> None:
    y = _balanced_labels(10, 4)  # labels 0..3
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    message = _error(_npz_cfg(num_classes=3), tmp_path)
    assert message == "d.npz: labels span [0, 3]; expected 0..2 (data.num_classes=3)"


def test_negative_labels(tmp_path: Path) -> None:
    y = _balanced_labels(10, 3) - 1  # labels -1..1
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    message = _error(_npz_cfg(), tmp_path)
    assert message.startswith("d.npz: labels span [-1, 1]; expected 0..")
    assert "data.num_classes" in message


def test_only_one_class(tmp_path: Path) -> None:
    y = np.zeros(20, dtype=np.int64)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    message = _error(_npz_cfg(), tmp_path)
    assert message == "d.npz: only 1 class present (class 0); expected at least 2"


def test_split_that_ends_up_empty(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    splits = {"train": 0.68, "calib": 0.02, "val": 0.1, "test": 0.2}
    message = _error(_npz_cfg(splits=splits), tmp_path)
    assert message.startswith("data.splits.calib: split is empty (20 samples)"), message
    assert "raise its fraction or provide more data" in message


def test_npz_missing_y(tmp_path: Path) -> None:
    _write_npz(tmp_path / "d.npz", x=_float_images(20))
    message = _error(_npz_cfg(), tmp_path)
    assert message == f"{tmp_path / 'd.npz'}: missing array(s) ['y']; expected 'x' and 'y'"


def test_npz_wrong_channel_count(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y), channels=3), y=y)
    message = _error(_npz_cfg(), tmp_path)
    assert str(tmp_path / "d.npz") in message
    assert "x has shape (20, 3, 16, 16); expected (N, 1, H, W) (data.channels)" in message


def test_npz_labels_length_mismatch(tmp_path: Path) -> None:
    _write_npz(tmp_path / "d.npz", x=_float_images(20), y=_balanced_labels(5, 2))
    message = _error(_npz_cfg(), tmp_path)
    assert "y has shape (10,); expected (20,)" in message


def test_npz_float_labels(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2).astype(np.float32)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    assert "y has dtype float32; expected integer class labels" in _error(_npz_cfg(), tmp_path)


def test_npz_float64_pixels(tmp_path: Path) -> None:
    y = _balanced_labels(10, 2)
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)).astype(np.float64), y=y)
    assert "x has dtype float64; expected uint8 or float32" in _error(_npz_cfg(), tmp_path)


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(np.random.default_rng(0).bytes(512))
    message = _error(_npz_cfg(), tmp_path)
    assert message.startswith(f"{tmp_path / 'd.npz'}: not a readable .npz file ("), message


def test_missing_data_path(tmp_path: Path) -> None:
    message = _error(_npz_cfg("absent.npz"), tmp_path)
    assert message == f"data.path: {tmp_path / 'absent.npz'} does not exist"


def test_imagefolder_with_one_class_folder(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "imgs", {"only": 128}, per_class=5)
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=16)
    message = _error(cfg, tmp_path)
    assert message == f"{tmp_path / 'imgs'}: found 1 class folder(s); expected at least 2"


def test_imagefolder_without_images(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        (tmp_path / "imgs" / name / "readme.txt").write_text("x")
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=16)
    assert "no .png/.jpg/.jpeg images" in _error(cfg, tmp_path)


def test_imagefolder_with_an_empty_class_folder_names_it(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "imgs", {"cat": 0, "dog": 255}, per_class=5)
    (root / "owl").mkdir()
    (root / "owl" / "notes.txt").write_text("images to come")
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=16)
    message = _error(cfg, tmp_path)
    assert message == f"{root / 'owl'}: class folder has no .png/.jpg/.jpeg images", message


def _gate_message(prepared: PreparedData) -> str:
    from tasks.config import DataGates
    from tasks.data_checks import assert_data_valid, check_data
    from tasks.errors import DataValidationError

    result = check_data(prepared.splits, prepared.preprocess, DataGates())
    with pytest.raises(DataValidationError) as info:
        assert_data_valid(result)
    return str(info.value)


def test_too_few_samples_names_the_class_folder(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "imgs", {"cat": 0, "dog": 255}, per_class=30)
    _imagefolder(root, {"owl": 128}, per_class=5)  # 5 images: about 3 in train, under 5
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=8)
    message = _gate_message(prepare(cfg, seed=0, root=tmp_path))
    assert "train samples per class >= min_samples_per_class" in message
    assert "class 2 'owl' has 3 in train" in message, message
    assert "'cat'" not in message and "'dog'" not in message, message


def test_class_imbalance_names_the_largest_and_smallest_class(tmp_path: Path) -> None:
    y = np.concatenate([np.repeat([0, 1], 200), np.full(12, 2)])
    _write_npz(tmp_path / "d.npz", x=_float_images(len(y)), y=y)
    message = _gate_message(prepare(_npz_cfg(), seed=0, root=tmp_path))
    assert "train class imbalance <= max_class_imbalance" in message, message
    assert "largest class 0 has 120, smallest class 2 has 7 in train" in message, message


def test_imagefolder_with_an_unreadable_image(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "imgs", {"a": 0, "b": 255}, per_class=5)
    broken = root / "b" / "broken.png"
    broken.write_bytes(b"\x89PNG not really" + np.random.default_rng(0).bytes(64))
    cfg = DataConfig(source="imagefolder", path="imgs", image_size=16)
    message = _error(cfg, tmp_path)
    assert message.startswith(f"{broken}: not a readable image ("), message


@pytest.mark.parametrize("kind", ["npy-named-npz", "object-arrays"])
def test_npz_of_the_wrong_kind_is_a_data_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "d.npz"
    if kind == "npy-named-npz":
        with open(path, "wb") as handle:
            np.save(handle, _float_images(20))
    else:
        x = np.empty(20, dtype=object)
        _write_npz(path, x=x, y=_balanced_labels(10, 2))
    message = _error(_npz_cfg(), tmp_path)
    assert str(path) in message


def test_empty_float32_npz_says_no_samples(tmp_path: Path) -> None:
    _write_npz(
        tmp_path / "d.npz",
        x=np.zeros((0, 1, 16, 16), dtype=np.float32),
        y=np.zeros(0, dtype=np.int64),
    )
    assert "no samples" in _error(_npz_cfg(), tmp_path)


def test_empty_uint8_npz_says_no_samples(tmp_path: Path) -> None:
    _write_npz(
        tmp_path / "d.npz", x=np.zeros((0, 1, 16, 16), dtype=np.uint8), y=np.zeros(0, np.int64)
    )
    assert _error(_npz_cfg(), tmp_path) == "d.npz: no samples"
