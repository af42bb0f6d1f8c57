"""``run_distill(config)``: one run end to end; ``run_comparison``: methods x seeds, one table.

Run directory (``out_dir``)::

    config.yaml            the run's config (a later run with a different config refuses to reuse the folder)
    teacher/result.json    adapted teacher: probe or fine-tune info, test accuracy, costs (+ head.pt / final.pt)
    distill/               distillation stage: checkpoint.pt, metrics.jsonl/.csv, final.pt, result.json
    finetune/              student fine-tuning stage: same files
    student.pt, student.json, student.onnx    the final student (state dict + how to rebuild it)
    results.json           accuracy and costs of the run

Every stage that has written ``result.json`` is skipped on a rerun, and an interrupted stage resumes from
its last checkpoint, so re-running the same command after a crash finishes the job.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import CorruptImageError, ImageDataset, open_dataset
from ..features.distributed import DistContext, dist_context
from ..features.extract import default_num_workers, resolve_precision, select_device
from ..models import resolve_model, state_dict_digest
from ..reporting import write_json
from .config import DistillConfig
from .data import StepPlan, ViewDataset, cached_view_policy, fresh_view_policy, make_loader
from .models import (FeatureDistillModule, FinetuneModule, KDModule, TaskTeacher, build_model, feature_dim,
                     recalibrate_folded_batchnorm)
from .targets import CacheStats, TeacherFeatureStore, pooled_forward, teacher_key
from .teacher import fit_linear_probe
from .trainer import LoopSettings, Trainer, TrainResult, atomic_torch_save, autocast, seed_everything
from .views import AugRecipe, ViewRenderer

__all__ = ["evaluate", "load_student", "open_transfer", "prepare_teacher_cache", "run_comparison", "run_distill",
           "summarize"]

_RUN_FILES = ("teacher", "distill", "finetune", "results.json", "student.pt", "student.json", "student.onnx")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _same_source(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return a == b


def open_transfer(cfg: DistillConfig, labeled: ImageDataset | None = None) -> tuple[ImageDataset, dict[str, Any]]:
    """The unlabeled transfer set of a config and how it was made (labels, if any, are never used).

    ``cfg.transfer``: a dataset spec, a ``transferkit curate`` manifest, or None (the target's training
    split). Images identical to labeled ones are dropped (``transfer_exclude_labeled``), then at most
    ``transfer_max_items`` are kept (seeded by ``transfer_seed``).
    """
    from ..curate.manifest import ManifestDataset, is_transfer_manifest

    spec = cfg.transfer or cfg.data
    same = cfg.transfer is None or _same_source(cfg.transfer, cfg.data)
    if is_transfer_manifest(spec):
        ds: ImageDataset = ManifestDataset(spec)
        kind = "manifest"
    else:
        split = cfg.transfer_split or (cfg.train_split if same else None)
        ds = open_dataset(spec, split)
        kind = "dataset"
    return _select_transfer(cfg, ds, labeled, {"spec": str(spec), "kind": kind, "n_source": len(ds)})


def _select_transfer(cfg: DistillConfig, ds: ImageDataset, labeled: ImageDataset | None,
                     info: dict[str, Any]) -> tuple[ImageDataset, dict[str, Any]]:
    """Drop images identical to labeled ones (``transfer_exclude_labeled``), then keep at most
    ``transfer_max_items`` (seeded by ``transfer_seed``); ``info`` gains what was done."""
    spec = info["spec"]
    keep = np.arange(len(ds))
    if cfg.transfer_exclude_labeled and labeled is not None:
        lab = set(labeled.item_digests())
        digests = ds.item_digests()
        keep = np.array([i for i in keep.tolist() if digests[i] not in lab], dtype=np.int64)
        info["excluded_labeled"] = int(len(ds) - len(keep))
    if cfg.transfer_max_items is not None and len(keep) > cfg.transfer_max_items:
        rng = np.random.default_rng([int(cfg.transfer_seed), 4099])
        keep = np.sort(rng.choice(keep, size=cfg.transfer_max_items, replace=False))
    if len(keep) != len(ds):
        ds = ds.subset(keep, note=f"transfer set ({len(keep)} of {len(ds)})")
    if len(ds) == 0:
        raise ValueError(f"the transfer set {spec} is empty (after excluding labeled images)")
    info["n"] = len(ds)
    return ds, info


# ------------------------------------------------------------------------------------------------
# teacher side
# ------------------------------------------------------------------------------------------------
class _TeacherSide:
    """The teacher backbone (built lazily), its rendering and its on-disk feature store."""

    def __init__(self, cfg: DistillConfig, dev: torch.device, prec: str, ctx: DistContext, workers: int,
                 recipe: AugRecipe, backbone: nn.Module | None = None, identity: dict[str, Any] | None = None):
        pre = {"input_size": cfg.teacher_input_size} if cfg.teacher_input_size else {}
        self.resolved = resolve_model(cfg.teacher, num_classes=0, **pre)
        self.data_config = self.resolved.data_config()
        self.renderer = ViewRenderer(self.data_config)
        self._backbone = backbone
        ident = identity or self.resolved.identity()
        if ident is None:  # random-weight teacher: the weights are the identity
            ident = {"state_dict_sha256": state_dict_digest(self.backbone())}
        self.identity = ident
        self.cfg, self.dev, self.prec, self.ctx, self.workers, self.recipe = cfg, dev, prec, ctx, workers, recipe
        key = teacher_key(ident, self.renderer.describe(), prec)
        self.store = TeacherFeatureStore(cfg.cache_dir, key, meta={
            "teacher": cfg.teacher, "identity": ident, "render": self.renderer.describe(), "precision": prec})
        self.stats = CacheStats()

    def backbone(self) -> nn.Module:
        if self._backbone is None:
            self._backbone = self.resolved.build()
        return self._backbone

    def features(self, ds: ImageDataset, items: Sequence[tuple[int, int]], desc: str) -> np.ndarray:
        vds = ViewDataset(ds, self.renderer, self.cfg.transfer_seed, self.recipe)
        feats, st = self.store.features(vds, items, lambda: pooled_forward(self.backbone(), self.dev, self.prec),
                                        batch_size=self.cfg.teacher_batch_size, num_workers=self.workers,
                                        device=self.dev, ctx=self.ctx, progress=self.cfg.progress, desc=desc)
        self.stats = self.stats.merge(st)
        return feats


def _calibration_batches(ds: ImageDataset, renderer: ViewRenderer, cfg: DistillConfig,
                         max_items: int = 512) -> Any:
    """Whole-image views of up to ``max_items`` seeded-random items (for BatchNorm statistics)."""
    rng = np.random.default_rng([int(cfg.seed), 2713])
    idx = np.sort(rng.permutation(len(ds))[:max_items])
    vds = ViewDataset(ds, renderer, cfg.transfer_seed, AugRecipe())
    bs = 64
    loader = make_loader(vds, [[(int(i), 0) for i in idx[s:s + bs]] for s in range(0, len(idx), bs)], 0)
    for b in loader:
        if b.x is not None:
            yield b.x


def _all_views(n: int, views: int) -> list[tuple[int, int]]:
    return [(i, v) for i in range(n) for v in range(views)]


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    cfg: DistillConfig
    ctx: DistContext
    dev: torch.device
    prec: str
    out: Path
    settings: LoopSettings
    recipe: AugRecipe
    workers: int
    digest: str


def _start_run(cfg: DistillConfig) -> _Run | dict[str, Any]:
    """What every run (classification or segmentation) sets up first: threads, process group, device,
    precision, the output folder and the loop settings; or, when a run of the same config has finished in
    the output folder, its results (nothing is left to do)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = dist_context("auto")
    dev = select_device(cfg.device, ctx.local_rank)
    prec = resolve_precision(cfg.precision, dev)
    out = Path(cfg.out_dir)
    digest = cfg.digest()
    if ctx.is_main:
        _prepare_out(out, cfg, digest)
    ctx.barrier()
    rpath = out / "results.json"
    if rpath.exists():
        prev = json.loads(rpath.read_text())
        if prev.get("config_digest") == digest:
            if cfg.export_onnx and "onnx" not in prev and ctx.is_main:  # asked now of a run that finished without
                prev = _export_finished(out, cfg, prev)
            return prev
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(dev, False)
    recipe = AugRecipe(tuple(cfg.aug_scale), tuple(cfg.aug_ratio), cfg.aug_hflip, cfg.aug_vflip)
    settings = LoopSettings(device=dev, precision=prec, grad_accum=cfg.grad_accum, num_workers=workers,
                            checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                            log_formats=tuple(cfg.log_formats), tensorboard=cfg.tensorboard, resume=cfg.resume,
                            progress=cfg.progress, seed=cfg.seed)
    run = _Run(cfg, ctx, dev, prec, out, settings, recipe, workers, digest)
    return run


