"""``run_distill`` for ``task: segmentation``: the three stages and the baselines on image/mask pairs.

Same run folder, resume, logs, AMP, DDP and export as classification (``pipeline.py``); what differs:

* **data**: image/mask pairs (:mod:`transferkit.data.segmentation`); ``n_labeled`` pairs (seeded by
  ``data_seed``) are the labeled set; masks of the labeled and test sets are checked before any training.
  Views are the classification views (relative crop box + flips, a pure function of seed, image digest
  and view id), rendered at ``seg_size``; masks get the same box with nearest-neighbour resizing.
* **(a) teacher adaptation**: an FPN decoder on the teacher backbone trained with per-pixel cross-entropy
  on the labeled views (``head_only``: frozen backbone; ``finetune``: everything).
* **(b) task-oriented distillation**: per-pixel ``T^2 KL(teacher || student)`` on the transfer set (no
  pixel ignored). The adapted teacher's logits are cached at its decoder's stride-4 grid (``target_stride``
  4; the full-resolution prediction is their bilinear upsampling, so this keeps everything but the
  float16 rounding), stored as ``target_dtype`` (float16): 11 x 45 x 60 x 2 bytes = 59 kB per view at
  180x240 instead of 1.9 MB for float32 logits at full resolution.
* **feature_distill baseline**: the student's deepest feature map -> 1x1 projection -> cosine distance per
  location to the frozen, unadapted teacher's deepest map (cached the same way), then fine-tuning.
* **metrics**: a confusion matrix over every test image at the mask's original resolution (the model's
  stride-4 logits bilinearly upsampled to it); mean IoU (ignore index left out), pixel accuracy, IoU per
  class (:mod:`transferkit.distill.segmetrics`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import CorruptImageError, ImageDataset, open_dataset
from ..data.segmentation import MaskError, SegmentationDataset, open_segmentation, render_mask
from ..models import state_dict_digest
from ..reporting import write_json
from .config import DistillConfig
from .data import StepPlan, ViewDataset, cached_view_policy, fresh_view_policy, make_loader
from .models import build_model, recalibrate_folded_batchnorm
from .pipeline import (_all_views, _calibration_batches, _finish_run, _Run, _same_source, _select_transfer, _stage,
                       _start_run)
from .segmetrics import confusion_matrix, segmentation_scores
from .segmodels import (DenseFeatureDistillModule, SegFinetuneModule, SegKDModule, SegModel, _Backbone,
                        build_seg_model, seg_param_counts)
from .targets import CacheStats, TeacherFeatureStore, teacher_key
from .trainer import atomic_torch_save, autocast, seed_everything
from .views import AugRecipe, ViewRenderer, make_view

__all__ = ["SegViewDataset", "evaluate_segmentation", "load_seg_model", "open_seg_data", "open_seg_transfer",
           "predict_masks", "run_seg_distill", "seg_renderer"]


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def seg_renderer(data_config: dict[str, Any], size: tuple[int, int]) -> ViewRenderer:
    """A model's normalisation, rendering views at ``size`` = (H, W) (bilinear)."""
    return ViewRenderer({**data_config, "input_size": (3, int(size[0]), int(size[1])), "interpolation": "bilinear"})


class SegViewDataset(ViewDataset):
    """``ds[(index, view)] -> (image tensor, index, view, mask (H, W) long or -1, error)``.

    The mask is cut with the same view as the image (nearest-neighbour), so the two stay aligned."""

    def __init__(self, ds: ImageDataset, renderer: ViewRenderer, seed: int, recipe: AugRecipe, *, masks: bool,
                 digests: Any = None):
        super().__init__(ds, renderer, seed, recipe, digests)
        self.masks = masks
        if masks and not isinstance(ds, SegmentationDataset):
            raise ValueError(f"{ds.source}: masks requested from a dataset without masks")

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int, int, Any, str | None]:
        i, v = int(key[0]), int(key[1])
        try:
            img = self.ds.load(i)
            mask = self.ds.load_mask(i, img.size) if self.masks else None  # type: ignore[attr-defined]
        except (CorruptImageError, MaskError) as exc:
            return None, i, v, -1, str(exc)
        view = make_view(self.digests[i], v, self.seed, self.recipe)
        x = self.renderer(img, view)
        if mask is None:
            return x, i, v, -1, None
        m = render_mask(mask, view.box, view.hflip, view.vflip, (self.renderer.height, self.renderer.width))
        return x, i, v, torch.from_numpy(m), None


