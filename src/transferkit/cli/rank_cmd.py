"""`transferkit rank`: score a model zoo on one dataset with several estimators."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..ranking import DEFAULT_METHODS, MethodResult, ZooFeatures, load_feature_file, rank_zoo, read_ground_truth
from ..reporting import format_table, write_csv, write_json


def _split_methods(value: str) -> list[str]:
    from ..estimators import list_estimators

    if value.strip().lower() == "all":
        return list_estimators()
    methods = [m.strip() for m in value.split(",") if m.strip()]
    known = set(list_estimators())
    unknown = [m for m in methods if m.lower().replace("-", "_") not in known]
    if unknown:
        raise click.BadParameter(f"unknown method(s) {unknown}; see `transferkit estimators`")
    return methods


def _extracted_zoo(models: tuple[str, ...], zoo_file: str | None, data: str, split: str | None,
                   cache: str, per_class: int | None, seed: int, device: str) -> list[ZooFeatures]:
    from ..features import extract_zoo

    spec: list[str] | str = zoo_file if zoo_file else list(models)
    sets = extract_zoo(spec, data, split=split, cache_dir=cache, per_class=per_class, seed=seed,
                       device=device, progress=True)
    return [ZooFeatures(name, fs.features, fs.labels, fs.probs) for name, fs in sets.items()]


def _print_results(results: list[MethodResult]) -> None:
    models = sorted({m for r in results for m in r.scores})
    for r in results:
        if r.error:
            click.echo(f"\n{r.method}: skipped - {r.error}")
            continue
        rows = [{"rank": i + 1, "model": m, "score": s} for i, (m, s) in enumerate(r.ranking())]
        click.echo(f"\n{r.method}  ({r.seconds:.2f} s for {len(models)} models)")
        click.echo(format_table(rows, precision=4))


@click.command("rank")
@click.argument("features", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--methods", "-m", default=",".join(DEFAULT_METHODS), show_default=True,
              help="Comma-separated estimator names, or 'all'.")
@click.option("--gt", "gt_path", type=click.Path(dir_okay=False),
              help="Ground-truth CSV (model, accuracy[, dataset]) -> rank metrics.")
@click.option("--gt-dataset", help="Use only rows of this dataset from the ground-truth CSV.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="transferkit_rank",
              show_default=True, help="Directory for scores.csv / scores.json / metrics.csv.")
@click.option("--seed", default=0, show_default=True, help="random_state passed to every estimator.")
@click.option("--demo", is_flag=True, help="Rank the embedded demo zoo (no files or network needed).")
@click.option("--models", multiple=True, help="Extract features of these models (with --data).")
@click.option("--zoo", "zoo_file", type=click.Path(dir_okay=False), help="Zoo YAML (with --data).")
@click.option("--data", help="Dataset to extract features from (folder, zip, csv, npz, idx).")
@click.option("--split", default=None, help="Dataset split to use with --data (e.g. train).")
@click.option("--per-class", type=int, default=None, help="Stratified subsample per class with --data.")
@click.option("--cache", default=".transferkit_cache", show_default=True, help="Feature cache directory.")
@click.option("--device", default="auto", show_default=True)
def command(features: tuple[str, ...], methods: str, gt_path: str | None, gt_dataset: str | None,
            out_dir: str, seed: int, demo: bool, models: tuple[str, ...], zoo_file: str | None,
            data: str | None, split: str | None, per_class: int | None, cache: str, device: str) -> None:
    """Rank models by transferability from FEATURES (.npz files with X, y[, P]).

    The model name is the file stem. All files must hold the same target images in the same order.
    """
    method_list = list(dict.fromkeys(m.lower().replace("-", "_") for m in _split_methods(methods)))
    if demo:
        from ..demo import write_demo_zoo

        tmp = Path(out_dir) / "demo_zoo"
        paths, demo_gt = write_demo_zoo(tmp, seed=seed)
        features = tuple(str(p) for p in paths)
        gt_path = gt_path or str(demo_gt)
        click.echo(f"demo zoo: {len(paths)} models on scikit-learn digits (written to {tmp})")
    if (models or zoo_file) and not data:
        raise click.UsageError("--models/--zoo need --data")
    if data and not (models or zoo_file):
        raise click.UsageError("--data needs --models or --zoo")
    try:
        zoo = [load_feature_file(p) for p in features]
        if data:
            zoo += _extracted_zoo(models, zoo_file, data, split, cache, per_class, seed, device)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not zoo:
        raise click.UsageError("give feature files, --models/--zoo with --data, or --demo")

    with click.progressbar(length=len(method_list), label="scoring", file=sys.stderr) as bar:
        try:
            results = rank_zoo(zoo, method_list, random_state=seed, on_method=lambda m: bar.update(1))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    _print_results(results)

    out = Path(out_dir)
    rows = [{"method": r.method, "model": m, "score": s, "rank": i + 1, "seconds": r.seconds}
            for r in results for i, (m, s) in enumerate(r.ranking())]
    write_csv(out / "scores.csv", rows)
    payload = {"methods": {r.method: {"scores": r.scores, "seconds": r.seconds, "error": r.error}
                           for r in results}}

    if gt_path:
        from ..metrics import rank_metrics

        try:
            gt = read_ground_truth(gt_path, gt_dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        missing = [z.name for z in zoo if z.name not in gt]
        if missing:
            raise click.ClickException(f"ground truth has no accuracy for model(s) {missing}")
        metric_rows = []
        for r in results:
            if r.error:
                continue
            try:
                metrics = rank_metrics(r.scores, {m: gt[m] for m in r.scores})
            except ValueError as exc:
                raise click.ClickException(f"rank metrics for {r.method}: {exc}") from exc
            row = {"method": r.method, **metrics, "seconds": r.seconds}
            metric_rows.append(row)
        click.echo("\nrank metrics against " + gt_path)
        shown = ["method", "weighted_tau_scipy", "weighted_tau_itm", "kendall_tau", "spearman_rho",
                 "pearson_r", "top1_relative_accuracy", "regret", "seconds"]
        click.echo(format_table(metric_rows, columns=[c for c in shown if metric_rows and c in metric_rows[0]],
                                precision=3))
        click.echo("(all metrics, including Model-Spider's weighted-tau convention, in metrics.csv)")
        write_csv(out / "metrics.csv", metric_rows)
        payload["ground_truth"] = gt
        payload["metrics"] = metric_rows
    write_json(out / "scores.json", payload)
    click.echo(f"\nwrote {out / 'scores.csv'} and {out / 'scores.json'}"
               + (f" and {out / 'metrics.csv'}" if gt_path else ""))
