"""The same inputs build the same bytes, whichever runner builds them: a thread of the flow
(torch on every core) or a Dask worker (one torch thread) used to train `pruned` into other
bytes, and a new registry version was published with nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.compress import build_variant
from tasks.io import sha256_file
from tasks.techniques.pruned import PrunedConfig

CONFIG = PrunedConfig(
    technique="pruned", source="baseline", ratio=0.5, round_to=4, finetune_epochs=2
)


def _build(workspace: Path, out: Path) -> dict[str, str]:
    record = build_variant(
        "pruned",
        CONFIG,
        0,
        workspace / "data",
        workspace / "models" / "baseline",
        workspace / "variants" / "baseline",
        out,
    )
    assert record.status == "ok", record.reason
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}


def test_a_build_gives_the_same_bytes_whatever_threads_its_runner_left(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the flow's threads on this machine
        on_threads = _build(tiny_workspace, tmp_path / "threads")
        torch.set_num_threads(1)  # a Dask worker's
        on_dask = _build(tiny_workspace, tmp_path / "dask")
    finally:
        torch.set_num_threads(before)
    assert on_threads == on_dask
    assert any(name.endswith(".onnx") for name in on_threads)


def test_training_with_another_thread_count_does_give_other_bytes() -> None:
    """Why the build pins its threads: the same training on 1 and on 2 threads ends with other
    weights (float sums split over threads add up in another order)."""
    from torch import nn

    def train(threads: int) -> torch.Tensor:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.Flatten())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(32, 3, 40, 40, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    before = torch.get_num_threads()
    try:
        one, two = train(1), train(2)
    finally:
        torch.set_num_threads(before)
    if torch.equal(one, two):
        pytest.fail("1 and 2 threads trained identical weights: the pinning would be moot here")
