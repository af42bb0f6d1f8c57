"""Two CPU processes on the gloo backend: the dataset is sharded over the ranks and rank 0 merges; the
result equals a single-process run, with private caches (chunks travel over the process group) and with
one shared cache directory. The default run forks the two ranks from the test process (fast: no new
interpreters); the slow tests start them with `torchrun` exactly as a user would."""

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

from transferkit.features import FeatureCache, extract_features

WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from transferkit.features import extract_features
    spec, data, cache, out = sys.argv[1:5]
    rank = int(os.environ["RANK"])
    if cache.endswith("private"):
        cache = f"{cache}/rank{rank}"
    fs = extract_features(spec, data, cache_dir=cache, batch_size=3, chunk_size=3, num_workers=0,
                          input_size=32, progress=False)
    assert fs.metadata["world_size"] == 2
    np.savez(f"{out}/rank{rank}.npz", X=fs.features, y=fs.labels, P=fs.probs, idx=fs.indices)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def setup(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c, n in {"a": 7, "b": 6}.items():  # 13 images -> 5 chunks of 3: uneven over 2 ranks
        (root / c).mkdir(parents=True)
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(buf, "PNG")
            (root / c / f"{i}.png").write_bytes(buf.getvalue())
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path, f"test_resnet@{tmp_path / 'w.safetensors'}", root


def _torchrun(tmp: Path, spec: str, data: Path, cache: str, out: Path) -> None:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(tmp / "worker.py"), spec, str(data), cache, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _forked_rank(rank: int, spec: str, data: str, cache: str, out: str, port: int) -> None:
    """One rank, set up the way torchrun does it (environment variables; the group starts on first use)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if cache.endswith("private"):
        cache = f"{cache}/rank{rank}"
    try:
        fs = extract_features(spec, data, cache_dir=cache, batch_size=3, chunk_size=3, num_workers=0,
                              input_size=32, progress=False)
        assert fs.metadata["world_size"] == 2 and dist.get_backend() == "gloo"
        np.savez(f"{out}/rank{rank}.npz", X=fs.features, y=fs.labels, P=fs.probs, idx=fs.indices)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _forked(tmp: Path, spec: str, data: Path, cache: str, out: Path) -> None:
    import torch.multiprocessing as mp

    out.mkdir()
    mp.start_processes(_forked_rank, args=(spec, str(data), cache, str(out), _free_port()), nprocs=2,
                       start_method="fork", join=True)


@pytest.mark.parametrize("launcher,cache_kind", [
    ("fork", "private"), ("fork", "shared"),
    pytest.param("torchrun", "private", marks=pytest.mark.slow),
    pytest.param("torchrun", "shared", marks=pytest.mark.slow)])
def test_two_gloo_processes_equal_single_process(setup, launcher, cache_kind):
    tmp, spec, data = setup
    single = extract_features(spec, data, cache_dir=tmp / "single", input_size=32, progress=False, num_workers=0)
    (_forked if launcher == "fork" else _torchrun)(tmp, spec, data, str(tmp / f"cache-{cache_kind}"), tmp / "out")
    for rank in (0, 1):
        with np.load(tmp / "out" / f"rank{rank}.npz") as d:
            np.testing.assert_allclose(d["X"], single.features, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(d["P"], single.probs, rtol=1e-5, atol=1e-6)
            assert d["y"].tolist() == single.labels.tolist() and d["idx"].tolist() == single.indices.tolist()
    root = tmp / f"cache-{cache_kind}" / ("rank0" if cache_kind == "private" else "")
    (entry,) = FeatureCache(root).entries()
    assert entry.is_complete() and not list(entry.path.glob("chunk-*"))
    if cache_kind == "private":  # rank 1's chunks went to rank 0; nothing is left behind on rank 1
        (e1,) = FeatureCache(tmp / "cache-private" / "rank1").entries()
        assert not list(e1.path.glob("chunk-*")) and not e1.is_complete()


def _failing_rank(rank: int, spec: str, data: str, cache: str, out: str, port: int) -> None:
    """One rank of a strict run over data with a corrupt image: records what it raised, in one line."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        extract_features(spec, data, cache_dir=cache, batch_size=3, chunk_size=3, num_workers=0, input_size=32,
                         progress=False, strict=True)
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - the test inspects what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(outcome)


def test_a_rank_that_fails_stops_the_other_with_its_error(setup):
    """Strict mode, a corrupt image in rank 1's share: rank 1 raises its CorruptImageError and rank 0, instead
    of waiting in the next collective until torchrun tears the group down, raises PeerFailedError naming it."""
    import torch.multiprocessing as mp

    tmp, spec, data = setup
    # a/0-6 then b/0-5; units of 3: rank 0 takes [0,3) [6,9) [12,13), rank 1 [3,6) [9,12); b/2 is position 9
    (data / "b" / "2.png").write_bytes(b"not a png")
    out = tmp / "out"
    out.mkdir()
    mp.start_processes(_failing_rank, args=(spec, str(data), str(tmp / "cache"), str(out), _free_port()),
                       nprocs=2, start_method="fork", join=True)
    rank0, rank1 = (out / "rank0.txt").read_text(), (out / "rank1.txt").read_text()
    assert rank1.startswith("CorruptImageError") and "2.png" in rank1, rank1
    assert rank0.startswith("PeerFailedError: rank 1 of 2 failed: CorruptImageError") and "2.png" in rank0, rank0


@pytest.mark.slow
def test_torchrun_cli_failure_is_one_line_on_every_rank(setup):
    """`torchrun ... transferkit extract --strict` with a corrupt image in rank 1's share: each rank prints
    one `Error:` line (its own, or the peer's) and the run exits non-zero; no rank prints a traceback."""
    import shutil

    tmp, spec, data = setup
    (data / "b" / "2.png").write_bytes(b"not a png")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "--log-dir", str(tmp / "logs"), "--redirects", "3",
           shutil.which("transferkit"), "extract", "-m", spec, "-d", str(data), "-o", str(tmp / "feats"),
           "--cache", str(tmp / "cache"), "--input-size", "32", "--strict", "--no-progress", "-b", "3",
           "--chunk-size", "3", "--workers", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    logs = {p.parent.name: p.read_text() for p in (tmp / "logs").rglob("stderr.log")}
    assert set(logs) == {"0", "1"}, proc.stderr[-2000:]
    assert "Error: rank 1 of 2 failed: CorruptImageError" in logs["0"], logs["0"]
    assert "Error:" in logs["1"] and "2.png" in logs["1"], logs["1"]
    assert not any("Traceback" in text for text in logs.values()), logs
