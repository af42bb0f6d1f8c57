"""`transferkit finetune`: ground-truth fine-tuning of one (model, dataset) pair or of a whole benchmark spec."""

from __future__ import annotations

import math
import os
from typing import Any

import click

from ._common import (check_output_dir, check_output_file, one_line, readable_warnings, split_list,
                      verbosity_options)

EXAMPLES = """\b
Examples:
  transferkit finetune -m local-dir:../shared/weights/mobilenetv1_025.in1k -d ../shared/data/dtd10/dtd10.zip \\
      --epochs 3 --per-class-train 20 --img-size 128 --out groundtruth.csv
  transferkit finetune --spec benchmarks/offline/spec.yaml --shard 0/2   # every missing pair of a benchmark
"""


def _floats(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value.replace(",", " ").split()]
    except ValueError as exc:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from exc
    if not all(math.isfinite(v) and v >= 0 for v in out):  # nan / inf / negative rates: caught here, not by torch
        raise click.BadParameter(f"expected finite numbers >= 0, got {value!r}")
    return out


def _names(value: tuple[str, ...] | str | None) -> list[str] | None:
    return split_list(value) or None


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError as exc:
        raise click.BadParameter(f"--shard takes i/n (e.g. 0/2), got {value!r}") from exc
    return i, n


@click.command("finetune", epilog=EXAMPLES)
@click.option("--model", "-m", "model", help="Model spec (timm name, local-dir:<folder>, arch@checkpoint, ...).")
@click.option("--data", "-d", help="Dataset with train and test splits (folder, zip, csv, npz, fashion-mnist).")
@click.option("--name", "model_name", help="Model name in the ground-truth CSV (default: from the spec).")
@click.option("--dataset-name", help="Dataset name in the ground-truth CSV (default: the file stem).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), help="Benchmark spec: fine-tune every "
              "pair missing from its ground-truth CSV.")
@click.option("--models", multiple=True, help="With --spec: only these models (comma-separated or repeated names).")
@click.option("--datasets", multiple=True,
              help="With --spec: only these datasets (comma-separated or repeated names).")
@click.option("--shard", default="0/1", show_default=True, help="With --spec: take every n-th pair, i/n "
              "(run n processes, one per core, on one table).")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="YAML file of budget options (the keys of the options below, e.g. epochs: 5).")
@click.option("--epochs", type=int, help="Training epochs per grid point (default 10); test accuracy after each.")
@click.option("--batch-size", "-b", type=int, help="Training batch size (default 32).")
@click.option("--per-class-train", type=int, help="Seeded stratified subset of the train split.")
@click.option("--per-class-test", type=int, help="Seeded stratified subset of the test split.")
@click.option("--img-size", type=int, help="Resolution cap: min(this, the model's native size).")
@click.option("--lrs", help="Learning rates (default: the paper's 1e-5,2e-5,5e-5).")
@click.option("--weight-decays", help="Weight decays (default: the paper's 1e-2,1e-4).")
@click.option("--head-lr-scale", type=float, help="Learning-rate multiplier of the new head.")
@click.option("--augment", type=click.Choice(["none", "flip", "flip_crop"]),
              help="Training augmentation: none, horizontal flip, or flip + random resized crop (default).")
@click.option("--bn", type=click.Choice(["train", "frozen"]),
              help="BatchNorm running statistics: updated while training (default) or kept frozen.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning-rate schedule over the epochs (default constant, as the paper).")
@click.option("--seed", type=int, help="Seed of the subsets, head initialisation, shuffling and augmentation "
              "(default 0).")
@click.option("--device", help="auto (default), cpu, cuda, cuda:1, mps.")
@click.option("--amp", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Mixed precision (auto: bf16/fp16 on a GPU that supports it, fp32 on CPU).")
@click.option("--threads", "num_threads", type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--work-dir", help="Resumable run state and decoded-image cache (default .transferkit_cache/finetune).")
@click.option("--out", "-o", "output", type=click.Path(dir_okay=False),
              help="Ground-truth CSV to add the result to (its folder is checked writable first).")
@click.option("--force", is_flag=True, help="Fine-tune even if the pair is already in the ground-truth CSV.")
@verbosity_options
def command(model: str | None, data: str | None, model_name: str | None, dataset_name: str | None,
            spec_path: str | None, models: tuple[str, ...], datasets: tuple[str, ...], shard: str,
            config_path: str | None, force: bool, quiet: bool, verbose: bool, **opts: Any) -> None:
    """Fine-tune pre-trained models to get ground-truth accuracies (ITM paper protocol, Sec. 4.1).

    A new head on the backbone, full fine-tuning with AdamW over the lr x weight-decay grid, test accuracy
    after every epoch; the ground truth is the best test accuracy over epochs and grid. Runs resume where
    they stopped (kill them at any time). One pair: --model and --data; a whole table: --spec.
    """
    from ..finetune import FinetuneConfig, finetune, ground_truth_pairs

    opts["lrs"], opts["weight_decays"] = _floats(opts.get("lrs")), _floats(opts.get("weight_decays"))
    overrides = {k: v for k, v in opts.items() if v is not None}
    if "work_dir" in overrides:  # relative to the current folder, not to a spec file
        overrides["work_dir"] = os.path.abspath(overrides["work_dir"])
    if quiet:
        overrides["progress"] = False
    if "output" in overrides:  # before hours of fine-tuning, not after
        check_output_file(overrides["output"])
    if "work_dir" in overrides:
        check_output_dir(overrides["work_dir"], "--work-dir")
    try:
        if spec_path:
            if model or data:
                raise click.UsageError("give either --spec or --model/--data, not both")
            from ..benchmark.groundtruth import compute_ground_truth
            from ..benchmark.spec import load_spec

            spec = load_spec(spec_path).select(_names(models), _names(datasets))
            if config_path:
                import yaml

                spec.finetune.update(yaml.safe_load(open(config_path)) or {})
            if "output" in overrides:
                spec.ground_truth = os.path.abspath(overrides.pop("output"))
            with readable_warnings(verbose):
                compute_ground_truth(spec, shard=_shard(shard), force=force, overrides=overrides, log=click.echo)
            return
        if not model or not data:
            raise click.UsageError("give --model and --data (one pair) or --spec (a whole benchmark)")
        base = {"model": model, "data": data, "model_name": model_name, "dataset_name": dataset_name, **overrides}
        cfg = FinetuneConfig.from_yaml(config_path, **base) if config_path else FinetuneConfig.from_dict(base)
        if cfg.output and not force and (cfg.display_model, cfg.display_dataset) in ground_truth_pairs(cfg.output):
            click.echo(f"{cfg.display_model} on {cfg.display_dataset} is already in {cfg.output} (use --force)")
            return
        with readable_warnings(verbose):
            res = finetune(cfg)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise click.ClickException(one_line(exc)) from exc
    click.echo(f"{res.model} on {res.dataset}: {res.accuracy:.2f}% (lr {res.best_lr:g}, wd {res.best_weight_decay:g}, "
               f"epoch {res.best_epoch}; {res.n_train} train / {res.n_test} test images at {res.img_size} px, "
               f"{res.seconds:.0f} s on {res.device})")
    for h in res.histories:
        click.echo(f"  lr {h['lr']:g} wd {h['weight_decay']:g}: " + " ".join(f"{a:.1f}" for a in h["history"]))
    if cfg.output:
        click.echo(f"added to {cfg.output}")
