"""Teacher-output cache (one teacher pass per image and view), linear probe, folded-BatchNorm recalibration."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.data import open_dataset
from transferkit.distill import AugRecipe, TeacherFeatureStore, ViewRenderer, fit_linear_probe
from transferkit.distill.data import ViewDataset
from transferkit.distill.models import folded_batchnorms, recalibrate_folded_batchnorm
from transferkit.distill.targets import item_keys
from distill_fixtures import *  # noqa: F401,F403 - fixtures

RENDER = {"input_size": (3, 12, 12), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


class CountingNet(nn.Module):
    """A fixed random projection of the image that counts how many images it has seen."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * 12 * 12, 6)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.lin(x.flatten(1))


def _store_and_ds(tmp_path, tiny_data):
    ds = open_dataset(tiny_data, "train")
    vds = ViewDataset(ds, ViewRenderer(RENDER), seed=0, recipe=AugRecipe(scale=(0.3, 1.0)))
    store = TeacherFeatureStore(tmp_path / "cache", "k" * 32, meta={"test": True})
    return ds, vds, store


def test_teacher_runs_once_per_image_and_view(tmp_path, tiny_data):
    ds, vds, store = _store_and_ds(tmp_path, tiny_data)
    net = CountingNet()
    items = [(i, v) for i in range(len(ds)) for v in range(2)]
    built = []

    def forward():
        built.append(1)
        return lambda x: net(x)

    feats, st = store.features(vds, items, forward, batch_size=7, shard_size=10, progress=False)
    assert st.computed == len(items) == net.seen and feats.shape == (len(items), 6)
    # the cached values are exactly the teacher's outputs on those views
    x = torch.stack([vds[it][0] for it in items[:5]])
    assert np.allclose(feats[:5], net.lin(x.flatten(1)).detach().numpy(), atol=1e-6)
    # second request (new store object = a later process), a superset: only the new views run
    store2 = TeacherFeatureStore(tmp_path / "cache", "k" * 32)
    more = items + [(i, 2) for i in range(len(ds))]
    feats2, st2 = store2.features(vds, more, forward, batch_size=7, progress=False)
    assert st2.computed == len(ds) and net.seen == len(items) + len(ds)
    assert np.array_equal(feats2[:len(items)], feats)
    # fully cached: the teacher is not even built
    n_built = len(built)
    _, st3 = store2.features(vds, more, forward, progress=False)
    assert st3.computed == 0 and len(built) == n_built
    assert store2.seconds_per_item is not None and store2.seconds_per_item > 0


def test_item_keys_follow_content_and_view(tmp_path, tiny_data):
    ds, vds, _ = _store_and_ds(tmp_path, tiny_data)
    k = item_keys(vds, [(0, 0), (0, 1), (1, 0), (0, 0)])
    assert k[0] == k[3] and len(set(k[:3])) == 3
    # the same image reached through a different dataset view (a subset) has the same key
    sub = ViewDataset(ds.subset([0]), vds.renderer, 0, vds.recipe)
    assert item_keys(sub, [(0, 1)])[0] == k[1]


def test_interrupted_pass_keeps_finished_shards(tmp_path, tiny_data):
    ds, vds, store = _store_and_ds(tmp_path, tiny_data)
    net = CountingNet()

    def failing():
        def fn(x):
            if net.seen >= 12:
                raise KeyboardInterrupt
            return net(x)
        return fn

    items = [(i, 0) for i in range(len(ds))]
    with pytest.raises(KeyboardInterrupt):
        store.features(vds, items, failing, batch_size=4, shard_size=4, progress=False)
    kept = len(TeacherFeatureStore(tmp_path / "cache", "k" * 32))
    assert kept == 12
    net2 = CountingNet()
    feats, st = TeacherFeatureStore(tmp_path / "cache", "k" * 32).features(
        vds, items, lambda: net2, batch_size=4, progress=False)
    assert st.computed == len(items) - 12 and np.isfinite(feats).all()


def test_linear_probe_fits_and_folds_standardisation():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    centers = rng.normal(0, 1, (3, 20)) * 3
    feats = centers[y][:, None, :] + rng.normal(0, 1, (30, 2, 20)) + 50.0  # offset: standardisation matters
    res = fit_linear_probe(feats, y, 3, l2_grid=(1e-3, 1e-1, 10.0), folds=3, seed=0)
    assert set(res.cv_accuracy) == {"0.001", "0.1", "10"} and res.l2 in (1e-3, 1e-1, 10.0)
    xt = centers[y] + rng.normal(0, 1, (30, 20)) + 50.0
    with torch.no_grad():
        pred = res.head(torch.from_numpy(xt).float()).argmax(1).numpy()
    assert (pred == y).mean() > 0.9 and res.train_accuracy > 0.9
    with pytest.raises(ValueError, match="no labeled features"):
        fit_linear_probe(np.full((3, 1, 4), np.nan), np.zeros(3, int), 2, l2_grid=(1.0,))


def test_folded_batchnorm_recalibration_keeps_the_function(tiny_net):
    torch.manual_seed(0)
    net = tiny_net(bn=True)
    bn = net.bn
    with torch.no_grad():  # what a TF-Lite export looks like: statistics folded into the conv
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.bias.normal_()
        net.conv.weight.mul_(3.0)
    assert folded_batchnorms(net) == [bn]
    x = torch.randn(64, 3, 8, 8)
    net.eval()
    ref = net(x).detach()
    probe = copy.deepcopy(net).train()  # a train-mode forward would update the running statistics
    before = (probe(x) - ref).abs().max().item()
    assert recalibrate_folded_batchnorm(net, [x[:32], x[32:]]) == 1
    net.eval()
    assert torch.allclose(net(x), ref, atol=1e-4)  # eval function unchanged
    net.train()
    after = (net(x) - ref).abs().max().item()  # train mode (batch statistics) now reproduces it
    assert after < 1e-3 < before
    assert folded_batchnorms(net) == [] and recalibrate_folded_batchnorm(net, [x]) == 0
    fresh = tiny_net(bn=True)  # a freshly initialised BN (var exactly 1) is not "folded"
    assert folded_batchnorms(fresh) == []
