"""Ground-truth fine-tuning: grid search, best-of-epochs, resume after a kill, the ground-truth CSV, the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transferkit.finetune import (
    FinetuneConfig,
    append_ground_truth,
    augment_batch,
    finetune,
    ground_truth_by_dataset,
    ground_truth_pairs,
    load_image_tensors,
    read_ground_truth_rows,
    records_path,
    run_dir,
)

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def make_image_folder(root: Path, per_split: dict[str, int] | None = None, size: int = 20, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/*.png``: 3 classes of noisy colour patches (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    for split, n in (per_split or {"train": 6, "test": 4}).items():
        for c, colour in enumerate(COLOURS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(np.array(colour) + rng.normal(0, 40, (size, size + 4, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imgs"))


def tiny_config(data: Path, work: Path, **kw) -> FinetuneConfig:
    base = dict(model="test_efficientnet", data=str(data), model_options={"pretrained": False}, img_size=24,
                epochs=2, batch_size=6, lrs=[1e-3, 3e-3], weight_decays=[1e-4], work_dir=str(work), progress=False,
                num_threads=1, dataset_name="toy")
    base.update(kw)
    return FinetuneConfig(**base)


def test_grid_best_over_epochs_and_csv(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gt.csv"
    res = finetune(tiny_config(data_dir, tmp_path / "w", output=str(out)))
    assert len(res.histories) == 2 and all(len(h["history"]) == 2 for h in res.histories)
    all_accs = [a for h in res.histories for a in h["history"]]
    assert res.accuracy == max(all_accs)
    best = res.histories[[h["lr"] for h in res.histories].index(res.best_lr)]
    assert best["history"][res.best_epoch - 1] == res.accuracy
    assert (res.n_train, res.n_test, res.img_size) == (18, 12, 24)
    rows = read_ground_truth_rows(out)
    assert len(rows) == 1 and rows[0]["model"] == "test_efficientnet" and rows[0]["dataset"] == "toy"
    assert float(rows[0]["accuracy"]) == pytest.approx(res.accuracy, abs=1e-3)
    assert rows[0]["epochs"] == "2" and rows[0]["lrs"] == "0.001 0.003"
    rec = np.load(records_path(out, "test_efficientnet", "toy"))
    assert rec["predictions"].shape == (2, 2, 12) and rec["labels"].shape == (12,)
    correct = (rec["predictions"] == rec["labels"]).mean(axis=2) * 100  # (grid point, epoch)
    assert np.allclose(correct, [h["history"] for h in res.histories])
    assert correct.max() == pytest.approx(res.accuracy)
    assert rec["lrs"].tolist() == [1e-3, 3e-3] and list(rec["classes"]) == ["class0", "class1", "class2"]


def test_kill_and_resume_gives_the_same_result(data_dir: Path, tmp_path: Path) -> None:
    ref_cfg = tiny_config(data_dir, tmp_path / "ref")
    ref = finetune(ref_cfg)

    class Killed(Exception):
        pass

    def kill(point: int, epoch: int, acc: float) -> None:
        if (point, epoch) == (1, 1):  # after the first epoch of the second grid point
            raise Killed

    cfg = tiny_config(data_dir, tmp_path / "killed")
    with pytest.raises(Killed):
        finetune(cfg, on_epoch=kill)
    assert (run_dir(cfg) / "checkpoint.pt").exists()
    seen: list[tuple[int, int]] = []
    res = finetune(cfg, on_epoch=lambda p, e, a: seen.append((p, e)))
    assert seen == [(1, 2)]  # finished point and epoch are not recomputed
    assert [h["history"] for h in res.histories] == [h["history"] for h in ref.histories]
    for i in range(2):  # per-image predictions survive the kill too
        assert np.array_equal(np.load(run_dir(cfg) / f"point{i}.npy"), np.load(run_dir(ref_cfg) / f"point{i}.npy"))
    assert not (run_dir(cfg) / "checkpoint.pt").exists()
    seen.clear()
    again = finetune(cfg, on_epoch=lambda p, e, a: seen.append((p, e)))  # everything done: no training
    assert seen == [] and again.accuracy == res.accuracy


def test_new_budget_does_not_resume_a_stale_run(data_dir: Path, tmp_path: Path) -> None:
    a = tiny_config(data_dir, tmp_path / "w")
    b = a.replace(epochs=3)
    assert run_dir(a) != run_dir(b) and a.identity() != b.identity()
    assert a.identity() == a.replace(progress=True, device="cpu").identity()  # runtime options do not count


def test_frozen_bn_keeps_running_statistics(data_dir: Path, tmp_path: Path) -> None:
    from transferkit.finetune.train import _set_train_mode
    from transferkit.models import load_model

    model, _ = load_model("test_efficientnet", num_classes=3, pretrained=False)
    _set_train_mode(model, "frozen")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(4, 3, 24, 24))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    assert all(p.requires_grad for m in bns for p in m.parameters())


def test_config_validation_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        FinetuneConfig("m", "d", epochs=0)
    with pytest.raises(ValueError, match="augment must be one of"):
        FinetuneConfig("m", "d", augment="mixup")
    with pytest.raises(ValueError, match="lrs must be"):
        FinetuneConfig("m", "d", lrs=[])
    with pytest.raises(ValueError, match=r"unknown fine-tuning option\(s\) \['epoch'\]"):
        FinetuneConfig.from_dict({"model": "m", "data": "d", "epoch": 3})
    p = tmp_path / "budget.yaml"
    p.write_text("epochs: 4\nlrs: [1.0e-4, 2.0e-4]\nweight_decays: 0.01\n")
    cfg = FinetuneConfig.from_yaml(p, model="m", data="d")
    assert cfg.epochs == 4 and cfg.grid == [(1e-4, 0.01), (2e-4, 0.01)]
    assert FinetuneConfig("m", "d").grid == [(1e-5, 1e-2), (1e-5, 1e-4), (2e-5, 1e-2), (2e-5, 1e-4),
                                            (5e-5, 1e-2), (5e-5, 1e-4)]  # the paper's grid by default


def test_ground_truth_csv_replace_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "gt.csv"
    append_ground_truth(p, {"model": "a", "dataset": "x", "accuracy": 50.0, "seconds": 1})
    append_ground_truth(p, {"model": "b", "dataset": "x", "accuracy": 60.0, "extra": "k"})
    append_ground_truth(p, {"model": "a", "dataset": "x", "accuracy": 55.0})
    append_ground_truth(p, {"model": "a", "dataset": "x", "accuracy": 1.0}, replace=False)
    assert ground_truth_by_dataset(p) == {"x": {"a": 55.0, "b": 60.0}}
    assert ground_truth_pairs(p) == {("a", "x"), ("b", "x")}
    header = next(csv.reader(p.open()))
    assert header[:3] == ["model", "dataset", "accuracy"] and "extra" in header
    assert not list(tmp_path.glob("*.tmp"))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,acc\na,1\n")
    with pytest.raises(ValueError, match="needs columns model, dataset, accuracy"):
        read_ground_truth_rows(bad)
    with pytest.raises(ValueError, match="needs model, dataset and accuracy"):
        append_ground_truth(p, {"model": "a"})


def test_image_tensor_cache_and_augmentation(data_dir: Path, tmp_path: Path) -> None:
    from transferkit.data import open_dataset

    ds = open_dataset(str(data_dir), "train")
    a = load_image_tensors(ds, 16, "bilinear", None, progress=False)  # in memory
    assert a.images.shape == (18, 3, 16, 16) and a.images.dtype == np.uint8
    b = load_image_tensors(ds, 16, "bilinear", tmp_path, progress=False)  # written to the cache
    assert len(list(tmp_path.glob("*.npy"))) == 1 and len(list(tmp_path.glob("*.npz"))) == 1
    c = load_image_tensors(ds, 16, "bilinear", tmp_path, progress=False)  # memory-mapped from the cache
    assert isinstance(c.images, np.memmap)
    for other in (b, c):
        assert np.array_equal(a.images, other.images) and torch.equal(a.labels, other.labels)
        assert a.classes == other.classes
    assert not list(tmp_path.glob(".*.tmp"))
    batch = c.batch(torch.tensor([3, 0, 5]))
    assert batch.dtype == torch.uint8 and torch.equal(batch[1], torch.from_numpy(np.array(a.images[0])))
    x1 = augment_batch(a.batch(slice(0, 8)), "flip_crop", torch.Generator().manual_seed(3))
    x2 = augment_batch(a.batch(slice(0, 8)), "flip_crop", torch.Generator().manual_seed(3))
    assert x1.shape == (8, 3, 16, 16) and torch.equal(x1, x2)
    imgs = a.batch(slice(0, 18))
    assert torch.equal(augment_batch(imgs, "none", torch.Generator()), imgs)
    flipped = augment_batch(imgs, "flip", torch.Generator().manual_seed(0)).to(torch.uint8)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, imgs))
    assert any(not torch.equal(f, o) for f, o in zip(flipped, imgs))


def test_cli_single_pair_and_skip(data_dir: Path, tmp_path: Path) -> None:
    from transferkit.cli import main

    out = tmp_path / "gt.csv"
    args = ["finetune", "--model", "cifar_resnet20", "--data", str(data_dir), "--dataset-name", "toy",
            "--epochs", "1", "--lrs", "1e-3", "--weight-decays", "0", "--batch-size", "9", "--work-dir",
            str(tmp_path / "w"), "--out", str(out), "--threads", "1", "--quiet", "--config", str(tmp_path / "c.yaml")]
    (tmp_path / "c.yaml").write_text("model_options: {pretrained: false}\n")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "cifar_resnet20 on toy" in r.output and ground_truth_pairs(out) == {("cifar_resnet20", "toy")}
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "already in" in r.output
    r = CliRunner().invoke(main, ["finetune", "--model", "cifar_resnet20"])
    assert r.exit_code != 0 and "--data" in r.output
    r = CliRunner().invoke(main, ["finetune", "--model", "x", "--data", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not found" in r.output


def test_unreadable_images_are_skipped_and_labels_stay_aligned(tmp_path: Path) -> None:
    from transferkit.data import open_dataset

    root = make_image_folder(tmp_path / "d", {"train": 3})
    (root / "train" / "class0" / "0.png").write_bytes(b"not an image")
    ds = open_dataset(str(root), "train")
    for cache in (None, tmp_path / "c"):
        t = load_image_tensors(ds, 8, "bilinear", cache, progress=False)
        assert len(t) == 8 and t.images.shape[0] == 8 and len(t.skipped) == 1 and "0.png" in t.skipped[0]
        assert t.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
        means = t.batch(slice(0, 8)).float().mean((1, 2, 3))
        assert torch.equal(t.batch(slice(0, 8))[:, :, 0, 0].argmax(1)[2:], t.labels[2:])  # colour = class
        assert means.shape == (8,)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1


def test_eval_every_evaluates_every_kth_and_the_last_epoch(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gt.csv"
    cfg = tiny_config(data_dir, tmp_path / "w", epochs=3, eval_every=2, lrs=[3e-3], output=str(out))
    assert cfg.eval_epochs == [2, 3] and cfg.identity() != cfg.replace(eval_every=1).identity()
    seen: list[tuple[int, int]] = []
    res = finetune(cfg, on_epoch=lambda p, e, a: seen.append((p, e)))
    assert seen == [(0, 2), (0, 3)] and len(res.histories[0]["history"]) == 2
    assert res.best_epoch in (2, 3)
    rec = np.load(records_path(out, "test_efficientnet", "toy"))
    assert rec["predictions"].shape == (1, 2, 12) and rec["epochs"].tolist() == [2, 3]
    assert read_ground_truth_rows(out)[0]["eval_every"] == "2"
    with pytest.raises(ValueError, match="eval_every"):
        cfg.replace(eval_every=0)


def test_finetune_config_with_bad_yaml_is_one_value_error(tmp_path):
    from transferkit.finetune import FinetuneConfig

    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        FinetuneConfig.from_yaml(tmp_path / "bad.yaml")
