"""Images/s of `extract_features` against the bare forward pass of the same model on the same batches.

    python benchmarks/extract.py                                  # mobilenetv2_100.in1k, CPU, 128 images
    python benchmarks/extract.py --model resnet50 --random-weights --n 128 --batch-size 32
    python benchmarks/extract.py --end-to-end                     # also: decode + preprocess from the zip

The batches are made once (real ImageNet sample images from ../shared when present, else noise), already
preprocessed. "bare" is ``model(x)`` under ``torch.inference_mode`` (NCHW and channels_last; the faster
one is the reference). "extract" is the full ``extract_features`` call on the same tensors (loader,
features + probabilities, chunked cache writes; a fresh cache each time). Each round times extract between
two runs of each bare layout and the median per-round ratio is reported, because this machine is shared.
Target: extract >= 80 % of bare on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = SHARED / "weights" / "mobilenetv2_100.in1k"
SAMPLES = SHARED / "data" / "imagenet_samples" / "imagenet_samples.zip"


def _premade(n: int, data_config: dict, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    from timm.data import create_transform

    from transferkit.data import open_dataset

    tf = create_transform(**data_config, is_training=False)
    if SAMPLES.exists():
        ds = open_dataset(SAMPLES)
        idx = np.random.default_rng(seed).choice(len(ds), size=n, replace=n > len(ds))
        return torch.stack([tf(ds.load(int(i))) for i in idx]), ds.targets[idx]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *data_config["input_size"], generator=g), np.arange(n) % 10


def _bare(model: torch.nn.Module, batches: list[torch.Tensor], channels_last: bool) -> float:
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    xs = [b.contiguous(memory_format=torch.channels_last) if channels_last else b.contiguous() for b in batches]
    t = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            model(x)
    return sum(len(x) for x in xs) / (time.perf_counter() - t)


def _extract(model: torch.nn.Module, ds, batch_size: int, **kw) -> float:
    from transferkit.features import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        fs = extract_features(model, ds, cache_dir=tmp, batch_size=batch_size, progress=False, **kw)
        dt = time.perf_counter() - t
    assert len(fs) == len(ds)
    return len(ds) / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else "resnet18")
    ap.add_argument("--random-weights", action="store_true", help="timm name without downloading weights")
    ap.add_argument("--n", type=int, default=128, help="images per round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--end-to-end", action="store_true", help="also time extraction from the JPEG zip")
    args = ap.parse_args(argv)

    from transferkit.data import TensorImageDataset, open_dataset
    from transferkit.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    rm = resolve_model(args.model, pretrained=not args.random_weights)
    model = rm.build().to(args.device)
    dc = rm.data_config()
    X, y = _premade(args.n, dc)
    X = X.to(args.device)
    batches = list(X.split(args.batch_size))
    ds = TensorImageDataset(X.cpu(), y, preprocessing=dc)
    print(f"model {args.model}  input {dc['input_size']}  n={args.n}  batch={args.batch_size}  "
          f"device={args.device}  threads={torch.get_num_threads()}", flush=True)
    _bare(model, batches[:1], False), _bare(model, batches[:1], True)  # warm-up
    res: dict[str, list[float]] = {"bare NCHW": [], "bare channels_last": [], "extract": []}
    if args.end_to_end and SAMPLES.exists():
        res["extract from zip (decode+resize)"] = []
        zds = open_dataset(SAMPLES).subset(np.arange(min(args.n, 1000)))
    ratios = []
    for r in range(args.rounds):
        # extract is timed between two runs of each bare layout (symmetric order), so that load changes
        # on this shared machine hit both sides of the per-round ratio alike; the reference of a round
        # is the faster layout
        cl1, nchw1 = _bare(model, batches, True), _bare(model, batches, False)
        res["extract"].append(_extract(model, ds, args.batch_size, device=args.device))
        nchw2, cl2 = _bare(model, batches, False), _bare(model, batches, True)
        res["bare channels_last"].append((cl1 + cl2) / 2)
        res["bare NCHW"].append((nchw1 + nchw2) / 2)
        ratios.append(res["extract"][-1] / max(res["bare channels_last"][-1], res["bare NCHW"][-1]))
        if "extract from zip (decode+resize)" in res:
            res["extract from zip (decode+resize)"].append(_extract(model, zds, args.batch_size, device=args.device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in res.items())
              + f", extract/faster bare {100 * ratios[-1]:.1f} %", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    ref = max(med["bare NCHW"], med["bare channels_last"])
    print("\nmedian images/s")
    for k, v in med.items():
        print(f"  {k:34s} {v:8.1f}   {100 * v / ref:5.1f} % of the faster bare forward")
    ratio = statistics.median(ratios)
    print(f"\nextract / faster bare forward (median of the per-round ratios) = {100 * ratio:.1f} % (target >= 80 %)")
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
