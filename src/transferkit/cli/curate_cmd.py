"""`transferkit curate`: build a retrieval-augmented transfer set from a generic image pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import check_output_file, one_line, readable_warnings, split_list, verbosity_options

EXAMPLES = """\b
Examples:
  transferkit curate --queries ../shared/data/eurosat/eurosat.zip --gallery ../shared/data/cifar10/cifar10.zip \\
      --budget 2000 -m local-dir:../shared/weights/mobilenetv2_100.in1k -o transfer_set.csv
  transferkit curate -c curate.yaml --budget 5000     # options from a YAML file, one overridden
  torchrun --nproc_per_node 4 -m transferkit curate -c curate.yaml \
      --gallery '/data/pool/{00000..00999}.tar' --index ivfpq --index-path pool_index   # 4 embedding ranks
"""


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src != click.core.ParameterSource.DEFAULT


@click.command("curate", epilog=EXAMPLES)
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="YAML file of curate options (command-line options override it).")
@click.option("--queries", help="Labeled target dataset used as queries (folder, zip, csv, npz, idx).")
@click.option("--gallery", multiple=True,
              help="Gallery (pool) dataset; repeat or comma-separate for several. Also WebDataset tar shards "
                   "('pool/{00000..00099}.tar') and precomputed-embedding folders "
                   "(img_emb/*.npy + metadata/*.parquet).")
@click.option("--budget", type=int, help="Transfer-set size (number of crops).")
@click.option("--model", "-m", help="Embedding model: any spec `transferkit extract` accepts.")
@click.option("--out", "-o", default="transfer_set.csv", show_default=True, help="Manifest to write.")
@click.option("--strategy", type=click.Choice(["balanced", "random"]), default="balanced", show_default=True,
              help="Query-balanced retrieval, or a random set from the same pool (baseline).")
@click.option("--query-split", default="train", show_default=True, help="Split of --queries used as queries.")
@click.option("--query-per-class", type=int, help="Use only this many query images per class (seeded).")
@click.option("--gallery-split", default="all", show_default=True, help="Split of every --gallery dataset.")
@click.option("--gallery-per-class", type=int, help="Subsample every gallery dataset per class (seeded).")
@click.option("--test", default="auto", show_default=True,
              help="Leakage guard: the target's test images ('auto': the queries' test split; 'none': off).")
@click.option("--test-split", default="test", show_default=True,
              help="Split of --queries whose images the leakage guard keeps out of the transfer set.")
@click.option("--test-per-class", type=int, help="Guard against only this many test images per class (seeded).")
@click.option("--scales", default="1,0.5", show_default=True, help="Gallery crop scales (1 = whole image).")
@click.option("--grid", default=None, help="Grid size per scale (default ceil(1/scale)); one value or a list.")
@click.option("--query-scales", default="1", show_default=True, help="Query crop scales (multi-crop queries).")
@click.option("--index", "index_kind", type=click.Choice(["auto", "flat", "ivf", "ivfpq", "numpy"]), default="auto",
              show_default=True, help="Search index (auto: exact up to --exact-max items, IVF-PQ above).")
@click.option("--exact-max", type=int, default=200_000, show_default=True,
              help="With --index auto: exact search up to this many gallery crops, IVF-PQ above.")
@click.option("--nlist", type=int, help="IVF lists (default ~4 sqrt(n)).")
@click.option("--nprobe", type=int, default=32, show_default=True,
              help="IVF lists searched per query (more: better recall, slower).")
@click.option("--pq-m", type=int, default=32, show_default=True, help="IVF-PQ bytes per vector.")
@click.option("--rerank", type=click.IntRange(min=1), default=4, show_default=True,
              help="IVF-PQ: re-rank the top k x this many by exact cosine (1: off; more: better recall@k, slower).")
@click.option("--index-path", help="Save the built index in this folder and reuse it while the gallery is unchanged.")
@click.option("--ondisk", is_flag=True, default=None,
              help="IVF kinds: keep the inverted lists in a memory-mapped file under --index-path (not in RAM).")
@click.option("--shard-size", type=int, help="Crops embedded per resumable shard (bounds the RAM used; default 8192).")
@click.option("--candidates", type=int, help="Neighbours per query crop (default 4 x quota + 16, grown as needed).")
@click.option("--dup-threshold", type=float, default=0.98, show_default=True,
              help="Cosine above which a crop counts as a near-duplicate of a selected one (1 = off).")
@click.option("--leak-threshold", type=float, default=0.995, show_default=True,
              help="Cosine to a test image above which a crop is excluded as leakage.")
@click.option("--max-per-image", type=int, help="At most this many crops of one gallery image.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True, help="Embedding batch size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--cache-dir", default=".transferkit_cache", show_default=True, help="Feature/embedding cache.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the per-class subsamples, the random strategy and the index training.")
@verbosity_options
@click.pass_context
def command(ctx: click.Context, config_path: str | None, **opts: Any) -> None:
    """Curate a transfer set: query-balanced crop retrieval from --gallery with --queries.

    Writes the manifest (a CSV read directly by `transferkit distill`) and, next to it, the report
    (transfer_set.csv -> transfer_set.report.json).
    """
    from ..curate.index import IndexConfig
    from ..curate.pipeline import CurateConfig, GallerySource, curate

    doc: dict[str, Any] = {}
    if config_path:
        import yaml

        try:
            doc = yaml.safe_load(open(config_path).read()) or {}
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"not valid YAML ({' '.join(str(exc).split())})", param_hint="--config") from exc
        if not isinstance(doc, dict):
            raise click.BadParameter("the config file must hold a mapping", param_hint="--config")
    index_doc = dict(doc.pop("index", {}) or {})
    plain = {"queries", "budget", "model", "out", "strategy", "query_split", "query_per_class", "test", "test_split", "test_per_class",
             "shard_size",
             "scales", "grid", "query_scales", "candidates", "dup_threshold", "leak_threshold", "max_per_image",
             "batch_size", "device", "cache_dir", "seed"}
    for name in plain:
        if _given(ctx, name) or name not in doc:
            if opts[name] is not None:
                doc[name] = opts[name]
    if opts["gallery"]:
        doc["gallery"] = [GallerySource(g, split=opts["gallery_split"], per_class=opts["gallery_per_class"])
                          for g in split_list(opts["gallery"])]
    elif _given(ctx, "gallery_split") or _given(ctx, "gallery_per_class"):
        # never ignore an option silently: these only shape galleries named with --gallery
        raise click.UsageError("--gallery-split/--gallery-per-class apply to --gallery; set split/per_class "
                               "on each gallery entry of the --config file instead")
    for cli_name, key in (("index_kind", "kind"), ("exact_max", "exact_max"), ("nlist", "nlist"),
                          ("nprobe", "nprobe"), ("pq_m", "m"), ("rerank", "rerank"), ("index_path", "path"),
                          ("ondisk", "ondisk")):
        if (_given(ctx, cli_name) or key not in index_doc) and opts[cli_name] is not None:
            index_doc[key] = opts[cli_name]
    if doc.get("dup_threshold") is not None and float(doc["dup_threshold"]) >= 1.0:
        doc["dup_threshold"] = None
    if opts["quiet"]:
        doc["progress"] = False
    missing = [n for n in ("queries", "gallery", "budget", "model") if doc.get(n) in (None, "", [], ())]
    if missing:
        raise click.UsageError(f"missing {', '.join('--' + m for m in missing)} (or set them in --config)")
    out = check_output_file(doc.get("out") or "transfer_set.csv")  # before the embeddings, not after
    if out.suffix.lower() in {".json", ".yaml", ".yml", ".parquet", ".npz", ".npy"}:
        raise click.BadParameter(f"{out}: the manifest is a CSV file (name it .csv); the report is written next "
                                 f"to it as {out.with_suffix('.report.json').name}", param_hint="--out")
    if index_doc.get("path") and Path(index_doc["path"]).exists() and not Path(index_doc["path"]).is_dir():
        raise click.BadParameter(f"{index_doc['path']} is a file; the index is saved in a folder",
                                 param_hint="--index-path")
    from ..data import CorruptImageError

    try:
        cfg = CurateConfig.from_dict({**doc, "index": IndexConfig(**index_doc)})
        with readable_warnings(opts["verbose"]):
            result = curate(cfg)
    except (KeyError, ValueError, TypeError, CorruptImageError, OSError) as exc:  # TypeError: unknown config key
        raise click.ClickException(one_line(exc)) from exc
    rep = result.report
    sel = rep["selection"]
    click.echo(f"wrote {result.manifest} ({sel['selected']} crops for {rep['queries']['n']} queries, "
               f"quota {sel['quota_per_query']}) and {result.manifest.with_suffix('.report.json')}")
    idx = rep["index"]
    rec = idx.get("recall_at_k")
    click.echo(f"index {idx.get('kind')} ({idx.get('backend', '-')})"
               + (f", recall@{rec['k']} vs exact {rec['recall']:.3f}" if rec else ""))
    lg = rep["leakage_guard"]
    if lg["test"] is None:
        click.echo(f"leakage guard: off (no test images known; --test names them); skipped {sel['skipped']}")
    else:
        click.echo(f"leakage guard ({lg['test_images']} test images): {lg['exact_copies_images']} exact copies, "
                   f"{lg['excluded_crops']} candidate crops ({lg['excluded_images']} images) near test images "
                   f"excluded; skipped {sel['skipped']}")
    for src, c in sorted(rep["composition"].items(), key=lambda kv: -kv[1]["count"]):
        click.echo(f"  {c['count']:>7}  {c['fraction']:.3f}  {src}")