def _export_finished(out: Path, cfg: DistillConfig, prev: dict[str, Any]) -> dict[str, Any]:
    """``export_onnx`` asked of a run that finished without it: export its saved student, record it."""
    if cfg.task != "classification":
        raise ValueError(f"{out}: this segmentation run finished without an ONNX export; run it again with "
                         "--no-resume --export-onnx")
    student, meta = load_student(out)
    labeled, test = _open_labeled(cfg)
    dc = meta["data_config"]
    prev["onnx"] = _export(out, student, dc, test if test is not None else labeled, ViewRenderer(dc))
    write_json(out / "results.json", prev)
    return prev


def _finish_run(run: _Run, report: dict[str, Any], cost: dict[str, Any], t_start: float) -> dict[str, Any]:
    """Add costs, digest and versions to a run's report and write ``results.json`` (main process)."""
    # stage seconds accumulate over resumed processes; this process alone may have run only the last stages
    this_process = round(time.perf_counter() - t_start, 3)
    stages = sum(float(cost["seconds"].get(k) or 0.0) for k in ("adapt", "teacher_transfer", "distill", "finetune", "eval"))
    cost["seconds"]["this_process"] = this_process
    cost["seconds"]["total"] = round(max(this_process, stages), 3)
    report.update(cost=cost, config_digest=run.digest, versions=_versions())
    if run.ctx.is_main:
        write_json(run.out / "results.json", report)
    run.ctx.barrier()
    return report


