"""extract_zoo shows the zoo's stage (models done of n, the current model) above the per-model image bars."""

from __future__ import annotations

from pathlib import Path

from transferkit.features import extract_zoo


def test_zoo_bar_counts_models(tmp_path: Path, folder: Path, make_weights, monkeypatch) -> None:
    specs = [f"test_resnet@{make_weights(k)}" for k in range(2)]
    import transferkit.features.extract as ex

    bars = []
    real = ex._zoo_progress

    def spy(enabled, n_models):
        bars.append(real(enabled, n_models))
        return bars[-1]

    monkeypatch.setattr(ex, "_zoo_progress", spy)
    extract_zoo(specs, folder, split="train", cache_dir=tmp_path / "c", progress=True, num_workers=0,
                input_size=16)
    bar = bars[-1]
    assert bar.total == 2 and bar.n == 2 and bar.unit == "model"
    extract_zoo(specs, folder, split="train", cache_dir=tmp_path / "c", progress=False, num_workers=0,
                input_size=16)
    assert isinstance(bars[-1], ex._NoBar)
