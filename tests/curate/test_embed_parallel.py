"""Embedding a WebDataset gallery in parallel: two gloo ranks write the same store a single process writes,
shard sizes do not change the result, and a shard already done is never redone."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit.curate import embed as embed_mod
from transferkit.curate.crops import CropDataset, CropGrid
from transferkit.curate.embed import embed_dataset
from transferkit.curate.shards import TarShardDataset, write_shards

pytest.importorskip("webdataset")

WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import torch
    from transferkit.curate.crops import CropDataset, CropGrid
    from transferkit.curate.embed import embed_dataset
    from transferkit.curate.shards import TarShardDataset
    torch.set_num_threads(1)
    spec, tar, cache, out = sys.argv[1:5]
    ds = CropDataset(TarShardDataset(tar), CropGrid((1.0, 0.5)))
    st = embed_dataset(spec, ds, cache_dir=cache, shard_size=8, batch_size=3, num_workers=0, input_size=32,
                       progress=False, device="cpu")
    np.save(f"{out}/rank{os.environ['RANK']}.npy", np.asarray(st.emb))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, str, Path]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(7):  # 7 images x 5 crops = 35 crops -> shards of 8: uneven over 2 ranks
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        samples.append((f"{i:04d}", buf.getvalue(), "png", None))
    (tar,) = write_shards(samples, tmp_path / "pool", per_shard=100)
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path, f"test_resnet@{tmp_path / 'w.safetensors'}", tar


def _single(tmp: Path, spec: str, tar: Path, shard_size: int = 8) -> np.ndarray:
    ds = CropDataset(TarShardDataset(tar), CropGrid((1.0, 0.5)))
    st = embed_dataset(spec, ds, cache_dir=tmp / f"single{shard_size}", shard_size=shard_size, batch_size=3,
                       num_workers=0, input_size=32, progress=False, device="cpu")
    return np.asarray(st.emb)


def test_shard_size_does_not_change_the_store(setup, monkeypatch) -> None:
    tmp, spec, tar = setup
    torch.set_num_threads(1)
    a = _single(tmp, spec, tar, shard_size=8)
    b = _single(tmp, spec, tar, shard_size=1000)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # resume: drop one shard from the progress record; only that shard is recomputed
    (root,) = (tmp / "single8" / "embeddings").iterdir()
    (root / "progress.json").write_text('{"done": [0, 1, 3, 4]}')
    calls: list[int] = []
    real = embed_mod.extract_features
    monkeypatch.setattr(embed_mod, "extract_features", lambda m, ds, **kw: calls.append(len(ds)) or real(m, ds, **kw))
    c = _single(tmp, spec, tar, shard_size=8)
    assert calls == [8]
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)


def _forked_rank(rank: int, spec: str, tar: str, cache: str, out: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    sys.argv = ["worker", spec, tar, cache, out]
    if rank == 1:  # a slow reader: rank 0 must not delete a shard's cache entry before rank 1 has read it
        import time

        from transferkit.features.cache import CacheEntry

        real_load = CacheEntry.load
        CacheEntry.load = lambda self: time.sleep(0.3) or real_load(self)  # type: ignore[method-assign]
    try:
        exec(compile(WORKER, "worker", "exec"), {"__name__": "__worker__"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("launcher", ["fork", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_two_gloo_processes_write_the_single_process_store(setup, launcher) -> None:
    tmp, spec, tar = setup
    torch.set_num_threads(1)
    single = _single(tmp, spec, tar)
    out = tmp / "out"
    out.mkdir()
    cache = str(tmp / "shared-cache")
    if launcher == "fork":
        import torch.multiprocessing as mp

        mp.start_processes(_forked_rank, args=(spec, str(tar), cache, str(out), _free_port()), nprocs=2,
                           start_method="fork", join=True)
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), str(tmp / "worker.py"), spec, str(tar), cache,
               str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(out / f"rank{rank}.npy"), single, rtol=1e-5, atol=1e-6)
    (root,) = (Path(cache) / "embeddings").iterdir()
    assert sorted(__import__("json").loads((root / "progress.json").read_text())["done"]) == [0, 1, 2, 3, 4]
