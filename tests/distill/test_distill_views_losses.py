"""Views (deterministic, shared by teacher and student), step plans, and the distillation losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from transferkit.distill import AugRecipe, ViewRenderer, distillation_loss, feature_loss, kd_kl, make_view
from transferkit.distill.data import StepPlan, cached_view_policy, fresh_view_policy
from distill_fixtures import *  # noqa: F401,F403 - fixtures


# -- views --------------------------------------------------------------------------------------------
def test_views_are_deterministic_and_valid():
    r = AugRecipe(scale=(0.2, 0.6), hflip=True, vflip=True)
    assert make_view("abc", 0, 0, r).box == (0.0, 0.0, 1.0, 1.0)  # view 0: the whole image
    views = [make_view(f"img{i}", v, 3, r) for i in range(50) for v in range(1, 4)]
    for v in views:
        x0, y0, x1, y1 = v.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert 0.2 - 1e-9 <= (x1 - x0) * (y1 - y0) <= 0.6 + 1e-9
    assert views == [make_view(f"img{i}", v, 3, r) for i in range(50) for v in range(1, 4)]
    assert make_view("img0", 1, 3, r) != make_view("img0", 1, 4, r)  # the seed matters
    assert len({v.hflip for v in views}) == 2 and len({v.vflip for v in views}) == 2


def test_renderer_same_crop_for_teacher_and_student():
    a = np.zeros((40, 40, 3), np.uint8)
    a[:, :20, 0] = 255  # left half red
    img = Image.fromarray(a)
    cfg = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0, 0, 0), "std": (1, 1, 1)}
    big = ViewRenderer({**cfg, "input_size": (3, 32, 32)})
    small = ViewRenderer(cfg)
    from transferkit.distill.views import View

    left = View((0.0, 0.0, 0.4, 1.0))  # inside the red half (resampling reads a little past the box)
    assert small(img, left)[0].min() > 0.99 and big(img, left)[0].min() > 0.99  # all red in both
    flipped = small(img, View((0.0, 0.0, 1.0, 1.0), hflip=True))
    assert flipped[0, :, -1].mean() > 0.99 and flipped[0, :, 0].mean() < 0.01
    out = ViewRenderer({"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3})(img)
    assert out.shape == (3, 8, 8) and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6


# -- step plans --------------------------------------------------------------------------------------
def test_step_plan_epochs_are_permutations_and_ranks_partition_the_batch():
    plan = StepPlan(n=10, batch_size=4, seed=0)
    stream = [it for s in range(5) for it in plan.batch(s)]  # 20 items = 2 epochs
    assert sorted(i for i, e in stream if e == 0) == list(range(10))
    assert sorted(i for i, e in stream if e == 1) == list(range(10))
    pol = cached_view_policy(2, 10, seed=0)
    for step in range(5):
        whole = [(i, pol(i, e)) for i, e in plan.batch(step)]
        parts = [it for r in range(2) for mb in plan.micro_batches(step, r, 2, 2, pol) for it in mb]
        assert sorted(parts) == sorted(whole)
    assert StepPlan(10, 4, 0).batch(3) == plan.batch(3)  # a fresh plan (a resumed run) agrees
    with pytest.raises(ValueError, match="divisible"):
        plan.micro_batches(0, 0, 3, 1, pol)


def test_view_policies():
    pol = cached_view_policy(3, 100, seed=1)
    seen = {pol(i, e) for i in range(100) for e in range(3)}
    assert seen == {0, 1, 2}
    assert cached_view_policy(1, 5, 0)(3, 7) == 0
    fresh = fresh_view_policy(0)
    assert fresh(1, 0) == fresh(1, 0) and fresh(1, 0) != fresh(1, 1) and fresh(1, 0) >= 1


# -- losses ------------------------------------------------------------------------------------------
def test_kd_kl_matches_definition():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    for temp in (1.0, 4.0):
        p_t = F.softmax(t / temp, 1)
        manual = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
        assert torch.allclose(kd_kl(s, t, temp), manual, atol=1e-6)
    assert float(kd_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_kl(s, t[:, :4])


def test_distillation_loss_parts_and_gradient():
    torch.manual_seed(0)
    s = torch.randn(8, 4, requires_grad=True)
    t = torch.randn(8, 4)
    loss, parts = distillation_loss(s, t, temperature=2.0, soft_weight=0.5, hard_weight=2.0)
    expected = 0.5 * kd_kl(s, t, 2.0) + 2.0 * F.cross_entropy(s, t.argmax(1))
    assert torch.allclose(loss, expected)
    assert set(parts) == {"kd_soft", "kd_hard", "agree"}
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # minimising the soft loss moves the student towards the teacher
    s2 = torch.zeros(8, 4, requires_grad=True)
    opt = torch.optim.SGD([s2], lr=20.0)
    for _ in range(30):
        opt.zero_grad()
        distillation_loss(s2, t)[0].backward()
        opt.step()
    assert (s2.argmax(1) == t.argmax(1)).all()


def test_feature_losses():
    a = torch.randn(5, 7)
    assert float(feature_loss(a, 3 * a, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_loss(a, -a, "cosine")) == pytest.approx(2.0, abs=1e-6)
    assert float(feature_loss(a, a, "mse")) == 0.0
    assert float(feature_loss(a, a + 1, "smooth_l1")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown feature loss"):
        feature_loss(a, a, "l7")
    with pytest.raises(ValueError, match="differ in shape"):
        feature_loss(a, a[:, :3])
