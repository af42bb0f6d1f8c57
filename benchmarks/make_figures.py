"""Regenerate every published benchmark figure and report from the committed ground truth.

    python benchmarks/make_figures.py             # run the offline benchmark (features are cached) + figures
    python benchmarks/make_figures.py --replot    # rebuild report.md, intervals and PNGs from results.json + the
                                                  # ground-truth CSV and its per-image records (no model needed)
    python benchmarks/make_figures.py --update-readme   # also refresh the headline table in README.md
    python benchmarks/make_figures.py --partial --update-readme   # while the ground truth is incomplete:
                                                  # only the datasets whose ground truth is complete

Outputs go to each spec's report folder (benchmarks/offline/report/: report.md, metrics.csv, scores.csv,
results.json, heatmap.png, time_vs_metric.png, score_vs_accuracy_<dataset>.png, headline.md). The README
table sits between the markers ``<!-- offline-benchmark:start -->`` and ``<!-- offline-benchmark:end -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = [HERE / "offline" / "spec.yaml"]  # the benchmarks whose figures are published
START, END = "<!-- offline-benchmark:start -->", "<!-- offline-benchmark:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replot", action="store_true",
                    help="rebuild from results.json + ground-truth CSV + records, without models or features")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap samples over test images (default 1000)")
    ap.add_argument("--update-readme", action="store_true", help="write the headline table into README.md")
    ap.add_argument("--partial", action="store_true",
                    help="report only the datasets whose ground truth covers the whole zoo (and say so)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    from transferkit.benchmark.report import headline_markdown, write_report
    from transferkit.benchmark.runner import BenchmarkResult, rescore, run_benchmark
    from transferkit.benchmark.spec import load_spec
    from transferkit.reporting import atomic_write_text

    for path in SPECS:
        spec = load_spec(path)
        out = spec.report_dir()
        note = ""
        if args.replot:
            result = BenchmarkResult.load(out)
            rescore(result, spec.load_ground_truth())
        else:
            missing = _missing_pairs(spec)
            if missing and args.partial:
                incomplete = {d for _, d in missing}
                done = [d.name for d in spec.datasets if d.name not in incomplete]
                if not done:
                    print(f"{path}: no dataset has complete ground truth yet", file=sys.stderr)
                    return 1
                note = (f"*Partial: the ground truth is complete for {len(done)} of {len(spec.datasets)} datasets "
                        f"({', '.join(done)}); {len(missing)} (model, dataset) pairs are still being fine-tuned "
                        "(`bash benchmarks/run_offline_groundtruth.sh` resumes).*")
                spec = spec.select(datasets=done)
            elif missing:
                print(f"{path}: the ground truth lacks {len(missing)} pair(s) (e.g. {missing[0]}); compute it with "
                      "`bash benchmarks/run_offline_groundtruth.sh` (or report the complete datasets: --partial)",
                      file=sys.stderr)
                return 1
            result = run_benchmark(spec, progress=not args.quiet)
        paths = write_report(result, out, (spec.description + "\n\n" + note) if note else spec.description,
                             ground_truth_csv=spec.ground_truth_csv(), n_boot=args.n_boot)
        headline = headline_markdown(result, analysis=paths["analysis"]) + (f"\n\n{note}" if note else "")
        atomic_write_text(out / "headline.md", headline + "\n")
        print(f"{spec.name}: {paths['report']} and {len(paths['figures'])} figures\n\n{headline}\n")
        if args.update_readme and spec.name == "offline":
            _update_readme(HERE.parent / "README.md", headline, result)
    return 0


def _missing_pairs(spec) -> list[tuple[str, str]]:
    from transferkit.finetune import ground_truth_pairs

    csv = spec.ground_truth_csv()
    have = ground_truth_pairs(csv) if csv is not None else set()
    if csv is None:
        return []
    return [(e.name, d.name) for d in spec.datasets for e in spec.zoo if (e.name, d.name) not in have]


def _update_readme(readme: Path, headline: str, result) -> None:
    from transferkit.reporting import atomic_write_text

    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: no {START} / {END} markers; headline not inserted", file=sys.stderr)
        return
    block = f"{START}\n{headline}\n{END}"
    atomic_write_text(readme, re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print(f"updated {readme}")


if __name__ == "__main__":
    sys.exit(main())
