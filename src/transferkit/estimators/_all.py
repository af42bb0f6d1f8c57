"""Import every estimator module so that each registers itself.

Add a line here when you add a method family.
"""

from __future__ import annotations

import importlib

_MODULES = (
    "logme",
    "leep",
    "hscore",
    "transrate",
    "knn",
    "pactran",
    "gbc",
    "nleep",
    "parc",
    "sfda",
    "ped",
    "etran",
    "ncti",
    "itm",
    "linear_probe",
    "consensus",
)

for _name in _MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # a family not written yet must not break the others
        if exc.name != f"{__package__}.{_name}":
            raise