def _stage(run: _Run, name: str, module: nn.Module, vds: ViewDataset, plan: StepPlan, policy: Any,
           steps: int, stage_cfg: Any) -> TrainResult:
    """Train ``module`` as stage ``name`` unless a finished result exists (then load its weights)."""
    sdir = run.out / name
    done = sdir / "result.json"
    if done.exists() and (sdir / "final.pt").exists():
        module.load_state_dict(torch.load(sdir / "final.pt", map_location="cpu", weights_only=True))
        module.to(run.dev)
        return TrainResult(**json.loads(done.read_text()))
    trainer = Trainer(module, vds, plan, policy, steps=steps, stage=stage_cfg, settings=run.settings, stage_dir=sdir,
                      name=name, ctx=run.ctx, digest=run.digest)
    res = trainer.fit()
    if run.ctx.is_main:
        atomic_torch_save(module.state_dict(), sdir / "final.pt")
        write_json(done, res.to_dict())
        trainer.checkpoint_path.unlink(missing_ok=True)
    run.ctx.barrier()
    return res


@torch.no_grad()
def evaluate(model: nn.Module, ds: ImageDataset, renderer: ViewRenderer, *, device: torch.device,
             precision: str = "fp32", batch_size: int = 128, num_workers: int = 0) -> dict[str, Any]:
    """Top-1 accuracy of ``model`` on the whole-image view of every item of ``ds`` (unreadable ones skipped)."""
    vds = ViewDataset(ds, renderer, 0, AugRecipe())
    items = [(i, 0) for i in range(len(ds))]
    loader = make_loader(vds, [items[s:s + batch_size] for s in range(0, len(items), batch_size)], num_workers)
    was = model.training
    model.eval().to(device)
    correct, n, bad = 0, 0, 0
    per_class = np.zeros((len(ds.classes), 2), dtype=np.int64)
    for b in loader:
        bad += len(b.bad)
        if b.x is None:
            continue
        with autocast(device, precision):
            pred = model(b.x.to(device)).argmax(1).cpu()
        hit = (pred == b.label)
        correct += int(hit.sum())
        n += len(b)
        np.add.at(per_class, (b.label.numpy(), 0), hit.numpy().astype(np.int64))
        np.add.at(per_class, (b.label.numpy(), 1), 1)
    model.train(was)
    acc = correct / n if n else float("nan")
    return {"accuracy": acc, "n": n, "skipped": bad,
            "per_class": {c: (int(h) / int(t) if t else None) for c, (h, t) in zip(ds.classes, per_class)}}


