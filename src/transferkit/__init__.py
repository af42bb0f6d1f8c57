"""transferkit: pick the pre-trained model to start from, and transfer a foundation model's
knowledge into a small deployable one."""

from typing import Any

from .estimators import get_estimator, list_estimators, score, score_zoo

__version__ = "0.1.0"

__all__ = ["__version__", "get_estimator", "list_estimators", "recommend", "score", "score_zoo"]


def __getattr__(name: str) -> Any:
    """``transferkit.recommend`` (the function) loads on first use (scipy.stats is not needed to import the package)."""
    if name == "recommend":
        from .recommendation import recommend

        return recommend
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
