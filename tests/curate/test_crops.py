"""Crop grids and the crop dataset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transferkit.curate.crops import CropDataset, CropGrid
from transferkit.data import open_dataset


def test_default_grids() -> None:
    assert len(CropGrid()) == 1
    g = CropGrid((1.0, 0.5))
    assert len(g) == 5 and g.describe() == {"scales": [1.0, 0.5], "grid": [1, 2], "crops_per_image": 5}
    boxes = [s.box(100, 60) for s in g.slots()]
    assert boxes[0] == (0, 0, 100, 60)
    assert sorted(boxes[1:]) == [(0, 0, 50, 30), (0, 30, 50, 60), (50, 0, 100, 30), (50, 30, 100, 60)]
    assert len(CropGrid((1.0, 0.5), grid=3)) == 10  # 1 + 3x3 overlapping
    assert len(CropGrid.parse("1, 0.5,0.25", "1,2,4")) == 1 + 4 + 16
    assert CropGrid.parse(None) == CropGrid()


@pytest.mark.parametrize("bad", [(0.0,), (1.5,), ()])
def test_bad_scales(bad: tuple) -> None:
    with pytest.raises(ValueError, match="scale"):
        CropGrid(bad)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.1, 1.0), st.integers(1, 5), st.integers(1, 500), st.integers(1, 500))
def test_boxes_stay_inside(scale: float, n: int, w: int, h: int) -> None:
    for slot in CropGrid((scale,), grid=(n,)).slots():
        x0, y0, x1, y1 = slot.box(w, h)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_crop_dataset(tiny_data: dict) -> None:
    base = open_dataset(tiny_data["target"], split="train")
    ds = CropDataset(base, CropGrid((1.0, 0.5)))
    assert len(ds) == 5 * len(base) and ds.crops_per_image == 5
    assert (ds.targets[:5] == base.targets[0]).all() and ds.classes == base.classes
    assert ds.load(0).size == (32, 24) and ds.load(1).size == (16, 12)
    assert ds.image_index(7) == 1 and ds.slot(7).scale == 0.5
    dig = ds.item_digests()
    assert len(set(dig)) == len(dig)  # every crop has its own identity
    whole = CropDataset(base)
    assert whole.item_digests() == base.item_digests()  # whole-image crops share the source's identity
    assert np.array_equal(np.asarray(whole.load(2)), np.asarray(base.load(2)))