def _accuracy_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    ok = np.isfinite(logits).all(1)
    return float((logits[ok].argmax(1) == labels[ok]).mean()) if ok.any() else float("nan")


def _adapt_teacher(run: _Run, labeled: ImageDataset, test: ImageDataset | None,
                   n_classes: int) -> tuple[_TeacherSide, nn.Linear, dict[str, Any]]:
    """Step (a): a task head on the teacher (linear probe or full fine-tune) + its test accuracy."""
    cfg, out = run.cfg, run.out
    tdir = out / "teacher"
    frozen = _TeacherSide(cfg, run.dev, run.prec, run.ctx, run.workers, run.recipe)
    info: dict[str, Any] = {"spec": cfg.teacher, "adapt": cfg.teacher_adapt, "input_size": frozen.data_config["input_size"]}
    t0 = time.perf_counter()
    if cfg.teacher_adapt == "linear_probe":
        lab_views = cfg.views
        feats = frozen.features(labeled, _all_views(len(labeled), lab_views), "teacher: labeled")
        feats = feats.reshape(len(labeled), lab_views, -1)
        probe = fit_linear_probe(feats, labeled.targets, n_classes, l2_grid=cfg.probe_l2, folds=cfg.probe_folds,
                                 seed=cfg.effective_data_seed())
        head, side = probe.head, frozen
        info.update(probe.info())
        info["forward_passes"] = len(labeled) * lab_views
        if run.ctx.is_main:
            atomic_torch_save(head.state_dict(), tdir / "head.pt")
    else:  # full fine-tune: backbone + head, cross-entropy on the labeled views
        backbone = frozen.backbone()
        info["bn_recalibrated"] = recalibrate_folded_batchnorm(backbone, _calibration_batches(labeled, frozen.renderer, cfg))
        dim = feature_dim(backbone, tuple(frozen.data_config["input_size"][1:]))
        seed_everything(cfg.seed)
        teacher = TaskTeacher(backbone, nn.Linear(dim, n_classes))
        vds = ViewDataset(labeled, frozen.renderer, cfg.transfer_seed, run.recipe)
        plan = StepPlan(len(labeled), cfg.adapt.batch_size, cfg.seed)
        steps = cfg.adapt.num_steps(len(labeled))
        res = _stage(run, "teacher", FinetuneModule(teacher, cfg.adapt.label_smoothing), vds, plan,
                     fresh_view_policy(cfg.seed), steps, cfg.adapt)
        teacher.eval()
        head = teacher.head
        ident = {"adapted_from": frozen.identity, "state_dict_sha256": state_dict_digest(teacher.backbone)}
        side = _TeacherSide(cfg, run.dev, run.prec, run.ctx, run.workers, run.recipe, backbone=teacher.backbone,
                            identity=ident)
        info.update(steps=res.steps, train_seconds=res.seconds, forward_passes=res.samples,
                    note="forward_passes = training samples (forward + backward)")
    info["seconds"] = round(time.perf_counter() - t0, 3)
    if test is not None:
        tf = side.features(test, [(i, 0) for i in range(len(test))], "teacher: test")
        with torch.no_grad():
            logits = head.float()(torch.from_numpy(np.nan_to_num(tf))).numpy()
        logits[~np.isfinite(tf).all(1)] = np.nan
        info["test_accuracy"] = _accuracy_from_logits(logits, test.targets)
        info["test_forward_passes"] = len(test)
    return side, head, info


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def _prepare_out(out: Path, cfg: DistillConfig, digest: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cpath = out / "config.yaml"
    if cpath.exists():
        try:
            old = DistillConfig.from_yaml(cpath).digest()
        except (ValueError, TypeError):
            old = None
        started = any((out / name).exists() for name in _RUN_FILES)  # a failed start wrote only config.yaml
        if started and (old != digest or not cfg.resume):
            if cfg.resume:
                raise ValueError(f"{out} holds a run with a different configuration; pick another out_dir, or "
                                 "set resume=False (--no-resume) to discard it")
            for name in _RUN_FILES:  # only what a run writes
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    cfg.to_yaml(cpath)


def _check_readable(labeled: ImageDataset) -> None:
    """Every labeled image decodes: fine-tuning needs them all, so say it before the teacher and distillation
    stages, not after them (the labeled set is the small one)."""
    bad = []
    for i in range(len(labeled)):
        try:
            labeled.load(i)
        except CorruptImageError as exc:
            bad.append(str(exc))
    if bad:
        raise ValueError(f"{len(bad)} unreadable labeled image(s), e.g. {bad[0]}; remove them from the data "
                         "(fine-tuning trains on every labeled image)")


def _open_labeled(cfg: DistillConfig) -> tuple[ImageDataset, ImageDataset | None]:
    """The few-shot labeled training set and the test set of a config."""
    # one fixed generated train/test split for every seed (split_seed=0): the run seed only picks the
    # few-shot subsample, so labeled images can never fall into another seed's test set
    labeled = open_dataset(cfg.data, cfg.train_split, per_class=cfg.per_class, seed=cfg.effective_data_seed(),
                           split_seed=0)
    if set(labeled.classes) == {"images", "masks"}:
        raise ValueError(f"{cfg.data}: images/ + masks/ folders look like a segmentation dataset; set "
                         "task: segmentation (and num_classes, ignore_index)")
    if len(labeled.classes) < 2:
        raise ValueError(f"{cfg.data}: the labeled set has {len(labeled.classes)} class(es); need at least 2")
    _check_readable(labeled)
    test = (open_dataset(cfg.data, cfg.test_split, per_class=cfg.test_per_class, split_seed=0)
            if cfg.test_split else None)
    if test is not None and test.classes != labeled.classes:
        raise ValueError(f"{cfg.data}: the {cfg.test_split!r} split has classes {test.classes[:5]}... but the "
                         f"{cfg.train_split!r} split has {labeled.classes[:5]}...")
    return labeled, test


def prepare_teacher_cache(cfg: DistillConfig) -> dict[str, Any]:
    """Run the frozen teacher over everything a config will need (labeled views, test set, transfer views)
    and cache it, without training anything. Lets a grid of runs pay the teacher once, up front (and lets
    parallel jobs start from a full cache). Not available for ``teacher_adapt='finetune'`` (the transfer
    features then depend on the fine-tuned teacher)."""
    cfg = DistillConfig.from_dict(cfg.to_dict()).validate()
    if cfg.task == "segmentation":  # the adapted teacher's logits depend on the run's own labeled subset
        raise ValueError("prepare_teacher_cache is for classification; a segmentation run fills its cache itself")
    if cfg.method not in ("task_oriented", "feature_distill"):
        return {"teacher_forward_computed": 0}
    if cfg.method == "task_oriented" and cfg.teacher_adapt != "linear_probe":
        raise ValueError("prepare_teacher_cache needs a frozen teacher (teacher_adapt='linear_probe')")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = dist_context("auto")
    dev = select_device(cfg.device, ctx.local_rank)
    prec = resolve_precision(cfg.precision, dev)
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(dev, False)
    recipe = AugRecipe(tuple(cfg.aug_scale), tuple(cfg.aug_ratio), cfg.aug_hflip, cfg.aug_vflip)
    side = _TeacherSide(cfg, dev, prec, ctx, workers, recipe)
    labeled, test = _open_labeled(cfg)
    transfer, _ = open_transfer(cfg, labeled)
    if cfg.method == "task_oriented":
        side.features(labeled, _all_views(len(labeled), cfg.views), "teacher: labeled")
        if test is not None:
            side.features(test, [(i, 0) for i in range(len(test))], "teacher: test")
    side.features(transfer, _all_views(len(transfer), cfg.views), "teacher: transfer set")
    return {"teacher_forward_computed": side.stats.computed, "seconds": round(side.stats.seconds, 3),
            "cache": str(side.store.dir), "seconds_per_view": side.store.seconds_per_item}


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run one config (see the module docstring); returns the results dict (also in ``results.json``).

    ``task: segmentation`` configs run :func:`transferkit.distill.segpipeline.run_seg_distill`."""
    cfg = DistillConfig.from_dict(cfg.to_dict()).validate()
    if cfg.task == "segmentation":
        from .segpipeline import run_seg_distill

        return run_seg_distill(cfg)
    run = _start_run(cfg)
    if isinstance(run, dict):  # finished before
        return run
    t_start = time.perf_counter()
    ctx, dev, prec, out = run.ctx, run.dev, run.prec, run.out
    recipe, workers = run.recipe, run.workers

    # -- data -----------------------------------------------------------------------------------------
    labeled, test = _open_labeled(cfg)
    n_classes = len(labeled.classes)
    report: dict[str, Any] = {
        "method": cfg.method, "seed": cfg.seed, "data_seed": cfg.effective_data_seed(), "student": cfg.student,
        "teacher": cfg.teacher if cfg.method in ("task_oriented", "feature_distill") else None,
        "student_init": cfg.student_init if cfg.method in ("task_oriented", "feature_distill") else
        ("pretrained" if cfg.method == "pretrained" else "scratch"),
        "n_labeled": len(labeled), "n_test": len(test) if test is not None else 0, "classes": labeled.classes,
    }
    cost: dict[str, Any] = {"teacher_forward": {}, "student_steps": {}, "student_samples": {}, "seconds": {}}

    # -- student ----------------------------------------------------------------------------------------
    pretrained = cfg.method == "pretrained" or (cfg.method in ("task_oriented", "feature_distill")
                                                and cfg.student_init == "pretrained")
    seed_everything(cfg.seed)
    student, s_dc, _ = build_model(cfg.student, n_classes, pretrained=pretrained, input_size=cfg.student_input_size)
    s_render = ViewRenderer(s_dc)
    report["student_input_size"] = list(s_dc["input_size"])
    report["student_params"] = sum(p.numel() for p in student.parameters())

    # -- (a) + (b): knowledge transfer --------------------------------------------------------------
    teacher_side: _TeacherSide | None = None
    transfer: ImageDataset | None = None
    if cfg.method in ("task_oriented", "feature_distill"):
        transfer, tinfo = open_transfer(cfg, labeled)
        report["transfer"] = tinfo
    if pretrained:  # folded BatchNorm (TF-Lite/Coral exports) gets real statistics from the first stage's images
        report["student_bn_recalibrated"] = recalibrate_folded_batchnorm(
            student, _calibration_batches(transfer if transfer is not None else labeled, s_render, cfg))
    if transfer is not None:
        if cfg.method == "task_oriented":
            teacher_side, head, tinfo_teacher = _adapt_teacher(run, labeled, test, n_classes)
            report["teacher_adapted"] = tinfo_teacher
            cost["teacher_forward"]["adapt"] = tinfo_teacher["forward_passes"]
            cost["teacher_forward"]["test"] = tinfo_teacher.get("test_forward_passes", 0)
            cost["seconds"]["adapt"] = tinfo_teacher["seconds"]
        else:
            teacher_side = _TeacherSide(cfg, dev, prec, ctx, workers, recipe)
        t0 = time.perf_counter()
        feats = teacher_side.features(transfer, _all_views(len(transfer), cfg.views), "teacher: transfer set")
        feats = feats.reshape(len(transfer), cfg.views, -1)
        good = np.flatnonzero(np.isfinite(feats).all(axis=(1, 2)))
        if not len(good):
            raise ValueError(f"none of the {len(transfer)} transfer images of {cfg.transfer or cfg.data} could be "
                             "read (or, for a curated manifest, cropped as its boxes say)")
        if len(good) < len(transfer):  # unreadable images leave the transfer set
            transfer = transfer.subset(good, note="readable")
            feats = feats[good]
            report["transfer"]["n"] = len(transfer)
        cost["teacher_forward"]["transfer"] = len(transfer) * cfg.views
        cost["seconds"]["teacher_transfer"] = round(time.perf_counter() - t0, 3)
        vds = ViewDataset(transfer, s_render, cfg.transfer_seed, recipe)
        plan = StepPlan(len(transfer), cfg.distill.batch_size, cfg.seed)
        policy = cached_view_policy(cfg.views, len(transfer), cfg.seed)
        steps = cfg.distill.num_steps(len(transfer))
        table = torch.from_numpy(feats)
        if cfg.method == "task_oriented":
            with torch.no_grad():
                table = head.float()(table)  # (N, views, classes): the teacher's task predictions
            module: nn.Module = KDModule(student, table.to(dev), temperature=cfg.temperature,
                                         soft_weight=cfg.soft_weight, hard_weight=cfg.hard_weight)
            res = _stage(run, "distill", module, vds, plan, policy, steps, cfg.distill)
        else:
            size = tuple(s_dc["input_size"][1:])
            ds_dim = feature_dim(student, size, pre_logits=True)
            clf = student.get_classifier()
            for p in clf.parameters():  # the classifier is not part of task-agnostic distillation
                p.requires_grad_(False)
            seed_everything(cfg.seed + 1)
            proj = nn.Linear(ds_dim, table.shape[-1])
            module = FeatureDistillModule(student, proj, table.to(dev), cfg.feature_loss)
            res = _stage(run, "distill", module, vds, plan, policy, steps, cfg.distill)
            for p in clf.parameters():
                p.requires_grad_(True)
        cost["student_steps"]["distill"] = res.steps
        cost["student_samples"]["distill"] = res.samples
        cost["seconds"]["distill"] = res.seconds
        cost["teacher_forward_computed"] = teacher_side.stats.computed
        cost["teacher_seconds_computed"] = round(teacher_side.stats.seconds, 3)
        spv = teacher_side.store.seconds_per_item
        cost["teacher_seconds_per_view"] = round(spv, 5) if spv else None
        report["distill_last"] = res.last

    # -- (c): fine-tune on the labeled set -----------------------------------------------------------
    vds = ViewDataset(labeled, s_render, cfg.transfer_seed, recipe)
    plan = StepPlan(len(labeled), cfg.finetune.batch_size, cfg.seed)
    steps = cfg.finetune.num_steps(len(labeled))
    res = _stage(run, "finetune", FinetuneModule(student, cfg.finetune.label_smoothing), vds, plan,
                 fresh_view_policy(cfg.seed), steps, cfg.finetune)
    cost["student_steps"]["finetune"] = res.steps
    cost["student_samples"]["finetune"] = res.samples
    cost["seconds"]["finetune"] = res.seconds
    student.eval()
    report["student_sha256"] = state_dict_digest(student)  # per process: DDP ranks must agree

    # -- evaluation, saving, export ------------------------------------------------------------------
    if ctx.is_main:
        t0 = time.perf_counter()
        if test is not None:
            ev = evaluate(student, test, s_render, device=dev, precision=prec, batch_size=cfg.eval_batch_size,
                          num_workers=workers)
            report["student_accuracy"] = ev["accuracy"]
            report["student_per_class"] = ev["per_class"]
            report["n_test_evaluated"] = ev["n"]
        cost["seconds"]["eval"] = round(time.perf_counter() - t0, 3)
        _save_student(out, student, cfg, labeled.classes, s_dc)
        if cfg.export_onnx:
            report["onnx"] = _export(out, student, s_dc, test or labeled, s_render)
    if report.get("teacher_adapted"):
        report["teacher_accuracy"] = report["teacher_adapted"].get("test_accuracy")
    return _finish_run(run, report, cost, t_start)


def _save_student(out: Path, student: nn.Module, cfg: DistillConfig, classes: list[str],
                  data_config: dict[str, Any]) -> None:
    atomic_torch_save(student.state_dict(), out / "student.pt")
    write_json(out / "student.json", {"spec": cfg.student, "num_classes": len(classes), "classes": classes,
                                      "input_size": cfg.student_input_size, "data_config": data_config,
                                      "method": cfg.method})


def load_student(out_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The final student of a run folder (eval mode) and its metadata (classes, data config)."""
    out = Path(out_dir)
    meta_path = out / "student.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{out}: no student.json (is this a finished distill run?)")
    meta = json.loads(meta_path.read_text())
    if meta.get("task") == "segmentation":
        from .segpipeline import load_seg_model

        seg, meta, _ = load_seg_model(out, "student")
        return seg, meta
    model, _, _ = build_model(meta["spec"], meta["num_classes"], pretrained=False, input_size=meta.get("input_size"))
    model.load_state_dict(torch.load(out / "student.pt", map_location="cpu", weights_only=True))
    return model.eval(), meta


