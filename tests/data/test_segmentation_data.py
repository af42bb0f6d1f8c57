"""Image/mask pairs: layouts (folder, zip, CSV), one-line errors on bad masks, aligned joint augmentation."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from transferkit.data.segmentation import MaskError, open_segmentation, render_mask
from transferkit.distill.views import AugRecipe, View, ViewRenderer, make_view

PALETTE = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], dtype=np.uint8)


def _write(root, split, name, img, mask, mask_mode="L"):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / split / "images" / f"{name}.png")
    if mask is not None:
        Image.fromarray(mask, mode=mask_mode).save(root / split / "masks" / f"{name}.png")


def _pair(seed, w=24, h=16):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    return PALETTE[mask], mask


@pytest.fixture()
def pairs(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            img, mask = _pair(hash((split, i)) % 1000)
            mask[0, 0] = 11  # ignore value
            _write(root, split, f"{split}_{i}", img, mask)
    return root


def test_folder_zip_and_manifest_layouts(pairs, tmp_path):
    ds = open_segmentation(pairs, "train+val", num_classes=3, ignore_index=11)
    assert len(ds) == 5 and ds.split == "train+val" and ds.native_splits == ["test", "train", "val"]
    img, mask = ds.load_pair(0)
    assert img.size == (24, 16) and mask.shape == (16, 24) and mask.dtype == np.int64 and mask[0, 0] == 11
    assert open_segmentation(pairs, None, num_classes=3, ignore_index=11).split == "train"
    # the same pairs inside a zip under a wrapping folder
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(pairs.rglob("*.png")):
            zf.write(f, "wrap/" + f.relative_to(pairs).as_posix())
    zds = open_segmentation(zpath, "train+val", num_classes=3, ignore_index=11)
    assert len(zds) == 5 and np.array_equal(zds.load_mask(0), mask)
    assert zds.item_digests() == ds.item_digests()  # content digests: the same images wherever they live
    # a CSV manifest of image,mask paths (relative to the CSV's folder)
    csv = pairs / "pairs.csv"
    csv.write_text("image,mask,split\n" + "".join(f"train/images/train_{i}.png,train/masks/train_{i}.png,train\n"
                                                  for i in range(3)))
    mds = open_segmentation(csv, "train", num_classes=3, ignore_index=11)
    assert len(mds) == 3 and np.array_equal(mds.load_mask(0), mask)
    with pytest.raises(KeyError, match="no split 'valid'"):
        open_segmentation(pairs, "valid", num_classes=3)


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_bad_masks_get_one_line(tmp_path):
    root = tmp_path / "bad"
    img, mask = _pair(0)
    _write(root, "train", "nomask", img, None)
    with pytest.raises(MaskError) as e:
        open_segmentation(root, "train", num_classes=3)
    assert "nomask.png has no mask" in _one_line(e)

    root = tmp_path / "bad2"
    _write(root, "train", "small", img, mask[:8, :12])
    _write(root, "train", "range", img, np.where(mask == 2, 7, mask).astype(np.uint8))
    _write(root, "train", "rgb", img, PALETTE[mask], mask_mode="RGB")
    _write(root, "train", "ok", img, np.where(mask == 2, 255, mask).astype(np.uint8))
    ds = open_segmentation(root, "train", num_classes=3, ignore_index=255)
    by = {p[0].split("/")[-1][:-4]: i for i, p in enumerate(ds.pairs)}
    with pytest.raises(MaskError) as e:
        ds.load_pair(by["small"])
    assert "mask is 12x8 but its image" in _one_line(e) and "24x16" in str(e.value)
    with pytest.raises(MaskError) as e:
        ds.load_pair(by["range"])
    assert "label values 7 are outside [0, 3) or the ignore index 255" in _one_line(e)
    with pytest.raises(MaskError) as e:
        ds.load_pair(by["rgb"])
    assert "RGB (colour-coded) mask" in _one_line(e)
    assert ds.load_pair(by["ok"])[1].max() == 255  # the ignore value is fine
    with pytest.raises(MaskError):  # validate() reads everything up front
        ds.validate()
    # a grey RGB file (three equal channels) is a label map saved as RGB: accepted
    _write(tmp_path / "grey", "train", "g", img, np.repeat(mask[..., None], 3, 2), mask_mode="RGB")
    g = open_segmentation(tmp_path / "grey", "train", num_classes=3)
    assert np.array_equal(g.load_mask(0), mask)


def _nearest_label(rendered: np.ndarray) -> np.ndarray:
    d = ((rendered[:, :, None, :].astype(np.int64) - PALETTE[None, None, :3].astype(np.int64)) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("view_id", [1, 2, 3, 4, 5, 6])
def test_joint_augmentation_keeps_mask_aligned(view_id):
    """Blocky label map, image painted from it: crop/scale/flip both, the image's colours still give the mask."""
    rng = np.random.default_rng(view_id)
    mask = np.kron(rng.integers(0, 3, size=(6, 8)), np.ones((10, 10), dtype=np.int64)).astype(np.uint8)  # 60x80
    img = Image.fromarray(PALETTE[mask])
    view = make_view(f"digest{view_id}", view_id, 0, AugRecipe(scale=(0.2, 0.6), ratio=(0.8, 1.25), hflip=True, vflip=True))
    assert view.box != (0.0, 0.0, 1.0, 1.0)
    size = (24, 32)
    renderer = ViewRenderer({"input_size": (3, *size), "interpolation": "bilinear", "mean": (0, 0, 0), "std": (1, 1, 1)})
    x = (renderer(img, view).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    m = render_mask(mask, view.box, view.hflip, view.vflip, size)
    assert m.shape == size
    agree = (_nearest_label(x) == m).mean()
    assert agree > 0.93, agree  # only pixels on block boundaries may differ (bilinear vs nearest)
    # the test can fail: a mask that missed the flip is not aligned
    if view.hflip:
        wrong = render_mask(mask, view.box, not view.hflip, view.vflip, size)
        assert (_nearest_label(x) == wrong).mean() < agree - 0.1


def test_flip_only_view_is_exact():
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = render_mask(mask, (0.0, 0.0, 1.0, 1.0), True, False, (3, 4))
    assert np.array_equal(out, mask[:, ::-1])
    out = render_mask(mask, (0.5, 0.0, 1.0, 1.0), False, True, (3, 2))
    assert np.array_equal(out, mask[::-1, 2:])
    out = render_mask(mask, (0.0, 0.0, 1.0, 1.0), False, False, (6, 8))  # scale up: each label becomes 2x2
    assert np.array_equal(out, np.kron(mask, np.ones((2, 2), dtype=np.int64)))
    assert View().key() == View((0.0, 0.0, 1.0, 1.0)).key()
