"""End to end: `curate` on tiny image folders, the YAML config and the `transferkit curate` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from transferkit.curate import ManifestDataset, is_transfer_manifest, read_manifest
from transferkit.curate.pipeline import CurateConfig, GallerySource, curate


class ColourGrid(nn.Module):
    """A timm-like 'model' whose features are the mean colours of a 4x4 grid: red matches red."""

    num_classes = 0

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def forward_head(self, h: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module")
def leaky_pool(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pool plus a copy of the target's test images under other names (what the leakage guard is for)."""
    root = tmp_path_factory.mktemp("leaky")
    shutil.copytree(tiny_data["pool"], root / "pool")
    for f in (tiny_data["target"] / "test").rglob("*.png"):
        shutil.copy(f, root / "pool" / "train" / f.parent.name / f"web_{f.name}")  # byte-identical copy
        with Image.open(f) as im:  # same pixels, other bytes: only the cosine guard can catch it
            im.save(root / "pool" / "train" / f.parent.name / f"reenc_{f.name}", compress_level=1)
    return root / "pool"


def _cfg(tmp_path: Path, tiny_data: dict, gallery: list, **kw) -> CurateConfig:
    base = dict(queries=str(tiny_data["target"]), gallery=gallery, budget=12, model=ColourGrid().eval(),
                out=str(tmp_path / "ts.csv"), cache_dir=str(tmp_path / "cache"), dup_threshold=None,
                leak_threshold=0.99999, num_workers=0, progress=False, preprocess={"input_size": 32})
    base.update(kw)
    return CurateConfig(**base)


def test_balanced_curation_end_to_end(tmp_path: Path, tiny_data: dict, leaky_pool: Path) -> None:
    # the gallery also holds the target itself (train + test): queries and test images must never come back
    cfg = _cfg(tmp_path, tiny_data, [str(leaky_pool), GallerySource(str(tiny_data["target"]), split="all")])
    res = curate(cfg)
    assert is_transfer_manifest(res.manifest) and res.manifest.with_suffix(".report.json").exists()
    rows = read_manifest(res.manifest).rows
    assert len(rows) == 12
    rep = res.report
    assert rep["selection"]["quota_per_query"] == [2] and rep["selection"]["queries_short"] == 0
    assert rep["gallery"]["query_images_excluded"] == 6 and rep["gallery"]["crops_per_image"] == 5
    # leakage: the 4 test images exist twice in the gallery (copied into the pool, and the target's test split)
    assert rep["leakage_guard"]["test_images"] == 4 and rep["leakage_guard"]["exact_copies_images"] == 8
    items = {r.item for r in rows}
    assert not any("web_" in i or "reenc_" in i or i.startswith("test/") for i in items)
    query_items = {f"train/{c}/{c}_{i}.png" for c in ("red", "blue") for i in range(3)}
    target_src = str(tiny_data["target"].resolve())
    assert not ({r.item for r in rows if r.source == target_src} & query_items)
    # colour retrieval: red queries get red crops, blue queries blue crops
    for r in rows:
        assert r.query_id.split("/")[1] == r.item.split("/")[1]
        assert r.query_id in query_items and r.rank >= 0 and r.similarity > 0.9
    # the manifest is a dataset distill can read
    mds = ManifestDataset(res.manifest)
    for i, r in enumerate(rows):
        img, y = mds[i]
        assert y == -1 and img.size == (r.x1 - r.x0, r.y1 - r.y0)
    # a second run reuses every embedding store
    res2 = curate(cfg)
    assert [r.item for r in read_manifest(res2.manifest).rows] == [r.item for r in rows]
    assert all(s["embed_seconds"] < 5 for s in res2.report["gallery"]["sources"])