def _open_seg(cfg: DistillConfig, spec: str, split: str | None) -> SegmentationDataset:
    return open_segmentation(spec, split, num_classes=int(cfg.num_classes), ignore_index=cfg.ignore_index,
                             class_names=cfg.class_names)


def open_seg_data(cfg: DistillConfig, validate: bool = True) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The labeled pairs (``n_labeled`` of the training split, seeded by ``data_seed``) and the test pairs."""
    full = _open_seg(cfg, cfg.data, cfg.train_split)
    labeled = full
    if cfg.n_labeled is not None and cfg.n_labeled < len(full):
        rng = np.random.default_rng([cfg.effective_data_seed(), 5381])
        idx = np.sort(rng.choice(len(full), size=cfg.n_labeled, replace=False))
        labeled = full.subset(idx, note=f"n_labeled={cfg.n_labeled}, seed={cfg.effective_data_seed()}")
    test = _open_seg(cfg, cfg.data, cfg.test_split) if cfg.test_split else None
    if validate:  # one line before hours of training: missing masks, size mismatches, labels out of range
        labeled.validate()
        if test is not None:
            test.validate()
    return labeled, test


def open_seg_transfer(cfg: DistillConfig, labeled: ImageDataset | None = None) -> tuple[ImageDataset, dict[str, Any]]:
    """The unlabeled transfer set: the segmentation dataset's images (``transfer_split``, default the training
    split; masks never read) or any other image dataset / curated manifest; labeled images removed by content."""
    from ..curate.manifest import ManifestDataset, is_transfer_manifest

    spec = cfg.transfer or cfg.data
    same = cfg.transfer is None or _same_source(cfg.transfer, cfg.data)
    if is_transfer_manifest(spec):
        ds: ImageDataset = ManifestDataset(spec)
        kind = "manifest"
    elif same:
        ds = _open_seg(cfg, spec, cfg.transfer_split or cfg.train_split)
        kind = "segmentation images"
    else:
        ds = open_dataset(spec, cfg.transfer_split)
        kind = "dataset"
    return _select_transfer(cfg, ds, labeled, {"spec": str(spec), "kind": kind, "split": ds.split,
                                               "n_source": len(ds)})


# ------------------------------------------------------------------------------------------------
# cached teacher outputs (per-pixel logits of the adapted teacher, or dense features of the frozen one)
# ------------------------------------------------------------------------------------------------
class _DenseTargets:
    """One teacher output map per (image, view), flattened into a :class:`TeacherFeatureStore` row."""

    def __init__(self, run: _Run, what: str, identity: dict[str, Any], renderer: ViewRenderer,
                 net: nn.Module, shape: tuple[int, int, int], fn: Any):
        cfg = run.cfg
        self.run, self.renderer, self.shape, self.fn, self.net = run, renderer, shape, fn, net
        doc = {"segmentation": what, "identity": identity, "shape": list(shape), "dtype": cfg.target_dtype}
        key = teacher_key(doc, renderer.describe(), run.prec)
        self.store = TeacherFeatureStore(cfg.cache_dir, key, meta={"teacher": cfg.teacher, **doc,
                                                                   "render": renderer.describe()},
                                         dtype=cfg.target_dtype)
        self.stats = CacheStats()

    def compute(self, ds: ImageDataset, views: int, desc: str) -> np.ndarray:
        """(len(ds), views, *shape) array (NaN rows for unreadable images)."""
        cfg, run = self.run.cfg, self.run
        vds = SegViewDataset(ds, self.renderer, cfg.transfer_seed, run.recipe, masks=False)

        def forward() -> Any:
            net = self.net.to(run.dev).eval()

            def fn(x: torch.Tensor) -> torch.Tensor:
                with autocast(run.dev, run.prec):
                    out = self.fn(net, x)
                return out.float().flatten(1)

            return fn

        vals, st = self.store.features(vds, _all_views(len(ds), views), forward, batch_size=cfg.teacher_batch_size,
                                       num_workers=run.workers, device=run.dev, ctx=run.ctx, progress=cfg.progress,
                                       desc=desc)
        self.stats = self.stats.merge(st)
        return vals.reshape(len(ds), views, *self.shape)


def _target_size(cfg: DistillConfig) -> tuple[int, int]:
    return (math.ceil(cfg.seg_size[0] / cfg.target_stride), math.ceil(cfg.seg_size[1] / cfg.target_stride))


def _lowres_logits(size: tuple[int, int]) -> Any:
    def fn(net: SegModel, x: torch.Tensor) -> torch.Tensor:
        out = net.forward_lowres(x)
        if tuple(out.shape[-2:]) != tuple(size):
            down = size[0] < out.shape[-2]
            out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False, antialias=down)
        return out

    return fn


def _deepest_features(net: _Backbone, x: torch.Tensor) -> torch.Tensor:
    return net(x)[-1]


@torch.no_grad()
def _map_shape(net: nn.Module, fn: Any, size: tuple[int, int]) -> tuple[int, int, int]:
    was = net.training
    net.eval()
    out = fn(net, torch.zeros(1, 3, *size))
    net.train(was)
    return tuple(int(v) for v in out.shape[1:])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_segmentation(model: SegModel, ds: SegmentationDataset, renderer: ViewRenderer, *, device: torch.device,
                          precision: str = "fp32", batch_size: int = 16, num_workers: int = 0) -> dict[str, Any]:
    """Confusion matrix over every item at the mask's own resolution -> mIoU, pixel accuracy, IoU per class."""
    vds = SegViewDataset(ds, renderer, 0, AugRecipe(), masks=False)
    items = [(i, 0) for i in range(len(ds))]
    loader = make_loader(vds, [items[s:s + batch_size] for s in range(0, len(items), batch_size)], num_workers)
    k = ds.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    was = model.training
    model.eval().to(device)
    n, bad = 0, 0
    for b in loader:
        bad += len(b.bad)
        if b.x is None:
            continue
        with autocast(device, precision):
            logits = model.forward_lowres(b.x.to(device))
        logits = logits.float()
        for j, i in enumerate(b.index.tolist()):
            mask = ds.load_mask(i)
            up = F.interpolate(logits[j:j + 1], size=mask.shape, mode="bilinear", align_corners=False)
            cm += confusion_matrix(up.argmax(1)[0].cpu().numpy(), mask, k, ds.ignore_index)
            n += 1
    model.train(was)
    return {**segmentation_scores(cm, ds.classes), "n": n, "skipped": bad, "confusion": cm.tolist()}


