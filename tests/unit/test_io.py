"""Atomic writes: a failure leaves the previous file, or nothing, never a half or temp file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.io import atomic_file, save_figure


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    target.write_text("last good\n")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "last good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_a_figure_that_fails_to_save_leaves_nothing(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, _ = plt.subplots()

    def savefig_until_the_disk_fills(path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"\x89PNG half a plot")
        raise OSError("No space left on device")

    figure.savefig = savefig_until_the_disk_fills  # type: ignore[method-assign]
    with pytest.raises(OSError):
        save_figure(figure, tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.get_fignums()  # closed even so


def test_a_saved_figure_is_a_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, _ = plt.subplots()
    path = save_figure(figure, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
