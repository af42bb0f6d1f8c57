"""Benchmarks of transferability estimators against fine-tuned ground truth.

>>> from transferkit.benchmark import load_spec, run_benchmark, write_report
>>> spec = load_spec("benchmarks/offline/spec.yaml")                       # doctest: +SKIP
>>> write_report(run_benchmark(spec), spec.report_dir())                   # doctest: +SKIP

Modules: :mod:`.spec` (the YAML spec), :mod:`.groundtruth` (fine-tune the missing pairs of a spec),
:mod:`.runner` (features -> scores -> rank metrics, timed), :mod:`.baselines` (random, params, source_accuracy
rows), :mod:`.uncertainty` (bootstrap of the ground truth over test images: intervals, paired shares; a public
API for other comparisons), :mod:`.batch_metrics` (the rank metrics vectorized over bootstrap samples),
:mod:`.analysis` (intervals, paired comparisons, leave-one-model-out, seed spread, ties), :mod:`.report`,
:mod:`.plots` and :mod:`.interval_plots` (Markdown, CSV, PNG), :mod:`.published` (published ground truth,
package data), :mod:`.suites` (``itm10``).
"""

from .groundtruth import compute_ground_truth, plan_ground_truth
from .published import list_tables, load_table, published_metrics
from .report import headline_markdown, markdown_report, write_report
from .runner import BenchmarkResult, DatasetResult, MethodOutcome, rescore, run_benchmark
from .spec import BenchmarkSpec, DatasetSpec, FeatureOptions, load_spec, spec_from_dict
from .suites import get_suite, itm10_spec

__all__ = [
    "BenchmarkResult",
    "BenchmarkSpec",
    "DatasetResult",
    "DatasetSpec",
    "FeatureOptions",
    "MethodOutcome",
    "compute_ground_truth",
    "get_suite",
    "headline_markdown",
    "itm10_spec",
    "list_tables",
    "load_spec",
    "load_table",
    "markdown_report",
    "plan_ground_truth",
    "published_metrics",
    "rescore",
    "run_benchmark",
    "spec_from_dict",
    "write_report",
]