@torch.no_grad()
def predict_masks(model: SegModel, ds: SegmentationDataset, indices: list[int], renderer: ViewRenderer,
                  device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Arg-max label maps at each image's own resolution (for pictures)."""
    model.eval().to(device)
    out = []
    for i in indices:
        img = ds.load(i)
        x = renderer(img)[None].to(device)
        logits = model.forward_lowres(x).float()
        up = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)
        out.append(up.argmax(1)[0].cpu().numpy())
    return out


# ------------------------------------------------------------------------------------------------
# saving / loading
# ------------------------------------------------------------------------------------------------
def _save_seg(out: Path, name: str, model: SegModel, cfg: DistillConfig, spec: str, width: int,
              renderer: ViewRenderer, classes: list[str]) -> None:
    atomic_torch_save(model.state_dict(), out / f"{name}.pt")
    write_json(out / f"{name}.json", {"task": "segmentation", "spec": spec, "num_classes": model.num_classes,
                                      "classes": classes, "decoder_channels": width, "seg_size": list(cfg.seg_size),
                                      "render": renderer.describe(), "ignore_index": cfg.ignore_index,
                                      "method": cfg.method})


def load_seg_model(out_dir: str | Path, name: str = "student") -> tuple[SegModel, dict[str, Any], ViewRenderer]:
    """A saved segmentation model of a run folder (``student`` or ``teacher``), eval mode, + meta + renderer."""
    out = Path(out_dir)
    meta_path = out / f"{name}.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{out}: no {name}.json (is this a finished segmentation distill run?)")
    meta = json.loads(meta_path.read_text())
    model, _, _ = build_seg_model(meta["spec"], meta["num_classes"], pretrained=False, width=meta["decoder_channels"])
    model.load_state_dict(torch.load(out / f"{name}.pt", map_location="cpu", weights_only=True))
    r = meta["render"]
    renderer = ViewRenderer({"input_size": (3, *r["size"]), "interpolation": "bilinear", "mean": r["mean"],
                             "std": r["std"]})
    return model.eval(), meta, renderer


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def _adapt_teacher(run: _Run, labeled: SegmentationDataset, test: SegmentationDataset | None,
                   size: tuple[int, int]) -> tuple[SegModel, ViewRenderer, dict[str, Any], dict[str, Any]]:
    """Stage (a): an FPN decoder (and, with ``finetune``, the backbone) trained on the labeled pairs."""
    cfg = run.cfg
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    teacher, dc, ident = build_seg_model(cfg.teacher, int(cfg.num_classes), pretrained=True,
                                         width=cfg.teacher_decoder_channels,
                                         freeze_backbone=cfg.teacher_adapt == "head_only")
    render = seg_renderer(dc, size)
    info: dict[str, Any] = {"spec": cfg.teacher, "adapt": cfg.teacher_adapt, "params": seg_param_counts(teacher)}
    if cfg.teacher_adapt == "finetune":
        info["bn_recalibrated"] = recalibrate_folded_batchnorm(teacher, _calibration_batches(labeled, render, cfg))
    vds = SegViewDataset(labeled, render, cfg.transfer_seed, run.recipe, masks=True)
    plan = StepPlan(len(labeled), cfg.adapt.batch_size, cfg.seed)
    res = _stage(run, "teacher", SegFinetuneModule(teacher, cfg.ignore_index, cfg.adapt.label_smoothing), vds, plan,
                 fresh_view_policy(cfg.seed), cfg.adapt.num_steps(len(labeled)), cfg.adapt)
    teacher.eval()
    if run.ctx.is_main:
        _save_seg(run.out, "teacher", teacher, cfg, cfg.teacher, cfg.teacher_decoder_channels, render, labeled.classes)
    info.update(steps=res.steps, train_seconds=res.seconds, forward_passes=res.samples,
                note="forward_passes = training samples (teacher forward; + backward with finetune)")
    if test is not None and run.ctx.is_main:
        ev = evaluate_segmentation(teacher, test, render, device=run.dev, precision=run.prec,
                                   batch_size=cfg.eval_batch_size, num_workers=run.workers)
        info.update(test_miou=ev["miou"], test_pixel_accuracy=ev["pixel_accuracy"],
                    test_per_class_iou=ev["per_class_iou"], test_forward_passes=ev["n"])
    info["seconds"] = round(time.perf_counter() - t0, 3)
    adapted_ident = {"adapted_from": ident, "state_dict_sha256": state_dict_digest(teacher)}
    return teacher, render, info, adapted_ident


