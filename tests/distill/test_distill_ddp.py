"""DDP with 2 CPU processes on gloo: the training loop, the sharded teacher pass, and a whole run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from distill_fixtures import *  # noqa: F401,F403 - fixtures

RENDER = {"input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


class _Net(nn.Module):  # no BatchNorm: DDP over 2 x 6 images must equal one process over 12
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _train_tiny(data: str, out: Path, ctx=None) -> dict[str, torch.Tensor]:
    from transferkit.data import open_dataset
    from transferkit.distill import AugRecipe, StageConfig, Trainer, ViewRenderer
    from transferkit.distill.data import StepPlan, ViewDataset, fresh_view_policy
    from transferkit.distill.models import FinetuneModule
    from transferkit.distill.trainer import LoopSettings

    vds = ViewDataset(open_dataset(data, "train"), ViewRenderer(RENDER), 0, AugRecipe())
    torch.manual_seed(0)
    module = FinetuneModule(_Net())
    Trainer(module, vds, StepPlan(len(vds), 12, 0), fresh_view_policy(0), steps=3,
            stage=StageConfig(lr=0.05, batch_size=12), settings=LoopSettings(progress=False, checkpoint_every=2),
            stage_dir=out, name="ft", ctx=ctx).fit()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _worker(rank: int, world: int, port: int, data: str, tmp: str, cfg_dict: dict | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from transferkit.distill import AugRecipe, DistillConfig, TeacherFeatureStore, ViewRenderer, run_distill
        from transferkit.distill.data import ViewDataset
        from transferkit.data import open_dataset
        from transferkit.features.distributed import dist_context

        ctx = dist_context()
        tmpp = Path(tmp)
        # 1. the training loop under DDP
        sd = _train_tiny(data, tmpp / "ddp_stage", ctx)
        torch.save(sd, tmpp / f"loop_rank{rank}.pt")
        # 2. the teacher pass, sharded over the ranks
        vds = ViewDataset(open_dataset(data, "train"), ViewRenderer(RENDER), 0, AugRecipe())
        torch.manual_seed(0)
        lin = nn.Linear(3 * 8 * 8, 4)
        seen = []
        store = TeacherFeatureStore(tmpp / "cache", "d" * 32)
        items = [(i, v) for i in range(len(vds)) for v in range(2)]
        feats, st = store.features(vds, items, lambda: (lambda x: (seen.append(len(x)), lin(x.flatten(1)))[1]),
                                   batch_size=8, ctx=ctx, progress=False)
        torch.save({"feats": torch.from_numpy(feats), "mine": sum(seen), "total": st.computed},
                   tmpp / f"cache_rank{rank}.pt")
        if cfg_dict is None:
            return
        # 3. a whole task-oriented run (teacher pass, probe, distillation, fine-tuning) under DDP
        r = run_distill(DistillConfig.from_dict(cfg_dict))
        (tmpp / f"run_rank{rank}.json").write_text(json.dumps({"sha": r["student_sha256"],
                                                               "acc": r.get("student_accuracy")}))
    finally:
        try:  # both ranks done before the group goes away (gloo aborts a rank whose peer left mid-exchange)
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_loop_and_sharded_teacher_pass(tmp_path, tiny_data):
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path), None), nprocs=2, join=True)
    # 1. both ranks hold the same weights, and they equal one process training on the whole batches
    r0, r1 = (torch.load(tmp_path / f"loop_rank{r}.pt") for r in (0, 1))
    single = _train_tiny(str(tiny_data), tmp_path / "single")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.allclose(r0[k], single[k], atol=1e-5), k
    # 2. each rank computed half of the teacher outputs, and both got all of them
    c0, c1 = (torch.load(tmp_path / f"cache_rank{r}.pt") for r in (0, 1))
    assert c0["mine"] + c1["mine"] == c0["total"] == 72 and 0 < c0["mine"] < 72
    assert torch.equal(c0["feats"], c1["feats"]) and torch.isfinite(c0["feats"]).all()


@pytest.mark.slow
def test_ddp_whole_run(tmp_path, tiny_data, tiny_config):
    cfg = tiny_config.replace(out_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "run_cache"),
                              distill={"steps": 2, "batch_size": 8}, finetune={"steps": 2, "batch_size": 6})
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path), cfg.to_dict()), nprocs=2, join=True)
    # identical final students on both ranks (BatchNorm statistics included), results written once
    j0, j1 = (json.loads((tmp_path / f"run_rank{r}.json").read_text()) for r in (0, 1))
    assert j0["sha"] == j1["sha"]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["student_sha256"] == j0["sha"] and res["cost"]["student_steps"] == {"distill": 2, "finetune": 2}
