"""Project-wide fixtures; helper functions live in `shared_data` (import them from there)."""

from shared_data import reference_expected  # noqa: F401  (fixture)
