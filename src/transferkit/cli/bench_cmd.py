"""`transferkit bench`: run a benchmark spec (or a built-in suite) and write the report."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import check_output_dir, deprecation, one_line, readable_warnings, split_list, verbosity_options

EXAMPLES = """\b
Examples:
  transferkit bench benchmarks/offline/spec.yaml --methods logme,leep,parc -o report/
  transferkit bench benchmarks/offline/spec.yaml --replot          # rebuild the report, no features
  transferkit bench itm10 --data-root DATASETS/ --checkpoint MoCov3-B16=mocov3.pth,SimMIM-B16=simmim.pth
"""


@click.command("bench", epilog=EXAMPLES)
@click.argument("spec")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Report folder (default: the spec's; checked writable before any work).")
@click.option("--methods", help="Comma-separated estimator names or 'all' (default: the spec's).")
@click.option("--models", "-m", multiple=True,
              help="Only these models (comma-separated or repeated names). (Old spelling `-m logme,leep` for "
                   "--methods still works, with a note.)")
@click.option("--datasets", multiple=True, help="Only these datasets (comma-separated or repeated names).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Suites: folder holding the datasets.")
@click.option("--checkpoint", "checkpoints", multiple=True,
              metavar="NAME=PATH",
              help="Suites: local checkpoint of a model timm has no weights for (repeat or comma-separate).")
@click.option("--skip-missing", is_flag=True, help="Suites: leave out models/datasets that are not available.")
@click.option("--gt", "gt", help="Ground truth instead of the spec's: a CSV (model, dataset, accuracy) or "
              "published:<table>.")
@click.option("--cache", "cache_dir", help="Feature cache folder (default: the spec's).")
@click.option("--device", help="Feature extraction device (default: the spec's).")
@click.option("--replot", "--from-records", "replot", is_flag=True,
              help="Rebuild the report from the saved scores (results.json in the report folder) and the "
                   "ground-truth CSV with its per-image records: metrics, intervals, paired comparisons and "
                   "stability tables are recomputed; no model, no features.")
@click.option("--n-boot", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap samples over test images for the intervals.")
@click.option("--spread-seeds", help="Estimator seeds of the seed-spread check, e.g. 0,1,2 (default: the spec's; "
              "'none' to skip).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG figures.")
@verbosity_options
def command(spec: str, out_dir: str | None, methods: str | None, models: tuple[str, ...], datasets: tuple[str, ...],
            data_root: str | None, checkpoints: tuple[str, ...], skip_missing: bool, gt: str | None,
            cache_dir: str | None, device: str | None, replot: bool, n_boot: int, spread_seeds: str | None,
            no_plots: bool, quiet: bool, verbose: bool) -> None:
    """Benchmark transferability estimators against fine-tuned ground truth: per method the mean weighted
    tau and top-1 regret with 95 % bootstrap intervals over test images, per-dataset values, wall-clock,
    paired comparisons, leave-one-model-out and seed-spread checks, and the baseline rows random, params,
    source_accuracy (and the linear_probe estimator).

    SPEC is a benchmark YAML file or a built-in suite (itm10: the ITM paper's zoo and Table 3 ground
    truth; needs --data-root and --checkpoint for MoCov3-B16 / SimMIM-B16). Datasets may be image folders
    (<root>/<split>/<class>/<image>) or zips of them. Writes report.md, metrics.csv, scores.csv,
    results.json, intervals.csv, paired.csv and PNG figures.

    Intervals need the per-image records that `transferkit finetune` writes next to the ground-truth CSV
    (<csv stem>_predictions/); without them the report has point values only. The report is reproducible
    from the committed CSV + records + results.json alone: `transferkit bench SPEC --replot`
    (alias --from-records).
    """
    from ..benchmark.report import write_report
    from ..benchmark.runner import BenchmarkResult, run_benchmark
    from ..benchmark.spec import load_spec
    from ..benchmark.suites import SUITES, get_suite
    from ..estimators import list_estimators

    names = lambda v: split_list(v) or None  # noqa: E731
    known = set(list_estimators()) | {"all"}
    if models and methods is None and all(m.lower().replace("-", "_") in known for m in split_list(models)):
        deprecation("`bench -m` now means --models in every command; read as --methods "
                    f"{','.join(split_list(models))} (spell it --methods)")
        methods, models = ",".join(split_list(models)), ()
    try:
        if spec in SUITES and not Path(spec).exists():
            if not data_root:
                raise click.UsageError(f"suite {spec} needs --data-root (the folder holding its datasets)")
            ckpts = {}
            for c in split_list(checkpoints):
                if "=" not in c:
                    raise click.BadParameter(f"--checkpoint takes NAME=PATH, got {c!r}")
                k, v = c.split("=", 1)
                ckpts[k.strip()] = v.strip()
            bench = get_suite(spec, data_root=data_root, checkpoints=ckpts, skip_missing=skip_missing,
                              datasets=names(datasets))
        else:
            bench = load_spec(spec).select(None, names(datasets))
        bench = bench.select(names(models), None)
        if methods:
            bench.methods = methods
        from ..estimators import list_estimators

        unknown = [m for m in bench.method_list() if m.lower().replace("-", "_") not in set(list_estimators())]
        if unknown:  # before any feature extraction, not after it
            raise click.BadParameter(f"unknown method(s) {unknown}; see `transferkit estimators`")
        if gt:
            bench.ground_truth = gt if gt.startswith("published:") else str(Path(gt).resolve())
        if cache_dir:
            bench.features.cache_dir = str(Path(cache_dir).resolve())
        if device:
            bench.features.device = device
        if spread_seeds:
            try:
                bench.spread_seeds = [] if spread_seeds.strip().lower() == "none" else \
                    [int(s) for s in spread_seeds.split(",") if s.strip()]
            except ValueError:
                raise click.BadParameter(f"--spread-seeds takes integers like 0,1,2, got {spread_seeds!r}") from None
        out = Path(out_dir) if out_dir else bench.report_dir()
        check_output_dir(out)  # before features and scoring, not after
        gt_csv = bench.ground_truth_csv() if hasattr(bench, "ground_truth_csv") else None
        if replot:
            from ..benchmark.runner import rescore

            result = BenchmarkResult.load(out)
            if datasets:
                keep = set(names(datasets))
                result.datasets = [d for d in result.datasets if d.dataset in keep]
                if not result.datasets:
                    raise ValueError(f"{out}/results.json has none of the datasets {sorted(keep)}")
            if gt_csv is not None and gt_csv.exists():
                rescore(result, bench.load_ground_truth())
        else:
            with readable_warnings(verbose):
                result = run_benchmark(bench, progress=not quiet, log=(lambda m: None) if quiet else click.echo)
        paths = write_report(result, out, bench.description, plots=not no_plots, ground_truth_csv=gt_csv,
                             n_boot=n_boot, log=click.echo)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise click.ClickException(one_line(exc)) from exc
    from ..benchmark.report import headline_markdown

    click.echo("\n" + headline_markdown(result, analysis=paths.get("analysis")))
    click.echo(f"\nreport: {paths['report']}")
