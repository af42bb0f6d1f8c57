"""Transferability estimators: score frozen features for how well a model will fine-tune.

>>> from transferkit.estimators import get_estimator, list_estimators, score_zoo
>>> get_estimator("logme").score(X, y)                       # doctest: +SKIP
>>> score_zoo({"resnet50": X1, "vit": X2}, y, method="etran")  # doctest: +SKIP
"""

from ._base import (
    EstimatorInfo,
    TransferabilityEstimator,
    estimator_info,
    get_estimator,
    list_estimators,
    minmax,
    register_estimator,
    score,
    score_zoo,
)
from ._validation import CheckedInputs, check_inputs

__all__ = [
    "CheckedInputs",
    "EstimatorInfo",
    "TransferabilityEstimator",
    "check_inputs",
    "estimator_info",
    "get_estimator",
    "list_estimators",
    "minmax",
    "register_estimator",
    "score",
    "score_zoo",
]
