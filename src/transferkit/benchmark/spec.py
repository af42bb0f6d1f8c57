"""Benchmark spec: a model zoo, datasets, ground truth and methods, in one YAML file.

.. code-block:: yaml

    name: offline
    seed: 0
    zoo: zoo.yaml                    # a zoo file (see transferkit.models.read_zoo) or an inline list
    datasets:
      eurosat: {data: ../../../shared/data/eurosat/eurosat.zip}
      fashion_mnist: {data: fashion-mnist, finetune: {per_class_test: 40}}
    ground_truth: groundtruth.csv    # a CSV (model, dataset, accuracy) or published:<table>
    methods: [logme, sfda, itm]      # or "all"
    primary_metric: weighted_tau_scipy
    features: {per_class: 40, img_size: 64, batch_size: 64, cache_dir: ../../.transferkit_cache}
    finetune: {epochs: 8, per_class_train: 40, per_class_test: 50, img_size: 64, ...}
    report: report                   # output folder
    baselines: [random, params, source_accuracy]   # baseline rows (default: all three; [] for none)
    spread_seeds: [0, 1, 2]          # estimator seeds of the seed-spread check (stochastic methods only)

Relative paths are resolved against the spec file's folder. ``features`` defaults to the fine-tuning budget
(same split, per-class subset and resolution): the estimators see exactly the images the ground truth was
fine-tuned on. ``datasets.<name>.finetune`` / ``.features`` override the shared options for one dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..finetune import FinetuneConfig
from ..models import ModelEntry, read_zoo, zoo_entries
from ..ranking import check_accuracies

__all__ = ["BenchmarkSpec", "DatasetSpec", "FeatureOptions", "load_spec", "zoo_from_doc"]

PRIMARY_METRICS = ("weighted_tau_scipy", "weighted_tau_itm", "weighted_tau_modelspider", "kendall_tau",
                   "spearman_rho", "pearson_r")
_FEATURE_KEYS = ("split", "per_class", "img_size", "batch_size", "cache_dir", "device", "num_workers", "precision")
_FINETUNE_SHARED = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"model", "data", "model_name",
                                                                            "dataset_name", "output"}


@dataclass
class FeatureOptions:
    """How features are extracted for the estimators (None: follow the fine-tuning budget)."""

    split: str | None = None
    per_class: int | None = None
    img_size: int | None = None
    batch_size: int = 64
    cache_dir: str = ".transferkit_cache"
    device: str = "auto"
    num_workers: int | None = None
    precision: str = "auto"


@dataclass
class DatasetSpec:
    """One target dataset: its name (the ground truth's ``dataset`` column), location and overrides."""

    name: str
    data: str
    finetune: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkSpec:
    """Everything ``transferkit bench`` and ``transferkit finetune --spec`` need."""

    name: str
    zoo: list[ModelEntry]
    datasets: list[DatasetSpec]
    ground_truth: str | None = None
    methods: list[str] | str = "all"
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    primary_metric: str = "weighted_tau_scipy"
    seed: int = 0
    features: FeatureOptions = field(default_factory=FeatureOptions)
    finetune: dict[str, Any] = field(default_factory=dict)
    report: str = "report"
    baselines: list[str] = field(default_factory=lambda: ["random", "params", "source_accuracy"])
    spread_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    description: str = ""
    base_dir: Path = field(default_factory=Path.cwd)
    source: str | None = None

    # -- selection -------------------------------------------------------------------------------
    def method_list(self) -> list[str]:
        from ..estimators import list_estimators

        if isinstance(self.methods, str):
            if self.methods.strip().lower() == "all":
                return list_estimators()
            return [m.strip() for m in self.methods.split(",") if m.strip()]
        return list(self.methods)

    def select(self, models: Sequence[str] | None = None, datasets: Sequence[str] | None = None) -> BenchmarkSpec:
        """A copy restricted to some models / datasets (names); unknown names raise a ValueError."""
        zoo, dsets = self.zoo, self.datasets
        if models:
            known = {e.name for e in zoo}
            bad = sorted(set(models) - known)
            if bad:
                raise ValueError(f"unknown model(s) {bad}; the zoo has {sorted(known)}")
            zoo = [e for e in zoo if e.name in set(models)]
        if datasets:
            known = {d.name for d in dsets}
            bad = sorted(set(datasets) - known)
            if bad:
                raise ValueError(f"unknown dataset(s) {bad}; the spec has {sorted(known)}")
            dsets = [d for d in dsets if d.name in set(datasets)]
        return dataclasses.replace(self, zoo=list(zoo), datasets=list(dsets))

    # -- derived configs -------------------------------------------------------------------------
    def finetune_config(self, entry: ModelEntry, dataset: DatasetSpec, **overrides: Any) -> FinetuneConfig:
        """The fine-tuning job of one (model, dataset) pair under this spec's budget."""
        opts = {"seed": self.seed, **self.finetune, **dataset.finetune, **overrides}
        if "work_dir" in opts:
            opts["work_dir"] = str(self.path(opts["work_dir"]))
        model_options = {k: v for k, v in entry.options.items() if k not in ("batch_size", "precision")}
        gt = self.ground_truth_csv()
        return FinetuneConfig.from_dict({**opts, "model": entry.spec, "data": dataset.data, "model_name": entry.name,
                                         "dataset_name": dataset.name, "model_options": model_options,
                                         "output": str(gt) if gt is not None else None})

    def feature_options(self, dataset: DatasetSpec) -> FeatureOptions:
        """Feature options of one dataset, with unset values taken from the fine-tuning budget."""
        fo = dataclasses.replace(self.features, **dataset.features)
        ft = {**self.finetune, **dataset.finetune}
        if fo.split is None:
            fo.split = ft.get("train_split", "train")
        if fo.per_class is None:
            fo.per_class = ft.get("per_class_train")
        if fo.img_size is None:
            fo.img_size = ft.get("img_size")
        fo.cache_dir = str(self.path(fo.cache_dir))
        return fo

    def ground_truth_csv(self) -> Path | None:
        """The ground-truth CSV path (None for a published table or no ground truth)."""
        if not self.ground_truth or str(self.ground_truth).startswith("published:"):
            return None
        return self.path(self.ground_truth)

    def load_ground_truth(self) -> dict[str, dict[str, float]]:
        """``{dataset: {model: accuracy}}`` from the CSV or the built-in published table."""
        if not self.ground_truth:
            raise ValueError(f"spec {self.name!r} has no ground_truth")
        if str(self.ground_truth).startswith("published:"):
            from .published import load_table

            return load_table(str(self.ground_truth).split(":", 1)[1])
        from ..finetune import ground_truth_by_dataset

        path = self.path(self.ground_truth)
        if not path.exists():
            raise FileNotFoundError(f"ground-truth file not found: {path} (compute it with "
                                    f"`transferkit finetune --spec {self.source or '<spec>'}`)")
        table = ground_truth_by_dataset(path)
        for dataset, accs in table.items():  # the checks `transferkit rank --gt` applies
            check_accuracies(accs, f"{path} (dataset {dataset})")
        return table

    def path(self, p: str | Path) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q).resolve()

    def report_dir(self) -> Path:
        return self.path(self.report)


