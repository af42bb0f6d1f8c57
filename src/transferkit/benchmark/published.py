"""Published ground truth built in: fine-tuned accuracies and published rank correlations (package data).

>>> from transferkit.benchmark.published import list_tables, load_table
>>> list_tables()
['itm10', 'sfda_selfsup12', 'sfda_supervised11']
>>> load_table("itm10")["cifar10"]["MAE-L16"]
98.55

Provenance of every table: ``published/README.md`` next to this module.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

__all__ = ["TABLES", "list_tables", "load_table", "published_metrics", "table_rows"]

TABLES = {
    "itm10": "itm_table3.csv",
    "sfda_supervised11": "sfda_supervised11.csv",
    "sfda_selfsup12": "sfda_selfsup12.csv",
}


def _read(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath("published").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def list_tables() -> list[str]:
    """Names of the built-in ground-truth tables."""
    return sorted(TABLES)


def table_rows(name: str) -> list[dict[str, str]]:
    """Raw ``model,dataset,accuracy`` rows of a built-in table."""
    if name not in TABLES:
        raise KeyError(f"unknown published table {name!r}; available: {list_tables()}")
    return _read(TABLES[name])


def load_table(name: str) -> dict[str, dict[str, float]]:
    """``{dataset: {model: accuracy (%)}}`` of a built-in ground-truth table."""
    out: dict[str, dict[str, float]] = {}
    for r in table_rows(name):
        out.setdefault(r["dataset"], {})[r["model"]] = float(r["accuracy"])
    return out


def published_metrics(table: str, metric: str = "weighted_tau") -> dict[str, dict[str, float]]:
    """``{method: {dataset: value}}`` published for a table (``metric``: ``weighted_tau`` or ``seconds``)."""
    if table not in TABLES:
        raise KeyError(f"unknown published table {table!r}; available: {list_tables()}")
    out: dict[str, dict[str, float]] = {}
    for r in _read("published_metrics.csv"):
        if r["table"] == table and r["metric"] == metric:
            out.setdefault(r["method"], {})[r["dataset"]] = float(r["value"])
    return out
