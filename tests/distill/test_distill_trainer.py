"""The training loop: exact resume after an interruption, gradient accumulation, metrics log."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from transferkit.data import open_dataset
from transferkit.distill import AugRecipe, StageConfig, Trainer, ViewRenderer
from transferkit.distill.data import StepPlan, ViewDataset, fresh_view_policy
from transferkit.distill.models import FinetuneModule
from transferkit.distill.trainer import LoopSettings, load_checkpoint
from distill_fixtures import *  # noqa: F401,F403 - fixtures

RENDER = {"input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def _setup(tiny_data, tiny_net, bn=True, seed=0):
    ds = open_dataset(tiny_data, "train")
    vds = ViewDataset(ds, ViewRenderer(RENDER), seed=0, recipe=AugRecipe())
    torch.manual_seed(seed)
    return vds, FinetuneModule(tiny_net(bn=bn))


def _fit(vds, module, out, steps=6, accum=1, batch=12, resume=True, fail_at=None, **kw):
    if fail_at is not None:
        orig = module.forward
        calls = {"n": 0}

        def forward(*a):
            calls["n"] += 1
            if calls["n"] > fail_at * accum:
                raise KeyboardInterrupt("simulated crash")
            return orig(*a)

        module.forward = forward
    settings = LoopSettings(grad_accum=accum, checkpoint_every=2, log_every=1, resume=resume, progress=False,
                            log_formats=("jsonl", "csv"), **kw)
    tr = Trainer(module, vds, StepPlan(len(vds), batch, seed=0), fresh_view_policy(0), steps=steps,
                 stage=StageConfig(lr=0.05, weight_decay=0.01, batch_size=batch, warmup_fraction=0.2),
                 settings=settings, stage_dir=out, name="ft", digest="d1")
    return tr, tr.fit()


def _params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, tiny_data, tiny_net):
    vds, ref_mod = _setup(tiny_data, tiny_net)
    _, ref = _fit(vds, ref_mod, tmp_path / "ref")
    assert ref.steps == 6 and ref.samples == 72 and ref.resumed_from == 0
    vds, mod = _setup(tiny_data, tiny_net)
    with pytest.raises(KeyboardInterrupt):
        _fit(vds, mod, tmp_path / "run", fail_at=5)  # dies in step 5; the last checkpoint is at step 4
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 4  # plain types only
    vds, mod2 = _setup(tiny_data, tiny_net, seed=1)  # a new process, other weights: the checkpoint restores them
    _, res = _fit(vds, mod2, tmp_path / "run")
    assert res.resumed_from == 4
    for k, v in _params(ref_mod).items():
        assert torch.allclose(v, mod2.state_dict()[k], atol=1e-6), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps redone after the crash are logged once
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("stage,step,loss")


def _to_format_1(path):
    """Rewrite a checkpoint the way transferkit <= 0.1 wrote it: numpy/python RNG states as pickled tuples."""
    ck = torch.load(path, weights_only=True)
    npr, pyr = ck.pop("numpy_rng"), ck.pop("python_rng")
    ck.pop("format")
    ck["numpy_rng"] = (npr["kind"], npr["keys"].numpy().astype(np.uint32), npr["pos"], npr["has_gauss"],
                       npr["cached_gaussian"])
    ck["python_rng"] = (pyr["version"], tuple(pyr["internal"]), pyr["gauss_next"])
    torch.save(ck, path)


def test_old_checkpoint_still_resumes_and_a_code_running_one_is_refused(tmp_path, tiny_data, tiny_net):
    vds, ref_mod = _setup(tiny_data, tiny_net)
    _fit(vds, ref_mod, tmp_path / "ref")
    vds, mod = _setup(tiny_data, tiny_net)
    with pytest.raises(KeyboardInterrupt):
        _fit(vds, mod, tmp_path / "run", fail_at=5)
    ck_path = tmp_path / "run" / "checkpoint.pt"
    _to_format_1(ck_path)
    with pytest.raises(pickle.UnpicklingError):  # the old file needs numpy's array reconstruction...
        torch.load(ck_path, weights_only=True)
    vds, mod2 = _setup(tiny_data, tiny_net, seed=1)
    _, res = _fit(vds, mod2, tmp_path / "run")  # ...which load_checkpoint allows, and nothing more
    assert res.resumed_from == 4
    for k, v in _params(ref_mod).items():
        assert torch.allclose(v, mod2.state_dict()[k], atol=1e-6), k

    class RunsCode:
        def __reduce__(self):
            return (print, ("this would run on load",))

    torch.save({"step": 1, "model": {}, "hook": RunsCode()}, ck_path)
    with pytest.raises(ValueError, match="refusing to resume from a checkpoint that needs code to load"):
        load_checkpoint(ck_path)


def test_checkpoint_of_another_run_is_refused(tmp_path, tiny_data, tiny_net):
    vds, mod = _setup(tiny_data, tiny_net)
    tr, _ = _fit(vds, mod, tmp_path / "run", steps=3)
    tr.digest = "other"
    with pytest.raises(ValueError, match="different configuration"):
        tr.fit()
    tr.s.resume = False  # resume=False starts over instead
    assert tr.fit().resumed_from == 0


def test_gradient_accumulation_matches_the_full_batch(tmp_path, tiny_data, tiny_net):
    vds, full = _setup(tiny_data, tiny_net, bn=False)
    _fit(vds, full, tmp_path / "a", steps=3, accum=1)
    vds, acc = _setup(tiny_data, tiny_net, bn=False)
    _fit(vds, acc, tmp_path / "b", steps=3, accum=3)
    for k, v in _params(full).items():
        assert torch.allclose(v, acc.state_dict()[k], atol=1e-5), k
    with pytest.raises(ValueError, match="divisible"):
        _fit(vds, acc, tmp_path / "c", steps=1, accum=5)


def test_bf16_autocast_on_cpu_trains(tmp_path, tiny_data, tiny_net):
    vds, mod = _setup(tiny_data, tiny_net)
    before = _params(mod)
    _, res = _fit(vds, mod, tmp_path / "bf16", steps=2, precision="bf16")
    assert res.last["loss"] > 0 and any(not torch.equal(before[k], v) for k, v in mod.state_dict().items())