# ------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------
def zoo_from_doc(items: Any, base: Path, where: str = "zoo") -> list[ModelEntry]:
    """Zoo entries from an inline list (same entry format as a zoo file; paths relative to ``base``)."""
    return zoo_entries(items, base, where=where)


def _data_path(data: str, base: Path) -> str:
    from ..data.open import ALIASES

    if str(data).lower() in ALIASES:
        return str(data)
    p = Path(str(data)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def spec_from_dict(doc: Mapping[str, Any], base_dir: str | Path, source: str | None = None) -> BenchmarkSpec:
    """Build a spec from a parsed YAML document (paths relative to ``base_dir``)."""
    where = source or "spec"
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected a mapping at the top level")
    base = Path(base_dir).resolve()
    allowed = {"name", "description", "seed", "zoo", "datasets", "ground_truth", "methods", "method_params",
               "primary_metric", "features", "finetune", "report", "baselines", "spread_seeds"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("zoo", "datasets"):
        if not doc.get(key):
            raise ValueError(f"{where}: '{key}' is required")
    methods = doc.get("methods")
    if methods is not None and not (isinstance(methods, str) or (
            isinstance(methods, Sequence) and all(isinstance(m, str) for m in methods))):
        raise ValueError(f"{where}: 'methods' must be 'all', a comma-separated string or a list of names, "
                         f"got {methods!r}")
    zoo_doc = doc["zoo"]
    zoo = read_zoo(base / zoo_doc) if isinstance(zoo_doc, str) else zoo_from_doc(zoo_doc, base, f"{where}: zoo")
    dsets = doc["datasets"]
    if isinstance(dsets, Sequence) and not isinstance(dsets, str):
        dsets = {str(d["name"]): d for d in dsets}
    if not isinstance(dsets, Mapping):
        raise ValueError(f"{where}: 'datasets' must map names to {{data: ...}}")
    datasets = []
    for name, d in dsets.items():
        d = {"data": d} if isinstance(d, str) else dict(d)
        d.pop("name", None)
        if "data" not in d:
            raise ValueError(f"{where}: dataset {name!r} has no 'data'")
        bad = sorted(set(d) - {"data", "finetune", "features"})
        if bad:
            raise ValueError(f"{where}: dataset {name!r}: unknown key(s) {bad}")
        ft, fe = dict(d.get("finetune") or {}), dict(d.get("features") or {})
        _check_keys(ft, _FINETUNE_SHARED, f"{where}: dataset {name!r} finetune")
        _check_keys(fe, set(_FEATURE_KEYS), f"{where}: dataset {name!r} features")
        datasets.append(DatasetSpec(str(name), _data_path(d["data"], base), ft, fe))
    ft = dict(doc.get("finetune") or {})
    _check_keys(ft, _FINETUNE_SHARED, f"{where}: finetune")
    fe = dict(doc.get("features") or {})
    _check_keys(fe, set(_FEATURE_KEYS), f"{where}: features")
    primary = str(doc.get("primary_metric", "weighted_tau_scipy"))
    if primary not in PRIMARY_METRICS:
        raise ValueError(f"{where}: primary_metric must be one of {PRIMARY_METRICS}, got {primary!r}")
    spec = BenchmarkSpec(
        name=str(doc.get("name") or (Path(source).stem if source else "benchmark")), zoo=zoo, datasets=datasets,
        ground_truth=doc.get("ground_truth"), methods=doc.get("methods", "all"),
        method_params=dict(doc.get("method_params") or {}), primary_metric=primary, seed=int(doc.get("seed", 0)),
        features=FeatureOptions(**fe), finetune=ft, report=str(doc.get("report", "report")),
        description=str(doc.get("description", "")), base_dir=base, source=source)
    if "baselines" in doc:
        spec.baselines = _name_list(doc["baselines"], f"{where}: baselines")
        from .baselines import BASELINES

        bad = sorted(set(spec.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"{where}: unknown baseline(s) {bad}; known: {list(BASELINES)}")
    if "spread_seeds" in doc:
        seeds = doc["spread_seeds"] or []
        if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"{where}: spread_seeds must be a list of integers, got {seeds!r}")
        spec.spread_seeds = list(seeds)
    FinetuneConfig.from_dict({**ft, "model": "check", "data": "check"})  # validate the budget early
    return spec


def _name_list(v: Any, where: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise ValueError(f"{where}: expected a list of names, got {v!r}")


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise ValueError(f"{where}: unknown option(s) {bad}; allowed: {sorted(allowed)}")


def load_spec(path: str | Path) -> BenchmarkSpec:
    """Read a benchmark spec YAML file."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark spec not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: a benchmark spec is a YAML file, not a folder")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    return spec_from_dict(doc, path.resolve().parent, source=str(path))
