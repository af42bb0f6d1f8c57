"""`transferkit distill`: train a small student from a foundation-model teacher (and the baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import check_output_dir, one_line, readable_warnings, verbosity_options

EXAMPLES = """\b
Examples:
  transferkit distill -c benchmarks/distill_eurosat.yaml --methods all --seeds 0,1,2
  transferkit distill -c benchmarks/distill_eurosat.yaml --set distill.lr=0.002 --set views=4 -o runs/try1
  transferkit distill -c benchmarks/distill_eurosat.yaml --print-config     # every config key, resolved

\b
Config keys: `transferkit distill --print-config` prints every key with its value (YAML, usable as a
--config file); docs/distill.md ("Use") explains them. Any key can be set with --set KEY=VALUE.
"""


def _csv_list(value: tuple[str, ...] | str | None) -> list[str]:
    return [v.strip() for item in ([value] if isinstance(value, str) else (value or ()))
            for v in item.split(",") if v.strip()]


def _build_config(config: str | None, sets: tuple[str, ...], options: dict[str, Any]) -> Any:
    from ..distill import DistillConfig

    cfg = DistillConfig.from_yaml(config) if config else DistillConfig()
    changes = {k: v for k, v in options.items() if v is not None}
    if changes:
        cfg = cfg.replace(**changes)
    if sets:
        cfg = cfg.override(list(sets))
    return cfg


def _is_main() -> bool:
    """False on DDP ranks other than 0 (only rank 0 prints and writes summaries)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return True
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _print_run(r: dict[str, Any]) -> None:
    from ..reporting import format_table

    cost = r.get("cost", {})
    row: dict[str, Any] = {"method": r["method"], "seed": r["seed"]}
    if r.get("student_miou") is not None:  # segmentation: mean IoU is the headline, then pixel accuracy
        row["student_miou"] = r["student_miou"]
        row["student_pixel_acc"] = r.get("student_pixel_accuracy", float("nan"))
        if r.get("teacher_miou") is not None:
            row["teacher_miou"] = r["teacher_miou"]
    else:
        row["student_acc"] = r.get("student_accuracy", float("nan"))
        if r.get("teacher_accuracy") is not None:
            row["teacher_acc"] = r["teacher_accuracy"]
    row["teacher_fwd"] = sum(v for k, v in cost.get("teacher_forward", {}).items() if k != "test")
    row["student_steps"] = sum(cost.get("student_steps", {}).values())
    row["seconds"] = cost.get("seconds", {}).get("total", float("nan"))
    click.echo(format_table([row], precision=4))


@click.command("distill", epilog=EXAMPLES)
@click.option("--config", "-c", type=click.Path(dir_okay=False),
              help="Run config (YAML; keys: see --print-config); options below override it.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config field (YAML value), e.g. --set distill.lr=0.002 --set views=4.")
@click.option("--teacher", help="Teacher model spec (timm name, local-dir:<folder>, arch@checkpoint).")
@click.option("--student", help="Student model spec (as --teacher).")
@click.option("--data", "-d", help="Labeled target dataset (folder, zip, csv, npz, IDX).")
@click.option("--per-class", type=int, help="Few-shot: labeled images per class.")
@click.option("--transfer", help="Unlabeled transfer set: a dataset (labels ignored) or a `transferkit curate` manifest.")
@click.option("--method", type=click.Choice(["task_oriented", "feature_distill", "pretrained", "scratch"]),
              help="One method (default: the config's).")
@click.option("--methods", multiple=True,
              help="Methods, comma-separated or repeated (or 'all'): run each and print a comparison table.")
@click.option("--seeds", multiple=True, help="Seeds, comma-separated or repeated, e.g. 0,1,2 (comparison over seeds).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), help="Run folder (or root of a comparison).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), help="Cache folder for teacher outputs.")
@click.option("--device", help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--export-onnx/--no-export-onnx", default=None, help="Export the final student to ONNX (+ check).")
@click.option("--resume/--no-resume", default=None, help="Continue an interrupted run (default) or start over.")
@click.option("--print-config", is_flag=True, help="Print the resolved config (every key) as YAML and exit.")
@verbosity_options
def command(config: str | None, sets: tuple[str, ...], teacher: str | None, student: str | None, data: str | None,
            per_class: int | None, transfer: str | None, method: str | None, methods: tuple[str, ...],
            seeds: tuple[str, ...], out_dir: str | None, cache_dir: str | None, device: str | None,
            export_onnx: bool | None, resume: bool | None, print_config: bool, quiet: bool, verbose: bool) -> None:
    """Task-oriented knowledge transfer from a teacher model to a small student, or one of the baselines.

    (a) adapt the teacher to the labeled target set (linear probe or fine-tune), (b) train the student on
    the unlabeled transfer set to match the teacher's predictions, (c) fine-tune it on the labeled set.
    With --methods/--seeds, every (method, seed) runs in OUT/<method>/seed<k> and a table is printed.
    Interrupted runs resume where they stopped.
    """
    from ..data import CorruptImageError
    from ..distill import METHODS, run_comparison, run_distill, summarize
    from ..reporting import format_table, write_csv, write_json

    try:
        cfg = _build_config(config, sets, {
            "teacher": teacher, "student": student, "data": data, "per_class": per_class, "transfer": transfer,
            "method": method, "out_dir": out_dir, "cache_dir": cache_dir, "device": device,
            "export_onnx": export_onnx, "resume": resume, "progress": False if quiet else None})
        if print_config:
            click.echo(cfg.to_yaml(), nl=False)
            return
        method_list = list(METHODS) if _csv_list(methods) == ["all"] else _csv_list(methods)
        bad = [m for m in method_list if m not in METHODS]
        if bad:
            raise click.BadParameter(f"unknown method(s) {bad}; choose from {list(METHODS)}", param_hint="--methods")
        try:
            seed_list = [int(s) for s in _csv_list(seeds)]
        except ValueError as exc:
            raise click.BadParameter(f"seeds must be integers ({exc})", param_hint="--seeds") from exc
        check_output_dir(cfg.out_dir)  # before hours of training, not after
        check_output_dir(cfg.cache_dir, "cache_dir")
        if not method_list and not seed_list:
            with readable_warnings(verbose):
                result = run_distill(cfg.validate())
            if _is_main():
                _print_run(result)
                click.echo(f"results: {Path(cfg.out_dir) / 'results.json'}")
            return
        method_list = method_list or [cfg.method]
        seed_list = seed_list or [cfg.seed]
        for m in method_list:  # fail before hours of work, not after
            cfg.replace(method=m).validate()
        with readable_warnings(verbose):
            results = run_comparison(cfg, method_list, seed_list)
    except (KeyError, ValueError, ImportError, CorruptImageError, OSError) as exc:
        raise click.ClickException(one_line(exc)) from exc
    if not _is_main():
        return
    rows = summarize(results)
    root = Path(cfg.out_dir)
    write_csv(root / "summary.csv", rows)
    write_json(root / "summary.json", {"rows": rows, "runs": results})
    click.echo(format_table(rows, precision=4))
    click.echo(f"summary: {root / 'summary.csv'}")
