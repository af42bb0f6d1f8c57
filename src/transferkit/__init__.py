"""transferkit: pick the pre-trained model to start from, and transfer a foundation model's
knowledge into a small deployable one."""

from .estimators import get_estimator, list_estimators, score, score_zoo

__version__ = "0.1.0"

__all__ = ["__version__", "get_estimator", "list_estimators", "score", "score_zoo"]
