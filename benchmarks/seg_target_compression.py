"""What caching the segmentation teacher's outputs compactly costs (issue 14: "measure the accuracy cost").

    python benchmarks/seg_target_compression.py                 # trains a small head-only teacher, then measures
    python benchmarks/seg_target_compression.py --run RUN_DIR   # measure with the teacher of a finished run

The distillation targets are the adapted teacher's per-pixel logits. Uncompressed they are float32 at the
model's input resolution (11 x 180 x 240 x 4 B = 1.9 MB per view); the cache keeps them on a coarser grid
(``target_stride``) in ``target_dtype``. On CamVid validation images (their masks are used only for the
teacher's mIoU), for each storage scheme this prints:

* bytes per view;
* mean per-pixel KL(uncompressed || stored) at T = 1 on the student's stride-4 grid (what distillation fits);
* arg-max agreement with the uncompressed prediction at the label resolution (360 x 480);
* the teacher's mIoU and pixel accuracy when its prediction goes through the stored targets, against the
  uncompressed prediction's (the accuracy cost).

Results are written to ``benchmarks/results/seg_target_compression.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CAMVID = "../shared/data/camvid/camvid.zip"
SCHEMES = (("float32", 1), ("float32", 4), ("float16", 4), ("float16", 8), ("float16", 16), ("float16", 32))


def _train_teacher(work: Path, steps: int) -> Path:
    """A head-only lite2 teacher on 50 CamVid training images (the benchmark's setting, fewer steps)."""
    import yaml

    from transferkit.distill import DistillConfig, run_distill

    run = yaml.safe_load((REPO / "benchmarks" / "distill_camvid.yaml").read_text())["run"]
    cfg = DistillConfig.from_dict(run).replace(
        method="task_oriented", test_split=None, transfer_max_items=4, adapt={**run["adapt"], "steps": steps},
        distill={**run["distill"], "steps": 1}, finetune={**run["finetune"], "steps": 1}, cache_dir=str(work / "cache"),
        out_dir=str(work / "run"), progress=False)
    run_distill(cfg)
    return work / "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished task_oriented segmentation run folder (teacher.json)")
    ap.add_argument("--steps", type=int, default=150, help="teacher head-only steps when training one here")
    ap.add_argument("--images", type=int, default=101, help="CamVid validation images to measure on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "seg_target_compression.json")
    args = ap.parse_args()
    os.chdir(REPO)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from transferkit.data.segmentation import open_segmentation
    from transferkit.distill.segmetrics import confusion_matrix, segmentation_scores
    from transferkit.distill.segpipeline import load_seg_model
    from transferkit.reporting import write_json

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = args.run or _train_teacher(REPO / "out" / "seg_target_compression", args.steps)
    teacher, meta, render = load_seg_model(run, "teacher")
    val = open_segmentation(CAMVID, "val", num_classes=meta["num_classes"], ignore_index=meta["ignore_index"],
                            class_names=meta["classes"])
    n = min(args.images, len(val))
    k = meta["num_classes"]
    h, w = meta["seg_size"]
    stats: dict[str, dict[str, Any]] = {}
    cms = {s: np.zeros((k, k), np.int64) for s in SCHEMES}
    kl_sum = {s: 0.0 for s in SCHEMES}
    agree = {s: 0.0 for s in SCHEMES}
    pixels = 0
    with torch.inference_mode():
        for i in range(n):
            img, mask = val.load_pair(i)
            x = render(img)[None]
            low = teacher.forward_lowres(x).float()  # (1, k, h/4, w/4): the decoder's grid
            full = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)  # the model's output
            ref_label = F.interpolate(full, size=mask.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
            ref_grid = F.log_softmax(low, 1)
            for dtype, stride in SCHEMES:
                size = (-(-h // stride), -(-w // stride))
                src = full if size[0] > low.shape[-2] else low
                stored = F.interpolate(src, size=size, mode="bilinear", align_corners=False,
                                       antialias=size[0] < src.shape[-2]) if tuple(src.shape[-2:]) != size else src
                stored = stored.to(getattr(torch, dtype)).float()
                at_grid = F.interpolate(stored, size=low.shape[-2:], mode="bilinear", align_corners=False)
                lp = F.log_softmax(at_grid, 1)
                kl_sum[(dtype, stride)] += float((ref_grid.exp() * (ref_grid - lp)).sum(1).mean())
                lab = F.interpolate(stored, size=mask.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
                agree[(dtype, stride)] += float((lab == ref_label).mean())
                cms[(dtype, stride)] += confusion_matrix(lab, mask, k, val.ignore_index)
            pixels += 1
    for dtype, stride in SCHEMES:
        s = segmentation_scores(cms[(dtype, stride)], meta["classes"])
        size = (-(-h // stride), -(-w // stride))
        stats[f"{dtype}/stride{stride}"] = {
            "bytes_per_view": int(k * size[0] * size[1] * np.dtype(dtype).itemsize),
            "kl_to_uncompressed": kl_sum[(dtype, stride)] / pixels, "argmax_agreement": agree[(dtype, stride)] / pixels,
            "teacher_miou": s["miou"], "teacher_pixel_accuracy": s["pixel_accuracy"]}
    doc = {"teacher_run": str(run), "images": n, "seg_size": [h, w], "seconds": round(time.perf_counter() - t0, 1),
           "reference": "float32/stride1 = the model's full-resolution output (uncompressed)", "schemes": stats}
    write_json(args.out, doc)
    print(f"{n} CamVid val images, teacher {meta['spec'].split('/')[-1]} from {run}")
    print(f"{'scheme':18s} {'bytes/view':>10s} {'KL':>9s} {'agree':>7s} {'mIoU':>7s} {'pix acc':>7s}")
    for name, v in stats.items():
        print(f"{name:18s} {v['bytes_per_view']:>10,d} {v['kl_to_uncompressed']:9.2e} {v['argmax_agreement']:7.4f} "
              f"{100 * v['teacher_miou']:7.2f} {100 * v['teacher_pixel_accuracy']:7.2f}")


if __name__ == "__main__":
    main()
