"""The estimator interface and the registry of named estimators.

One calling convention for every method::

    est = get_estimator("logme")
    s = est.score(features, labels, source_probs=None, random_state=0)     # a float
    est.fit(features, labels).components_                                 # named parts

Methods whose published score is defined across a model zoo (ETran, NCTI) compute per-model
components in `fit` and combine them in `combine_zoo`; `score_zoo` does both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._validation import CheckedInputs, check_inputs

__all__ = [
    "TransferabilityEstimator",
    "EstimatorInfo",
    "register_estimator",
    "list_estimators",
    "get_estimator",
    "estimator_info",
    "score",
    "score_zoo",
    "minmax",
]


@dataclass(frozen=True)
class EstimatorInfo:
    """What the CLI and docs show about an estimator."""

    name: str
    summary: str
    reference: str
    needs_features: bool
    needs_source_probs: bool
    zoo_level: bool
    components: tuple[str, ...] = field(default_factory=tuple)


class TransferabilityEstimator:
    """Base class: subclasses implement `_score(data, random_state) -> dict`.

    `_score` returns a dict with at least the key ``"score"``; other keys are components.
    Hyper-parameters are keyword arguments of `__init__` (scikit-learn style).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True
    needs_source_probs: ClassVar[bool] = False
    zoo_level: ClassVar[bool] = False
    components: ClassVar[tuple[str, ...]] = ()
    min_per_class: ClassVar[int] = 1

    score_: float
    components_: dict[str, float]

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.default_params())
        if unknown:
            raise TypeError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.default_params())}"
            )
        self.params = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Hyper-parameters and their defaults (override in subclasses)."""
        return {}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # -- public API --------------------------------------------------------------------------
    def check(self, features: Any, labels: Any, source_probs: Any = None) -> CheckedInputs:
        return check_inputs(
            features,
            labels,
            source_probs,
            needs_features=self.needs_features,
            needs_source_probs=self.needs_source_probs,
            min_per_class=self.min_per_class,
            method=self.name,
        )

    def fit(
        self, features: Any, labels: Any, *, source_probs: Any = None, random_state: int = 0
    ) -> TransferabilityEstimator:
        """Score one model's features; sets `score_` and `components_`."""
        data = self.check(features, labels, source_probs)
        out = self._score(data, random_state)
        result = {k: float(v) for k, v in out.items()}
        if not np.isfinite(result["score"]):
            raise FloatingPointError(
                f"{self.name} produced a non-finite score ({result['score']}) on valid input; "
                "please report this with the input shapes"
            )
        self.score_ = result.pop("score")
        self.components_ = result
        return self

    def score(
        self, features: Any, labels: Any, *, source_probs: Any = None, random_state: int = 0
    ) -> float:
        """Transferability score of one model (higher = predicted to transfer better)."""
        return self.fit(features, labels, source_probs=source_probs, random_state=random_state).score_

    def combine_zoo(self, per_model: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Combine per-model results (score + components) into zoo-level scores.

        The default is the per-model score; zoo-level methods override this.
        """
        return {m: float(r["score"]) for m, r in per_model.items()}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        raise NotImplementedError

    @classmethod
    def info(cls) -> EstimatorInfo:
        return EstimatorInfo(
            name=cls.name,
            summary=cls.summary,
            reference=cls.reference,
            needs_features=cls.needs_features,
            needs_source_probs=cls.needs_source_probs,
            zoo_level=cls.zoo_level,
            components=tuple(cls.components),
        )


_REGISTRY: dict[str, type[TransferabilityEstimator]] = {}


def register_estimator(cls: type[TransferabilityEstimator]) -> type[TransferabilityEstimator]:
    """Class decorator: make an estimator available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"estimator name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    from . import _all  # noqa: F401  (imports every estimator module, filling the registry)


def list_estimators() -> list[str]:
    """Names of all registered estimators, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def estimator_info(name: str) -> EstimatorInfo:
    return _lookup(name).info()


def _lookup(name: str) -> type[TransferabilityEstimator]:
    _ensure_loaded()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def get_estimator(name: str, **params: Any) -> TransferabilityEstimator:
    """Instantiate a registered estimator by name, with optional hyper-parameters."""
    return _lookup(name)(**params)


def score(
    method: str,
    features: Any,
    labels: Any,
    *,
    source_probs: Any = None,
    random_state: int = 0,
    **params: Any,
) -> float:
    """Score one model with the named method (zoo-level methods return their primary component)."""
    return get_estimator(method, **params).score(
        features, labels, source_probs=source_probs, random_state=random_state
    )


def score_zoo(
    features: Mapping[str, Any],
    labels: Any,
    *,
    method: str | TransferabilityEstimator = "logme",
    source_probs: Mapping[str, Any] | None = None,
    random_state: int = 0,
    progress: Callable[[str], None] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
    **params: Any,
) -> dict[str, float]:
    """Score a whole zoo: ``{model: features}`` -> ``{model: score}``.

    `labels` is shared by all models (the same target dataset). Zoo-level methods (ETran, NCTI)
    return their published cross-model combination. A model whose input the method rejects raises a
    `ValueError` that names the model; with ``on_error(model, exc)`` that model is left out instead and
    the others are still scored (the combination then covers the models that scored).
    """
    est = method if isinstance(method, TransferabilityEstimator) else get_estimator(method, **params)
    if not features:
        raise ValueError("score_zoo needs at least one model")
    per_model: dict[str, dict[str, float]] = {}
    for model, X in features.items():
        P = None if source_probs is None else source_probs.get(model)
        try:
            est.fit(X, labels, source_probs=P, random_state=random_state)
        except (ValueError, ArithmeticError) as exc:
            if on_error is None:
                kind = ValueError if isinstance(exc, ValueError) else ArithmeticError
                raise kind(f"model {model!r}: {exc}") from exc
            on_error(model, exc)
            continue
        per_model[model] = {"score": est.score_, **est.components_}
        if progress is not None:
            progress(model)
    if not per_model:
        return {}
    return est.combine_zoo(per_model)


def minmax(values: Mapping[str, float]) -> dict[str, float]:
    """Min-max normalise across models (all equal -> 0), as the zoo-level combinations do."""
    arr = np.array(list(values.values()), dtype=np.float64)
    lo, hi = arr.min(), arr.max()
    span = hi - lo
    return {k: (float((v - lo) / span) if span > 0 else 0.0) for k, v in values.items()}