def run_seg_distill(cfg: DistillConfig) -> dict[str, Any]:
    """One segmentation run (``task: segmentation``); returns the results dict (also ``results.json``)."""
    cfg = DistillConfig.from_dict(cfg.to_dict()).validate()
    run = _start_run(cfg)
    if isinstance(run, dict):  # finished before
        return run
    t_start = time.perf_counter()
    ctx, dev, prec, out = run.ctx, run.dev, run.prec, run.out
    recipe, workers = run.recipe, run.workers
    size = (int(cfg.seg_size[0]), int(cfg.seg_size[1]))
    k = int(cfg.num_classes)

    labeled, test = open_seg_data(cfg)
    distills = cfg.method in ("task_oriented", "feature_distill")
    report: dict[str, Any] = {
        "task": "segmentation", "method": cfg.method, "seed": cfg.seed, "data_seed": cfg.effective_data_seed(),
        "student": cfg.student, "teacher": cfg.teacher if distills else None,
        "student_init": cfg.student_init if distills else ("pretrained" if cfg.method == "pretrained" else "scratch"),
        "n_labeled": len(labeled), "n_test": len(test) if test is not None else 0, "classes": labeled.classes,
        "seg_size": list(size), "ignore_index": cfg.ignore_index,
    }
    cost: dict[str, Any] = {"teacher_forward": {}, "student_steps": {}, "student_samples": {}, "seconds": {}}

    pretrained = cfg.method == "pretrained" or (distills and cfg.student_init == "pretrained")
    seed_everything(cfg.seed)
    student, s_dc, _ = build_seg_model(cfg.student, k, pretrained=pretrained, width=cfg.decoder_channels)
    s_render = seg_renderer(s_dc, size)
    report["student_params"] = seg_param_counts(student)

    transfer: ImageDataset | None = None
    if distills:
        transfer, tinfo = open_seg_transfer(cfg, labeled)
        report["transfer"] = tinfo
    if pretrained:  # folded BatchNorm (TF-Lite/Coral exports) gets real statistics from the first stage's images
        report["student_bn_recalibrated"] = recalibrate_folded_batchnorm(
            student, _calibration_batches(transfer if transfer is not None else labeled, s_render, cfg))

    if transfer is not None:
        t0 = time.perf_counter()
        if cfg.method == "task_oriented":
            teacher, t_render, tinfo_teacher, t_ident = _adapt_teacher(run, labeled, test, size)
            report["teacher_adapted"] = tinfo_teacher
            cost["teacher_forward"]["adapt"] = tinfo_teacher["forward_passes"]
            cost["teacher_forward"]["test"] = tinfo_teacher.get("test_forward_passes", 0)
            cost["seconds"]["adapt"] = tinfo_teacher["seconds"]
            fn = _lowres_logits(_target_size(cfg))
            targets = _DenseTargets(run, "logits", t_ident, t_render, teacher, (k, *_target_size(cfg)), fn)
        else:
            t_model, t_dc, t_ident = build_model(cfg.teacher, 0, pretrained=True)
            t_bb = _Backbone(t_model, cfg.teacher)
            t_render = seg_renderer(t_dc, size)
            targets = _DenseTargets(run, "deepest_features", t_ident, t_render, t_bb,
                                    _map_shape(t_bb, _deepest_features, size), _deepest_features)
        t1 = time.perf_counter()
        table = targets.compute(transfer, cfg.views, "teacher: transfer set")
        good = np.flatnonzero(np.isfinite(table.reshape(len(transfer), -1)).all(1))
        if len(good) < len(transfer):  # unreadable images leave the transfer set
            transfer = transfer.subset(good, note="readable")
            table = table[good]
            report["transfer"]["n"] = len(transfer)
        cost["teacher_forward"]["transfer"] = len(transfer) * cfg.views
        cost["seconds"]["teacher_transfer"] = round(time.perf_counter() - t1, 3)
        report["target_cache"] = {"what": "stride-%d logits" % cfg.target_stride if cfg.method == "task_oriented"
                                  else "deepest feature map", "shape": list(table.shape[2:]), "dtype": cfg.target_dtype,
                                  "bytes_per_view": int(np.prod(table.shape[2:]) * np.dtype(cfg.target_dtype).itemsize)}
        vds = SegViewDataset(transfer, s_render, cfg.transfer_seed, recipe, masks=False)
        plan = StepPlan(len(transfer), cfg.distill.batch_size, cfg.seed)
        policy = cached_view_policy(cfg.views, len(transfer), cfg.seed)
        steps = cfg.distill.num_steps(len(transfer))
        tab = torch.from_numpy(np.ascontiguousarray(table)).to(dev)
        if cfg.method == "task_oriented":
            module: nn.Module = SegKDModule(student, tab, cfg.temperature)
            res = _stage(run, "distill", module, vds, plan, policy, steps, cfg.distill)
        else:
            for p in student.decoder.parameters():  # the decoder is not part of task-agnostic distillation
                p.requires_grad_(False)
            seed_everything(cfg.seed + 1)
            proj = nn.Conv2d(student.backbone.channels[-1], table.shape[2], 1)
            module = DenseFeatureDistillModule(student, proj, tab)
            res = _stage(run, "distill", module, vds, plan, policy, steps, cfg.distill)
            for p in student.decoder.parameters():
                p.requires_grad_(True)
        del tab
        cost["student_steps"]["distill"] = res.steps
        cost["student_samples"]["distill"] = res.samples
        cost["seconds"]["distill"] = res.seconds
        cost["teacher_forward_computed"] = targets.stats.computed
        cost["teacher_seconds_computed"] = round(targets.stats.seconds, 3)
        spv = targets.store.seconds_per_item
        cost["teacher_seconds_per_view"] = round(spv, 5) if spv else None
        report["distill_last"] = res.last
        report["seconds_knowledge_transfer"] = round(time.perf_counter() - t0, 3)

    # -- (c): fine-tune on the labeled pairs ---------------------------------------------------------
    vds = SegViewDataset(labeled, s_render, cfg.transfer_seed, recipe, masks=True)
    plan = StepPlan(len(labeled), cfg.finetune.batch_size, cfg.seed)
    res = _stage(run, "finetune", SegFinetuneModule(student, cfg.ignore_index, cfg.finetune.label_smoothing), vds,
                 plan, fresh_view_policy(cfg.seed), cfg.finetune.num_steps(len(labeled)), cfg.finetune)
    cost["student_steps"]["finetune"] = res.steps
    cost["student_samples"]["finetune"] = res.samples
    cost["seconds"]["finetune"] = res.seconds
    student.eval()
    report["student_sha256"] = state_dict_digest(student)

    if ctx.is_main:
        t0 = time.perf_counter()
        if test is not None:
            ev = evaluate_segmentation(student, test, s_render, device=dev, precision=prec,
                                       batch_size=cfg.eval_batch_size, num_workers=workers)
            report.update(student_miou=ev["miou"], student_pixel_accuracy=ev["pixel_accuracy"],
                          student_per_class_iou=ev["per_class_iou"], n_test_evaluated=ev["n"],
                          student_confusion=ev["confusion"])
            report["student_accuracy"] = ev["pixel_accuracy"]  # the classification key: pixel accuracy here
        cost["seconds"]["eval"] = round(time.perf_counter() - t0, 3)
        _save_seg(out, "student", student, cfg, cfg.student, cfg.decoder_channels, s_render, labeled.classes)
        if cfg.export_onnx:
            report["onnx"] = _export(out, student, size, test if test is not None else labeled, s_render)
    if report.get("teacher_adapted"):
        report["teacher_miou"] = report["teacher_adapted"].get("test_miou")
        report["teacher_accuracy"] = report["teacher_adapted"].get("test_pixel_accuracy")
    return _finish_run(run, report, cost, t_start)


def _export(out: Path, student: SegModel, size: tuple[int, int], ds: ImageDataset, renderer: ViewRenderer,
            max_images: int = 8) -> dict[str, Any]:
    """ONNX export + per-pixel arg-max agreement of ONNX Runtime with PyTorch on the first test images."""
    from .export import export_onnx, verify_onnx

    path = export_onnx(student, out / "student.onnx", size)
    vds = SegViewDataset(ds, renderer, 0, AugRecipe(), masks=False)
    xs = [vds[(i, 0)][0] for i in range(min(max_images, len(ds)))]
    x = torch.stack([t for t in xs if t is not None])
    check = verify_onnx(path, student.to("cpu"), x)
    return {"path": str(path), "n": check["n"], "max_abs_diff": check["max_abs_diff"],
            "pixel_argmax_agreement": check["top1_agreement"]}