def _export(out: Path, student: nn.Module, data_config: dict[str, Any], ds: ImageDataset,
            renderer: ViewRenderer) -> dict[str, Any]:
    from .export import export_onnx, verify_onnx

    size = (int(data_config["input_size"][1]), int(data_config["input_size"][2]))
    path = export_onnx(student, out / "student.onnx", size)
    vds = ViewDataset(ds, renderer, 0, AugRecipe())
    k = min(32, len(ds))
    x = torch.stack([vds[(i, 0)][0] for i in range(k) if vds[(i, 0)][0] is not None])
    check = verify_onnx(path, student.to("cpu"), x)
    return {"path": str(path), **check}


def _versions() -> dict[str, str]:
    import timm

    from .. import __version__

    return {"transferkit": __version__, "torch": torch.__version__, "timm": timm.__version__}


# ------------------------------------------------------------------------------------------------
# comparisons
# ------------------------------------------------------------------------------------------------
def run_comparison(cfg: DistillConfig, methods: Sequence[str], seeds: Sequence[int],
                   out_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every (method, seed) under ``out_root/<method>/seed<k>`` (finished runs are reused)."""
    root = Path(out_root or cfg.out_dir)
    results = []
    for m in methods:
        for s in seeds:
            results.append(run_distill(cfg.replace(method=m, seed=int(s), out_dir=str(root / m / f"seed{s}"))))
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean(vals)), (float(statistics.stdev(vals)) if len(vals) > 1 else 0.0)


def summarize(results: Sequence[dict[str, Any]], by: Sequence[str] = ("method",)) -> list[dict[str, Any]]:
    """One row per group: student accuracy mean/std over seeds, teacher accuracy, mean costs.

    For segmentation runs the score is the test mean IoU (``metric: miou``), not the pixel accuracy."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(tuple(_get(r, k) for k in by), []).append(r)
    rows = []
    for key, rs in groups.items():
        seg = any(r.get("task") == "segmentation" for r in rs)
        acc_m, acc_s = _mean_std([r.get("student_miou" if seg else "student_accuracy") for r in rs])
        t_m, t_s = _mean_std([r.get("teacher_miou" if seg else "teacher_accuracy") for r in rs])
        c = [r.get("cost", {}) for r in rs]
        row = dict(zip(by, key))
        if seg:
            row["metric"] = "miou"
        row.update({
            "seeds": len(rs), "student_acc": acc_m, "student_acc_std": acc_s,
            "teacher_acc": t_m, "teacher_acc_std": t_s,
            "teacher_fwd": float(np.mean([sum(v for k, v in x.get("teacher_forward", {}).items() if k != "test")
                                          for x in c])),
            "student_steps": float(np.mean([sum(x.get("student_steps", {}).values()) for x in c])),
            "student_s": float(np.mean([sum(v for k, v in x.get("seconds", {}).items()
                                            if k in ("distill", "finetune")) for x in c])),
            "teacher_s_est": float(np.mean([_teacher_seconds(x) for x in c])),
            "total_s": float(np.mean([x.get("seconds", {}).get("total", float("nan")) for x in c])),
        })
        rows.append(row)
    return rows


def _teacher_seconds(cost: dict[str, Any]) -> float:
    """Teacher time a run needs on its own: forward passes x measured seconds per view (cache-independent)."""
    spv = cost.get("teacher_seconds_per_view")
    n = sum(v for k, v in cost.get("teacher_forward", {}).items() if k != "test")
    return float(n * spv) if spv else 0.0


def _get(r: dict[str, Any], key: str) -> Any:
    cur: Any = r
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur
