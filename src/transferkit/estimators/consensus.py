"""The consensus estimator: several estimators' zoo scores combined (see :mod:`transferkit.consensus`).

Registered as ``get_estimator("consensus")`` so that ``transferkit bench`` scores it like any method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..consensus import AGGREGATIONS, CONSENSUS_AGGREGATION, CONSENSUS_METHODS, aggregate
from ._base import TransferabilityEstimator, get_estimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["Consensus"]


@register_estimator
class Consensus(TransferabilityEstimator):
    """Zoo-level consensus of several estimators (default: the leave-one-dataset-out choice).

    Each ingredient scores every model (zoo-level ingredients with their published combination); methods
    that are uninformative on this zoo are left out; the rest are aggregated (`aggregation`)."""

    name = "consensus"
    summary = "Mean z-score of LEEP, PARC, ETran (uninformative ones left out), chosen leave-one-dataset-out"
    reference = "transferkit: docs/recommend.md, benchmarks/consensus_lodo.py"
    zoo_level = True
    needs_source_probs = True  # the default set holds LEEP
    min_per_class = 2

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"methods": CONSENSUS_METHODS, "aggregation": CONSENSUS_AGGREGATION}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        methods = self.params["methods"]
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        if not methods or "consensus" in methods:
            raise ValueError("consensus: 'methods' must name one or more other estimators")
        if self.params["aggregation"] not in AGGREGATIONS:
            raise ValueError(f"consensus: unknown aggregation {self.params['aggregation']!r}; "
                             f"choose from {', '.join(AGGREGATIONS)}")
        self._ingredients = {m: get_estimator(m) for m in methods}
        self.params["methods"] = tuple(self._ingredients)
        # an instance only needs P when one of its ingredients does
        self.needs_source_probs = any(e.needs_source_probs for e in self._ingredients.values())
        self.min_per_class = max(e.min_per_class for e in self._ingredients.values())

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, est in self._ingredients.items():
            est.fit(data.X, data.y, source_probs=data.P, random_state=random_state)
            out[f"{name}:score"] = est.score_
            out.update({f"{name}:{k}": v for k, v in est.components_.items()})
        # `score` of one model alone is meaningless for a consensus; the zoo combination is the score
        out["score"] = 0.0
        return out

    def combine_zoo(self, per_model: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Each ingredient's zoo scores (its own combination), then the consensus over the informative ones."""
        method_scores = {}
        for name, est in self._ingredients.items():
            pre = f"{name}:"
            sub = {m: {("score" if k == pre + "score" else k[len(pre):]): v for k, v in r.items()
                       if k.startswith(pre)} for m, r in per_model.items()}
            method_scores[name] = est.combine_zoo(sub)
        return aggregate(method_scores, self.params["aggregation"]).scores