def test_random_strategy_and_composition(tmp_path: Path, tiny_data: dict, leaky_pool: Path) -> None:
    # asking for more than the pool holds draws every eligible crop: the guard must have removed the copies
    with pytest.warns(RuntimeWarning, match="ran out"):
        res = curate(_cfg(tmp_path, tiny_data, [str(leaky_pool)], strategy="random", budget=1000,
                          out=str(tmp_path / "all.csv")))
    lg = res.report["leakage_guard"]
    assert lg["exact_copies_images"] == 4 and lg["excluded_crops"] == 4 * 5
    rows = read_manifest(res.manifest).rows
    assert len(rows) == 18 * 5 and not any("web_" in r.item or "reenc_" in r.item for r in rows)
    res = curate(_cfg(tmp_path, tiny_data, [str(leaky_pool)], strategy="random", budget=40))
    rows = read_manifest(res.manifest).rows
    assert len(rows) == 40 and len({(r.item, r.box) for r in rows}) == 40
    assert {r.item.split("/")[1] for r in rows} >= {"green"}  # random sets ignore the target
    assert all(r.query_id == "" and r.rank == -1 for r in rows)
    bal = curate(_cfg(tmp_path, tiny_data, [str(leaky_pool)], budget=40, out=str(tmp_path / "b.csv")))
    assert not any(r.item.split("/")[1] == "green" for r in read_manifest(bal.manifest).rows)


def test_multicrop_queries_and_max_per_image(tmp_path: Path, tiny_data: dict) -> None:
    res = curate(_cfg(tmp_path, tiny_data, [str(tiny_data["pool"])], query_scales=(1.0, 0.5), max_per_image=1,
                      test=None, budget=6))
    rows = read_manifest(res.manifest).rows
    assert res.report["queries"]["crops_per_query"] == 5
    assert len({r.item for r in rows}) == len(rows) == 6
    assert res.report["leakage_guard"]["test"] is None


def test_config_validation_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget"):
        CurateConfig(queries="q", gallery=["g"], budget=0, model="m")
    with pytest.raises(ValueError, match="strategy"):
        CurateConfig(queries="q", gallery=["g"], budget=5, model="m", strategy="greedy")
    with pytest.raises(ValueError, match="unknown curate option"):
        CurateConfig.from_dict({"queries": "q", "gallery": ["g"], "budget": 5, "model": "m", "nope": 1})
    y = tmp_path / "c.yaml"
    (tmp_path / "a").mkdir()
    y.write_text("queries: q\ngallery: [a, {spec: b, split: train, per_class: 3}]\nbudget: 7\nmodel: m\n"
                 "scales: '1,0.5'\nindex: {kind: ivfpq, nprobe: 4}\n")
    cfg = CurateConfig.from_yaml(y)
    assert cfg.gallery[1] == GallerySource("b", "train", 3) and cfg.scales == (1.0, 0.5)
    assert cfg.gallery[0].spec == str((tmp_path / "a").resolve())  # existing paths are relative to the YAML
    assert cfg.index.kind == "ivfpq" and cfg.index.nprobe == 4 and len(cfg.gallery_grid) == 5
    assert json.loads(json.dumps(cfg.to_dict()))["budget"] == 7


def test_cli(tmp_path: Path, tiny_data: dict, tiny_ckpt: str) -> None:
    from transferkit.cli import main

    runner = CliRunner()
    out = tmp_path / "ts.csv"
    y = tmp_path / "c.yaml"
    y.write_text(f"model: '{tiny_ckpt}'\nbudget: 100\nleak_threshold: 0.99999\ndup_threshold: 1.0\n")
    r = runner.invoke(main, ["curate", "--config", str(y), "--queries", str(tiny_data["target"]),
                             "--gallery", str(tiny_data["pool"]), "--budget", "8", "--out", str(out),
                             "--cache-dir", str(tmp_path / "cache"), "--scales", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "leakage guard" in r.output
    assert len(read_manifest(out)) == 8  # the command line overrides the YAML budget
    r = runner.invoke(main, ["curate", "--queries", str(tiny_data["target"])])
    assert r.exit_code != 0 and "--gallery" in r.output and "--budget" in r.output
