"""Nothing lost: `transferkit extract` killed mid-way (SIGINT, then SIGTERM) resumes with only the missing
images computed and bit-identical features; a full disk (tiny tmpfs) or a read-only cache folder gives one
line naming the file with the finished chunks kept; result and cache files follow the umask.

The console script runs in a subprocess (a fresh interpreter), as a user runs it; the runs to interrupt have
their chunk writes slowed by a sitecustomize (see CHUNK_DELAY_S) so the signal lands mid-run on any machine.
Mounting a tmpfs or a read-only bind mount needs root with CAP_SYS_ADMIN: those tests skip with the reason
elsewhere; the in-process test of a full disk (os.fsync made to fail with ENOSPC) runs everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit import reporting
from transferkit.features import FeatureCache, extract_features
from transferkit.reporting import OutputWriteError

N_IMAGES = 720  # 180 chunks of 4
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
# The runs to interrupt wait CHUNK_DELAY_S before each chunk is written (a sitecustomize on PYTHONPATH wraps
# CacheEntry.write_chunk in the subprocess), so the signal lands mid-run however fast the machine: an idle one
# finished all 720 images in 1.2 s, before the test had seen the first chunk and signalled.
CHUNK_DELAY_S = 0.05
SLOW_WRITES = """
import time
from transferkit.features import cache as _cache

_write = _cache.CacheEntry.write_chunk


def _slow_write(self, *args, **kwargs):
    time.sleep(%r)
    return _write(self, *args, **kwargs)


