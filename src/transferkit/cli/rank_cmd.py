"""`transferkit rank`: score a model zoo on one dataset with several estimators.

Order of work: parse and validate every input (methods, output folder, ground truth, feature files,
model names) -> extract features (if --models/--zoo) -> score -> print -> write. Anything that can be
wrong with the inputs fails in one line before minutes of extraction or scoring.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from ..ranking import (DEFAULT_METHODS, MethodResult, ZooFeatures, check_accuracies, load_feature_file, rank_zoo,
                       read_ground_truth)
from ..reporting import format_table, write_csv, write_json
from .rank_report import (plot_recommendation, provenance, render_details, render_dropped, render_method_table,
                          render_recommendation, score_rows, scores_payload)
from ._common import (check_output_dir, deprecation, note, one_line, readable_warnings, require_images,
                      split_list, verbosity_options)

EXAMPLES = """\b
Examples:
  transferkit rank --demo
  transferkit rank feats/*.npz --methods logme,sfda,etran --gt accuracies.csv --out results/
  transferkit rank -m local-dir:../shared/weights/mobilenetv2_100.in1k,local-dir:../shared/weights/mobilenetv1_025.in1k \\
      -d ../shared/data/dtd10/dtd10.zip --split train --per-class 40 --methods logme,leep
"""


def _split_methods(value: str) -> list[str]:
    """Estimator names from --methods. The consensus is not run as a method here: the recommendation always
    computes it (asking for it alone runs its ingredients)."""
    from ..consensus import CONSENSUS_METHODS
    from ..estimators import list_estimators

    if value.strip().lower() == "all":
        return [m for m in list_estimators() if m != "consensus"]
    methods = split_list(value)
    known = set(list_estimators())
    unknown = [m for m in methods if m.lower().replace("-", "_") not in known]
    if unknown:
        raise click.BadParameter(f"unknown method(s) {unknown}; see `transferkit estimators`",
                                 param_hint="--methods")
    if not methods:
        raise click.BadParameter("no method given", param_hint="--methods")
    return [m for m in methods if m.lower() != "consensus"] or list(CONSENSUS_METHODS)


def _looks_like_methods(values: list[str]) -> bool:
    """True when every value of -m is an estimator name: the old meaning of `rank -m` (--methods)."""
    from ..estimators import list_estimators

    known = set(list_estimators()) | {"all"}
    return bool(values) and all(v.lower().replace("-", "_") in known for v in values)


def _model_names(models: list[str], zoo_file: str | None) -> list[str]:
    """Display names of the models to extract, known before anything is loaded."""
    from ..models import ModelEntry, read_zoo

    try:
        entries = read_zoo(zoo_file) if zoo_file else [ModelEntry.from_spec(m) for m in models]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise click.ClickException(f"{zoo_file}: {exc}") from exc
    return [e.name for e in entries]


def check_ground_truth(gt: dict[str, float], path: str) -> None:
    """:func:`transferkit.ranking.check_accuracies`, as a one-line CLI error."""
    try:
        check_accuracies(gt, path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_gt_covers(gt: dict[str, float], names: list[str], path: str) -> None:
    missing = [n for n in names if n not in gt]
    if missing:
        raise click.ClickException(
            f"{path}: no accuracy for model(s) {', '.join(missing)} (it has {', '.join(sorted(gt))})")


def _check_shapes(z: ZooFeatures, source: str) -> None:
    """One model's file must be self-consistent before anything is scored."""
    X, y = np.asarray(z.X), np.asarray(z.y)
    if X.ndim != 2:
        raise click.ClickException(f"{source}: X must be 2-D (N x D), got shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:  # a column of labels: the same labels
        z.y = y = y.ravel()
    if y.ndim != 1:
        raise click.ClickException(f"{source}: y must be 1-D (one label per row of X), got shape {y.shape}")
    if len(y) != len(X):
        raise click.ClickException(f"{source}: X has {len(X)} rows but y has {len(y)} labels")
    if z.P is not None and len(z.P) != len(X):
        raise click.ClickException(f"{source}: X has {len(X)} rows but P has {len(z.P)}")


def _halving_zoo(models: list[str], zoo_file: str | None, data: str, split: str | None, cache: str,
                 per_class: int | None, sample_seed: int, extra: dict, score, progress: bool):
    """`--budget fast`: successive halving (transferkit.halving); returns (zoo, recommendation, rounds)."""
    import time

    from ..data import open_dataset
    from ..features import extract_features
    from ..features.extract import DecodedImages
    from ..halving import successive_halving
    from ..models import ModelEntry, read_zoo

    entries = read_zoo(zoo_file) if zoo_file else [ModelEntry.from_spec(m) for m in models]
    by_name = {e.name: e for e in entries}
    ds = open_dataset(data, split, per_class=per_class, seed=sample_seed)
    ds._decoded_images = DecodedImages()  # type: ignore[attr-defined]
    clock = {"t0": time.perf_counter(), "done": 0}

    def extract(name: str, positions):
        fs = extract_features(by_name[name], ds, cache_dir=cache, seed=sample_seed, progress=progress,
                              positions=positions, **extra)
        clock["done"] += int(fs.metadata.get("computed_images", 0) or 0)
        return ZooFeatures(name, fs.features, fs.labels, fs.probs, dict(fs.metadata))

    def on_round(k: int, n: int, alive: list[str], share: float) -> None:
        from ..halving import class_prefix_positions

        spans = None if share == 1.0 else class_prefix_positions(ds.targets, share)
        n_img = len(ds) if spans is None else sum(b - a for a, b in spans)
        took = time.perf_counter() - clock["t0"]
        eta = ""
        if clock["done"]:  # seconds per extracted image so far x images this round at most
            eta = f"; this round at most ~{took / clock['done'] * n_img * len(alive):.0f} s"
        if progress:
            click.echo(f"round {k} of {n}: {len(alive)} models left, {n_img} images each ({share:.0%} of each "
                       f"class){eta}", err=True)

    try:
        return successive_halving([e.name for e in entries], extract, score, ds.targets, on_round=on_round)
    finally:
        del ds._decoded_images  # type: ignore[attr-defined]


def _extracted_zoo(models: list[str], zoo_file: str | None, data: str, split: str | None, cache: str,
                   per_class: int | None, sample_seed: int, device: str, batch_size: int,
                   workers: int | None, strict: bool, chunk_size: int | None,
                   progress: bool, budget: str = "full", score=None, img_size: int | None = None):
    from ..data import CorruptImageError
    from ..features import ExtractionInterrupted, extract_zoo

    spec: list[str] | str = zoo_file if zoo_file else list(models)
    extra = {"chunk_size": chunk_size} if chunk_size else {}
    if img_size:  # a cap: models whose own input is smaller keep theirs
        extra["max_img_size"] = img_size
    try:
        if budget == "fast":
            return _halving_zoo(models, zoo_file, data, split, cache, per_class, sample_seed,
                                dict(extra, device=device, batch_size=batch_size, num_workers=workers,
                                     strict=strict), score, progress)
        sets = extract_zoo(spec, data, split=split, cache_dir=cache, per_class=per_class, seed=sample_seed,
                           device=device, batch_size=batch_size, num_workers=workers, strict=strict,
                           progress=progress, **extra)
    except ExtractionInterrupted as exc:  # what was kept and how to resume; exit 130 (SIGINT) / 143 (SIGTERM)
        click.echo(f"Interrupted: kept {exc.kept_images} of {exc.n_images} images of {exc.model} in {exc.path}; "
                   "models finished before are cached too. Run the same command again to resume.", err=True)
        raise SystemExit(128 + exc.signum) from None
    except (KeyError, CorruptImageError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(one_line(exc)) from exc
    require_images(sets, data)
    return [ZooFeatures(name, fs.features, fs.labels, fs.probs, dict(fs.metadata)) for name, fs in sets.items()]


# -- printing (small functions: the rank report can replace them) ----------------------------------------
def print_left_out(results: list[MethodResult], sources: dict[str, str]) -> None:
    """One line per model a method could not score, grouped when several methods left it out alike."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in results:
        if r.error:
            continue
        for model, reason in r.failed.items():
            grouped.setdefault((model, reason), []).append(r.method)
    for (model, reason), methods in grouped.items():
        where = f" ({sources[model]})" if model in sources and sources[model] != model else ""
        click.echo(f"{', '.join(methods)}: left out model {model!r}{where}: {reason}", err=True)


def print_results(results: list[MethodResult]) -> None:
    for r in results:
        if r.error:
            click.echo(f"\n{r.method}: skipped - {r.error}")
            continue
        rows = [{"rank": i + 1, "model": m, "score": s} for i, (m, s) in enumerate(r.ranking())]
        click.echo(f"\n{r.method}  ({r.seconds:.2f} s for {len(r.scores)} models)")
        click.echo(format_table(rows, precision=4))


def print_metrics(metric_rows: list[dict], gt_path: str) -> None:
    click.echo("\nrank metrics against " + gt_path)
    shown = ["method", "weighted_tau_scipy", "weighted_tau_itm", "kendall_tau", "spearman_rho",
             "pearson_r", "top1_relative_accuracy", "regret", "seconds"]
    click.echo(format_table(metric_rows, columns=[c for c in shown if metric_rows and c in metric_rows[0]],
                            precision=3))
    click.echo("(all metrics, including Model-Spider's weighted-tau convention, in metrics.csv)")


def print_next_steps(demo: bool, out: Path) -> None:
    """After the main job: what to run on one's own data."""
    if not demo:
        return
    click.echo(
        "\nnext, on your own data (a folder or zip of <split>/<class>/<image>):\n"
        "  transferkit extract -m MODEL1,MODEL2 -d my_data.zip --split train --per-class 40 --out feats/\n"
        "  transferkit rank feats/*.npz --out results/         (add --gt accuracies.csv if you have some)\n"
        "  (or in one step: transferkit rank -m MODEL1,MODEL2 -d my_data.zip --split train)\n"
        "MODEL is a timm name (downloads when online) or local-dir:<folder> with config.json + weights;\n"
        f"the demo's own feature files are in {out / 'demo_zoo'} (transferkit rank {out / 'demo_zoo'}/*.npz).")


@click.command("rank", epilog=EXAMPLES)
@click.argument("features", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--methods", default=None, metavar="LIST",
              help=f"Comma-separated estimator names, or 'all' (default: {','.join(DEFAULT_METHODS)}).")
@click.option("--gt", "gt_path", type=click.Path(dir_okay=False),
              help="Ground-truth CSV (model, accuracy[, dataset]) -> rank metrics; checked before any work.")
@click.option("--gt-dataset", help="Use only rows of this dataset from the ground-truth CSV.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="transferkit_rank",
              show_default=True, help="Folder for scores.csv / scores.json / metrics.csv (checked writable first).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="random_state of every estimator (k-means, random projections, ITM's training). "
                   "Does not change which images are used: see --sample-seed.")
@click.option("--seeds", "seeds_opt", default=None, metavar="LIST",
              help="Estimator seeds, e.g. 0,1,2: stochastic methods (nleep, pactran, ncti, itm, linear_probe) run once per "
                   "seed and report mean ± std; deterministic ones run once (default: --seed only).")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="Save rank.png in --out: consensus and every method's normalised score per model.")
@click.option("--demo", is_flag=True, help="Rank the embedded demo zoo (no files or network needed).")
@click.option("--models", "-m", multiple=True, metavar="SPECS",
              help="Extract features of these models with --data (repeat or comma-separate): timm name, "
                   "local-dir:<folder>, <arch>@<checkpoint>. (Old spelling `-m logme,leep` for --methods "
                   "still works, with a note.)")
@click.option("--zoo", "zoo_file", type=click.Path(dir_okay=False), help="Zoo YAML (with --data).")
@click.option("--data", "-d", help="Dataset to extract features from (folder, zip, csv, npz, idx).")
@click.option("--split", default=None, help="Dataset split to use with --data (e.g. train; default train if "
              "present, else all).")
@click.option("--per-class", type=int, default=None, help="Stratified subsample: at most N images per class "
              "with --data.")
@click.option("--sample-seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the --per-class image subsample (and of the demo zoo's data).")
@click.option("--cache", default=".transferkit_cache", show_default=True, help="Feature cache directory.")
@click.option("--device", default="auto", show_default=True,
              help="Feature extraction device: auto, cpu, cuda, cuda:1, mps.")
@click.option("--batch-size", "-b", default=64, show_default=True, type=int, help="Extraction batch size.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers (default: by device and cores).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Write the feature cache every N images (default 1024; also at least every 30 s of work), "
                   "so an interrupted run resumes from there.")
@click.option("--budget", type=click.Choice(["auto", "full", "fast"]), default="auto", show_default=True,
              help="fast: successive halving with --data: every model on 1/4 of each class, the clearly worse "
                   "dropped (consensus top half, or top 3 of any informative method, survive), then 1/2, then "
                   "all images; a round with fewer than 8 images in some class is skipped (too few to drop "
                   "anyone). Features go to the cache, so a later full run computes only the rest. full: every "
                   "model on every image. auto: fast with --data and 4 or more models, else full.")
@click.option("--img-size", type=click.IntRange(min=8), default=None, metavar="PX",
              help="Cap the input resolution at PX: models whose own input is larger run at PX (their own crop "
                   "and normalisation), smaller ones keep theirs. Default: every model's own resolution, as "
                   "fine-tuning uses; a cap is faster and may change the ranking (measured in docs/features.md).")
@click.option("--strict", is_flag=True, help="Stop on the first unreadable image instead of skipping it.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbosity_options
def command(features: tuple[str, ...], methods: str | None, gt_path: str | None, gt_dataset: str | None,
            out_dir: str, seed: int, demo: bool, models: tuple[str, ...], zoo_file: str | None,
            data: str | None, split: str | None, per_class: int | None, sample_seed: int, cache: str,
            device: str, batch_size: int, workers: int | None, chunk_size: int | None, strict: bool,
            no_progress: bool, quiet: bool, verbose: bool, seeds_opt: str | None = None,
            plot: bool = True, budget: str = "auto", img_size: int | None = None) -> None:
    """Rank models by transferability from FEATURES (.npz files with X, y[, P]), from features extracted
    here (--models/--zoo with --data), or of the built-in --demo zoo.

    The model name is the file stem. All files must hold the same target images in the same order.
    """
    model_list = split_list(models)
    if model_list and methods is None and _looks_like_methods(model_list):
        deprecation("`rank -m` now means --models in every command; read as --methods "
                    f"{','.join(model_list)} (spell it --methods)")
        methods, model_list = ",".join(model_list), []
    method_list = list(dict.fromkeys(m.lower().replace("-", "_")
                                     for m in _split_methods(methods or ",".join(DEFAULT_METHODS))))
    if (model_list or zoo_file) and not data:
        raise click.UsageError("--models/--zoo need --data")
    if data and not (model_list or zoo_file):
        raise click.UsageError("--data needs --models or --zoo")
    if model_list and zoo_file:
        raise click.UsageError("give either --models or --zoo, not both")
    if not (features or data or demo):
        raise click.UsageError("give feature files, --models/--zoo with --data, or --demo")
    try:
        seed_list = [int(s) for s in split_list(seeds_opt)] if seeds_opt else [seed]
    except ValueError:
        raise click.BadParameter(f"{seeds_opt!r} is not a comma-separated list of integers",
                                 param_hint="--seeds") from None
    out = check_output_dir(out_dir)
    progress = not (no_progress or quiet)

    if demo:
        from ..demo import write_demo_zoo

        tmp = out / "demo_zoo"
        paths, demo_gt = write_demo_zoo(tmp, seed=sample_seed)
        features = tuple(features) + tuple(str(p) for p in paths)
        gt_path = gt_path or str(demo_gt)
        note(f"demo zoo: {len(paths)} models on scikit-learn digits (written to {tmp})", quiet)

    gt: dict[str, float] | None = None
    if gt_path:  # before any extraction or scoring
        try:
            gt = read_ground_truth(gt_path, gt_dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        check_ground_truth(gt, gt_path)

    sources: dict[str, str] = {}
    zoo: list[ZooFeatures] = []
    try:
        for p in features:
            z = load_feature_file(p)
            if z.name in sources:
                raise click.ClickException(f"two feature files give model name {z.name!r}: {sources[z.name]} "
                                           f"and {p} (the name is the file stem)")
            _check_shapes(z, p)
            sources[z.name] = p
            zoo.append(z)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    names = list(sources) + (_model_names(model_list, zoo_file) if data else [])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise click.ClickException(f"duplicate model name(s) {dup}: rename a file or name the models in a zoo file")
    if gt is not None:
        _check_gt_covers(gt, names, gt_path)

    if budget == "auto":  # halving pays off from a few models on; feature files are scored as they are
        # with --gt the user evaluates the ranking itself: every model gets a full score
        budget = "fast" if data and not features and gt is None and len(names) - len(sources) >= 4 else "full"
    if img_size and not data:
        raise click.UsageError("--img-size applies to features extracted here (--models/--zoo with --data)")
    if budget == "fast" and not data:
        raise click.UsageError("--budget fast needs --models/--zoo with --data")
    if budget == "fast" and features:
        raise click.UsageError("--budget fast ranks extracted models only (no feature files)")
    halving_rounds = None
    if data:
        with readable_warnings(verbose):
            if budget == "fast":
                from ..recommendation import recommend as _rec

                def _score(z):
                    return _rec(z, methods=method_list, seeds=seed_list)

                zoo, _, halving_rounds = _extracted_zoo(model_list, zoo_file, data, split, cache, per_class,
                                                        sample_seed, device, batch_size, workers, strict,
                                                        chunk_size, progress, budget="fast", score=_score,
                                                        img_size=img_size)
                for r in halving_rounds:
                    dropped = [m for m in r.models if m not in r.kept]
                    note(f"round {r.index}: {len(r.models)} models on {r.n_images} images; computed "
                         f"{sum(r.extracted.values())} image features in {r.seconds:.1f} s"
                         + (f"; dropped {', '.join(dropped)}" if dropped else ""), quiet)
            else:
                zoo += _extracted_zoo(model_list, zoo_file, data, split, cache, per_class, sample_seed, device,
                                      batch_size, workers, strict, chunk_size, progress, img_size=img_size)
        for z in zoo[len(sources):]:
            sources[z.name] = z.name

    current = {"method": None}
    with readable_warnings(verbose, prefix=lambda: current["method"]):
        from ..consensus import CONSENSUS_METHODS
        from ..recommendation import recommend

        n_run = len(method_list) + len([m for m in CONSENSUS_METHODS if m not in method_list])
        with click.progressbar(length=n_run, label="scoring", file=sys.stderr,
                               hidden=not progress) as bar:
            def on_method(m: str) -> None:
                current["method"] = m
                bar.update(1)

            try:
                rec = recommend(zoo, methods=method_list, seeds=seed_list, on_method=on_method)
                results = rec.results
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
    print_left_out(results, sources)
    click.echo("\n" + render_recommendation(rec) + "\n\n" + render_method_table(rec))
    dropped = render_dropped(halving_rounds) if halving_rounds else ""
    if dropped:
        click.echo("\n" + dropped)
    if verbose:
        click.echo(render_details(rec))
    asked = [r for r in results if r.method in method_list]  # not the methods the consensus adds
    if all(r.error or not r.scores for r in asked):
        # "leep needs at least 2 classes" and "etran needs at least 2 classes" are one reason
        reasons = sorted({r.error.removeprefix(f"{r.method} ") for r in asked if r.error})
        if len(asked) == 1:
            why = asked[0].error or "no model scored"
        elif len(reasons) == 1:
            why = f"{reasons[0]} (every method)"
        else:
            why = "every method failed (reasons above)"
        if len(zoo) == 1:  # name the one file the reason is about
            where = f" ({sources[zoo[0].name]})" if sources.get(zoo[0].name, zoo[0].name) != zoo[0].name else ""
            why = f"model {zoo[0].name!r}{where}: {why}"
        raise click.ClickException(f"nothing was scored: {why}")

    write_csv(out / "scores.csv", score_rows(rec))
    payload: dict = {**scores_payload(rec, {r.method: r.failed for r in results}),
                     "provenance": provenance(zoo, sources, data=data, split=split, per_class=per_class,
                                              sample_seed=sample_seed, rec=rec, demo=demo)}
    if gt is not None:
        from ..metrics import rank_metrics

        metric_rows = []
        if rec.used:
            metric_rows.append({"method": "consensus", **rank_metrics({r.model: r.consensus for r in rec.ranking},
                                                                      {m: gt[m] for m in rec.methods[rec.used[0]].scores}),
                                "seconds": sum(rec.methods[m].seconds for m in rec.used)})
        for r in results:
            if r.error or len(r.scores) < 2:
                continue
            try:
                metrics = rank_metrics(r.scores, {m: gt[m] for m in r.scores})
            except ValueError as exc:
                raise click.ClickException(f"rank metrics for {r.method}: {exc}") from exc
            metric_rows.append({"method": r.method, **metrics, "seconds": r.seconds})
        print_metrics(metric_rows, gt_path)
        write_csv(out / "metrics.csv", metric_rows)
        payload["ground_truth"] = gt
        payload["metrics"] = metric_rows
    if halving_rounds is not None:
        payload["halving"] = [{"round": r.index, "share": r.share, "images": r.n_images, "models": r.models,
                               "kept": r.kept, "order": r.order, "computed_images": r.extracted, "seconds": round(r.seconds, 2)}
                              for r in halving_rounds]
    write_json(out / "scores.json", payload)
    if plot:
        plot_recommendation(rec, out / "rank.png")
    click.echo(f"\nwrote {out / 'scores.csv'} and {out / 'scores.json'}"
               + (f" and {out / 'metrics.csv'}" if gt is not None else "")
               + (f" and {out / 'rank.png'}" if plot else ""))
    print_next_steps(demo, out)
