"""Linear probe: cross-validated accuracy of a logistic regression on the standardized features.

Not a transferability *estimator* in the papers' sense but the proxy users ask about: train the classifier
they would put on frozen features and measure it. Slower than the closed-form scores (one L-BFGS fit per
fold and model) but a strong baseline, so the benchmark reports it next to them.

Protocol: ``StratifiedKFold(folds, shuffle=True, random_state)``; per fold ``StandardScaler`` fitted on the
training part, then scikit-learn ``LogisticRegression(C=C, max_iter=max_iter)`` (multinomial, L-BFGS, L2);
the score is the accuracy (fraction in [0, 1]) on the held-out parts, pooled over folds. With fewer samples
per class than ``folds`` the number of folds drops to the smallest class size (at least 2: a class needs two
samples so that every fold has it in training). The components report the folds used and how many
held-out images were right, so that ties are visible.

Saturation: on easy few-shot tasks several models reach 1.0 (every held-out image right) and tie; the
benchmark report counts such ties. The score is a step function of a few hundred images, so close models
tie often. Its fold assignment is seeded by ``random_state`` (a stochastic method for the seed-spread check).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["LinearProbe", "linear_probe_accuracy"]


def linear_probe_accuracy(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, folds: int = 5, max_iter: int = 1000,
                          random_state: int = 0) -> tuple[float, int, int]:
    """(pooled held-out accuracy, folds used, number of held-out images right) of the probe."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    k = int(min(folds, np.bincount(y).min()))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
    # one BLAS thread: the fits are small (a few hundred images), and multi-threaded BLAS on them is slower,
    # up to 20x on a loaded 2-core machine (threads waiting for each other); the result is the same
    with threadpool_limits(limits=1, user_api="blas"):
        right = _cross_validate(X, y, splitter, C, max_iter)
    return right / len(y), k, right


def _cross_validate(X: np.ndarray, y: np.ndarray, splitter: Any, C: float, max_iter: int) -> int:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    right = 0
    for train, test in splitter.split(X, y):
        scaler = StandardScaler().fit(X[train])
        clf = LogisticRegression(C=C, max_iter=max_iter)
        with warnings.catch_warnings():
            # a probe that has not fully converged after max_iter is still a valid (budgeted) probe
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(scaler.transform(X[train]), y[train])
        right += int(np.sum(clf.predict(scaler.transform(X[test])) == y[test]))
    return right


@register_estimator
class LinearProbe(TransferabilityEstimator):
    """Stratified k-fold cross-validated accuracy of a logistic regression on standardized features."""

    name = "linear_probe"
    summary = "k-fold CV accuracy of a logistic regression on standardized features (a strong, slow baseline)."
    reference = ("Linear-probe baseline (e.g. Kornblith et al., 'Do Better ImageNet Models Transfer Better?', "
                 "CVPR 2019); scikit-learn LogisticRegression + StratifiedKFold")
    components = ("folds", "n_correct")
    min_per_class = 2

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 1.0, "folds": 5, "max_iter": 1000}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if isinstance(p["folds"], bool) or not isinstance(p["folds"], (int, np.integer)) or p["folds"] < 2:
            raise ValueError(f"linear_probe: folds must be an integer >= 2, got {p['folds']!r}")
        if isinstance(p["C"], bool) or not isinstance(p["C"], (int, float)) or not (np.isfinite(p["C"]) and p["C"] > 0):
            raise ValueError(f"linear_probe: C must be a positive finite number, got {p['C']!r}")
        if isinstance(p["max_iter"], bool) or not isinstance(p["max_iter"], (int, np.integer)) or p["max_iter"] < 1:
            raise ValueError(f"linear_probe: max_iter must be a positive integer, got {p['max_iter']!r}")

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        acc, k, right = linear_probe_accuracy(data.X, data.y, C=float(p["C"]), folds=int(p["folds"]),
                                              max_iter=int(p["max_iter"]), random_state=int(random_state))
        return {"score": acc, "folds": float(k), "n_correct": float(right)}