_cache.CacheEntry.write_chunk = _slow_write
""" % CHUNK_DELAY_S


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("durability")
    rng = np.random.default_rng(0)
    for c, n in {"a": N_IMAGES // 2, "b": N_IMAGES - N_IMAGES // 2}.items():
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "imgs" / c / f"{i:03d}.png")
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(root / "w.safetensors"))
    spec = f"test_resnet@{root / 'w.safetensors'}"
    base = ["transferkit", "extract", "-m", spec, "-d", str(root / "imgs"), "--input-size", "32", "-b", "4",
            "--workers", "0", "--no-progress"]
    (root / "slow_writes").mkdir()
    (root / "slow_writes" / "sitecustomize.py").write_text(SLOW_WRITES)
    return {"root": root, "base": base}


@pytest.fixture(scope="module")
def reference(assets) -> dict:
    """One uninterrupted run, under umask 022, exporting its npz."""
    root = assets["root"]
    r = subprocess.run([*assets["base"], "--cache", str(root / "ref_cache"), "--chunk-size", "32",
                        "--out", str(root / "ref_out")], env=ENV, capture_output=True, text=True, timeout=600,
                       preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "computed" in r.stdout and "resumed" not in r.stdout
    return {"npz": root / "ref_out" / "test_resnet@w.npz", "cache": root / "ref_cache"}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in ("X", "y", "P", "indices")} | {"metadata": json.loads(str(d["metadata"]))}


def _chunks(cache: Path) -> list[tuple[int, int]]:
    entries = FeatureCache(cache).entries()
    return entries[0].chunk_ranges() if entries else []


def _interrupt(cmd: list[str], cache: Path, sig: int, after: set[tuple[int, int]],
               slow_writes: Path) -> tuple[int, str]:
    """Start ``cmd`` with chunk writes slowed, send ``sig`` as soon as a chunk not in ``after`` is on disk;
    (exit code, stderr)."""
    env = dict(ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(slow_writes), ENV.get("PYTHONPATH")])))
    # SIGINT as a terminal leaves it: a test run started in the background by a non-interactive shell
    # (`cmd &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    try:
        while not set(_chunks(cache)) - after:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before a new chunk appeared:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("no chunk appeared within 600 s")
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.fail(f"the run finished before the signal arrived; raise CHUNK_DELAY_S:\n{out}")
    return proc.returncode, err


_KEPT = re.compile(r"^Interrupted: kept (\d+) of (\d+) images of test_resnet@w \((\d+) chunks?\) in (\S+); models "
                   r"finished before are cached too\. Run the same command again to resume\.$")


def _check_interrupted(rc: int, err: str, sig: int, cache: Path) -> list[tuple[int, int]]:
    assert rc == 128 + sig, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    m = _KEPT.match(lines[0])
    assert m, lines[0]
    kept = _chunks(cache)
    assert int(m.group(1)) == sum(hi - lo for lo, hi in kept) and int(m.group(3)) == len(kept)
    assert int(m.group(2)) == N_IMAGES and 0 < int(m.group(1)) < N_IMAGES
    assert all(lo % 4 == 0 for lo, _ in kept)  # whole batches on the batch grid
    assert not list(cache.rglob(".*.tmp"))
    return kept


def test_extract_interrupted_twice_resumes_with_only_the_missing_images(assets, reference, tmp_path):
    cache = tmp_path / "cache"
    cmd = [*assets["base"], "--cache", str(cache), "--chunk-size", "4"]
    slow = assets["root"] / "slow_writes"
    rc, err = _interrupt(cmd, cache, signal.SIGINT, set(), slow)  # Ctrl-C
    first = _check_interrupted(rc, err, signal.SIGINT, cache)
    rc, err = _interrupt(cmd, cache, signal.SIGTERM, set(first), slow)  # a killed job, while resuming
    kept = _check_interrupted(rc, err, signal.SIGTERM, cache)
    assert set(first) <= set(kept) and len(kept) > len(first)
    done = sum(hi - lo for lo, hi in kept)
    # finish with another chunk size: the chunks on disk are used as they are
    r = subprocess.run([*assets["base"], "--cache", str(cache), "--chunk-size", "32", "--out", str(tmp_path / "o")],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    new_chunks = -(-(N_IMAGES - done) // 32)  # the gap after the kept chunks is one range: ceil(rest / 32)
    assert f"resumed ({len(kept)} of {len(kept) + new_chunks} chunks from cache)" in r.stdout, r.stdout
    got, ref = _arrays(tmp_path / "o" / "test_resnet@w.npz"), _arrays(reference["npz"])
    assert got["metadata"]["computed_images"] == N_IMAGES - done  # only the missing images were computed
    assert got["metadata"]["chunks_from_cache"] == len(kept)
    for k in ("X", "y", "P", "indices"):
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k  # bit-identical
    assert sorted(p.name for p in FeatureCache(cache).entries()[0].path.iterdir()) == ["features.npz", "meta.json"]


def test_result_and_cache_files_follow_the_umask(reference):
    files = [reference["npz"], *reference["cache"].rglob("*.npz"), *reference["cache"].rglob("*.json")]
    assert len(files) == 3  # export, features.npz, meta.json
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}  # was 0600 (mkstemp) before


def test_full_disk_during_extraction_keeps_the_finished_chunks(tmp_path, monkeypatch):
    """In-process (any platform): the 3rd chunk write fails with ENOSPC, the first two are kept and used."""
    rng = np.random.default_rng(1)
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=3).state_dict().items()},
              str(tmp_path / "w.safetensors"))
    spec = f"test_resnet@{tmp_path / 'w.safetensors'}"
    opts = dict(cache_dir=tmp_path / "c", batch_size=2, chunk_size=4, num_workers=0, input_size=32, progress=False)
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 4:  # meta.json, chunk 1, chunk 2, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(reporting.os, "fsync", fsync)
    with pytest.raises(OutputWriteError) as info:
        extract_features(spec, tmp_path / "imgs", **opts)
    entry = FeatureCache(tmp_path / "c").entries()[0]
    msg = str(info.value)
    assert msg == (f"cannot write {entry.chunk_path(8, 12)}: no space left on device; the partial file was removed; "
                   f"8 of 12 images of test_resnet@w computed so far are kept in {entry.path}; "
                   "free some space and run again to resume")
    assert entry.chunk_ranges() == [(0, 4), (4, 8)] and not list(entry.path.glob(".*.tmp"))
    monkeypatch.setattr(reporting.os, "fsync", real_fsync)
    fs = extract_features(spec, tmp_path / "imgs", **opts)
    assert fs.metadata["chunks_from_cache"] == 2 and fs.metadata["computed_images"] == 4 and len(fs) == 12


# ------------------------------------------------------------------------------------------------
# real file systems: a tiny tmpfs and a read-only bind mount (root with CAP_SYS_ADMIN only)
# ------------------------------------------------------------------------------------------------
def _mount(args: list[str]) -> str | None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting needs root and the mount command"
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount {' '.join(args)} failed: {r.stderr.strip()}"


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    why = _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)])
    if why:
        pytest.skip(f"no tiny tmpfs here ({why})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture()
def read_only_dir(tmp_path):
    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    why = _mount(["--bind", str(src), str(mnt)])
    if why:
        pytest.skip(f"no read-only bind mount here ({why})")
    why = _mount(["-o", "remount,ro,bind", str(mnt)])
    if why:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        pytest.skip(f"no read-only bind mount here ({why})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_cache_on_a_full_tmpfs(assets, reference, tiny_tmpfs, tmp_path):
    cache = tiny_tmpfs / "cache"
    r = subprocess.run([*assets["base"], "--cache", str(cache), "--chunk-size", "4"], env=ENV, capture_output=True,
                       text=True, timeout=600)
    line = _one_error_line(r)
    kept = _chunks(cache)
    done = sum(hi - lo for lo, hi in kept)
    entry = FeatureCache(cache).entries()[0]
    m = re.match(rf"^Error: cannot write {re.escape(str(entry.path))}/rows-\d+-\d+\.npz: no space left on device; "
                 rf"the partial file was removed; {done} of {N_IMAGES} images of test_resnet@w computed so far are "
                 rf"kept in {re.escape(str(entry.path))}; free some space and run again to resume$", line)
    assert m and 0 < done < N_IMAGES, line
    assert not list(cache.rglob(".*.tmp"))
    # make room, run again: the kept chunks are used, the result equals an uninterrupted run
    assert _mount(["-o", "remount,size=4m", str(tiny_tmpfs)]) is None
    r = subprocess.run([*assets["base"], "--cache", str(cache), "--chunk-size", "32", "--out", str(tmp_path / "o")],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"resumed ({len(kept)} of" in r.stdout, r.stdout + r.stderr
    got, ref = _arrays(tmp_path / "o" / "test_resnet@w.npz"), _arrays(reference["npz"])
    assert got["metadata"]["computed_images"] == N_IMAGES - done
    assert all(np.array_equal(got[k], ref[k]) for k in ("X", "y", "P", "indices"))


def test_export_to_a_full_tmpfs_names_the_file_and_keeps_the_cache(assets, reference, tiny_tmpfs):
    (tiny_tmpfs / "filler").write_bytes(b"\0" * 40_000)  # the 90 kB export cannot fit in what is left
    r = subprocess.run([*assets["base"], "--cache", str(reference["cache"]), "--out", str(tiny_tmpfs / "o")],
                       env=ENV, capture_output=True, text=True, timeout=600)
    line = _one_error_line(r)
    assert line == (f"Error: cannot write {tiny_tmpfs / 'o' / 'test_resnet@w.npz'}: no space left on device; "
                    f"the partial file was removed; the features are kept in the cache {reference['cache']}")
    assert not list((tiny_tmpfs / "o").iterdir())


def test_read_only_cache_folder_is_one_line(assets, read_only_dir):
    r = subprocess.run([*assets["base"], "--cache", str(read_only_dir / "cache")], env=ENV, capture_output=True,
                       text=True, timeout=600)
    line = _one_error_line(r)
    assert re.match(rf"^Error: cannot write {re.escape(str(read_only_dir))}/cache/features/\w+: read-only file "
                    r"system$", line), line
