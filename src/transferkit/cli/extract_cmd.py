"""`transferkit extract`: frozen features of a model zoo on one dataset, through the feature cache."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ._common import check_output_dir, one_line, readable_warnings, require_images, verbosity_options


def _models(values: tuple[str, ...]) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.5,0.5,0.5, got {value!r}", param_hint=option) from None
    if len(out) != 3:
        raise click.BadParameter(f"expected 3 numbers (one per RGB channel), got {len(out)}", param_hint=option)
    if option == "--std" and min(out) <= 0:
        raise click.BadParameter(f"every std must be > 0, got {value!r}", param_hint=option)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", name).strip("_") or "model"


def _cache_status(md: dict) -> str:
    """hit / computed / resumed (k of n chunks from cache)."""
    if md.get("cache_hit"):
        return "hit"
    k, n = md.get("chunks_from_cache", 0), md.get("total_chunks", 0)
    return f"resumed ({k} of {n} chunks from cache)" if k else "computed"


EXAMPLES = """\b
Examples:
  transferkit extract -m local-dir:../shared/weights/mobilenetv2_100.in1k,local-dir:../shared/weights/mobilenetv1_025.in1k \\
      -d ../shared/data/dtd10/dtd10.zip --split train --per-class 40 --out feats/
  transferkit extract -m resnet50.a1_in1k -d my_images/ --out feats/    # hub weights (needs network once)
  transferkit rank feats/*.npz --methods logme,leep                     # then rank the exported files
"""


@click.command("extract", epilog=EXAMPLES)
@click.option("--models", "-m", multiple=True,
              help="Model spec (repeat, or comma-separate): timm name, local-dir:<folder>, <arch>@<checkpoint>, path.")
@click.option("--zoo", "zoo_file", type=click.Path(dir_okay=False, exists=True), help="Zoo YAML file.")
@click.option("--data", "-d", required=True,
              help="Dataset: image folder, .zip, .csv manifest, .npz, IDX folder/file, or 'fashion-mnist'.")
@click.option("--split", default=None, help="Split (train/test/val/all); default train if present, else all.")
@click.option("--per-class", type=int, default=None, help="Seeded stratified subsample: at most N images per class.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Seed of subsampling and of splits made here.")
@click.option("--test-fraction", default=0.2, show_default=True,
              help="Share of each class in 'test' when the dataset has no native split.")
@click.option("--cache", default=".transferkit_cache", show_default=True, help="Feature cache directory.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also export <out>/<model>.npz (X, y, P) for `transferkit rank` (checked writable first).")
@click.option("--batch-size", "-b", default=64, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers (default: by device and cores).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Write the cache every N images (default 1024; also at least every 30 s of work), so an "
                   "interrupted run resumes from there.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Forward-pass precision (auto: bf16/fp16 on GPUs that support it, fp32 on CPU).")
@click.option("--layer", default=None, help="Module name to take features from (default: pooled penultimate).")
@click.option("--input-size", type=click.IntRange(min=8), default=None, help="Override the model's input resolution.")
@click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Override the centre-crop fraction, in (0, 1].")
@click.option("--interpolation", default=None, help="Override the resize interpolation (bilinear, bicubic...).")
@click.option("--mean", default=None, help="Override the normalisation mean, e.g. '0.5,0.5,0.5'.")
@click.option("--std", default=None, help="Override the normalisation std.")
@click.option("--no-probs", is_flag=True, help="Do not store source-classifier probabilities.")
@click.option("--keep-background", is_flag=True, help="Keep a 'background' output in the probabilities.")
@click.option("--strict", is_flag=True, help="Stop on the first unreadable image instead of skipping it.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbosity_options
def command(models: tuple[str, ...], zoo_file: str | None, data: str, split: str | None, per_class: int | None,
            seed: int, test_fraction: float, cache: str, out_dir: str | None, batch_size: int,
            workers: int | None, chunk_size: int | None, device: str, precision: str, layer: str | None,
            input_size: int | None, crop_pct: float | None, interpolation: str | None, mean: str | None, std: str | None,
            no_probs: bool, keep_background: bool, strict: bool, no_progress: bool, quiet: bool,
            verbose: bool) -> None:
    """Extract features of MODELS (or a --zoo) on --data into the cache (and --out as .npz).

    A second run with the same inputs computes nothing; an interrupted run resumes. Under
    `torchrun --nproc_per_node N --no-python transferkit extract ...` the work is split over the processes.
    """
    from ..data import CorruptImageError
    from ..features import ExtractionInterrupted, dist_context, extract_zoo
    from ..reporting import OutputWriteError, format_table

    specs = _models(models)
    if bool(specs) == bool(zoo_file):
        raise click.UsageError("give either --models or --zoo")
    preprocess = {"input_size": input_size, "crop_pct": crop_pct, "interpolation": interpolation,
                  "mean": _floats(mean, "--mean"), "std": _floats(std, "--std")}
    if out_dir:  # before minutes of extraction, not after
        check_output_dir(out_dir)
    try:
        with readable_warnings(verbose):
            sets = extract_zoo(zoo_file if zoo_file else specs, data, split=split, cache_dir=cache, per_class=per_class,
                               seed=seed, batch_size=batch_size, num_workers=workers, device=device,
                               progress=not (no_progress or quiet), test_fraction=test_fraction,
                               precision=precision, layer=layer, probs=not no_probs,
                               drop_background=not keep_background, strict=strict, chunk_size=chunk_size,
                               **{k: v for k, v in preprocess.items() if v is not None})
    except ExtractionInterrupted as exc:  # one line: what was kept, how to resume; 130 (SIGINT) / 143 (SIGTERM)
        click.echo(f"Interrupted: kept {exc.kept_images} of {exc.n_images} images of {exc.model} "
                   f"({exc.kept_chunks} chunk{'s' if exc.kept_chunks != 1 else ''}) in {exc.path}; models "
                   "finished before are cached too. Run the same command again to resume.", err=True)
        raise SystemExit(128 + exc.signum) from None
    except (KeyError, CorruptImageError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(one_line(exc)) from exc
    require_images(sets, data)
    if not dist_context().is_main:
        return
    rows = []
    for name, fs in sets.items():
        row = {"model": name, "n": len(fs), "dim": fs.dim,
               "probs": fs.probs.shape[1] if fs.probs is not None else "-",
               "cache": _cache_status(fs.metadata),
               "seconds": fs.metadata.get("seconds", 0.0) if not fs.metadata.get("cache_hit") else 0.0,
               "skipped": len(fs.metadata.get("skipped", []))}
        if out_dir:
            try:
                row["file"] = str(fs.save_npz(Path(out_dir) / f"{_safe(name)}.npz"))
            except OutputWriteError as exc:
                raise click.ClickException(f"{exc}; the features are kept in the cache {cache}") from exc
        rows.append(row)
    click.echo(format_table(rows, precision=2))
