"""Helpers for tests that read ../shared (skipped cleanly when absent).

Import as ``from shared_data import shared_path`` (a unique module name: several test folders
have their own conftest.py, so ``import conftest`` would be ambiguous)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p} is absent")
    return p


@pytest.fixture(scope="session")
def reference_expected() -> dict:
    return json.loads(shared_path("reference", "expected.json").read_text())


def load_reference_input(name: str) -> dict[str, np.ndarray]:
    with np.load(shared_path("reference", "inputs", name)) as d:
        return {k: d[k] for k in d.files}


def reference_cases(method_key: str) -> list:
    """pytest params (file, expected dict) for every input where the reference gave a value."""
    path = REFERENCE / "expected.json"
    if not path.exists():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} absent"))]
    expected = json.loads(path.read_text())
    out = []
    for fname, methods in expected.items():
        entry = methods.get(method_key)
        if entry is not None and "error" not in entry:
            out.append(pytest.param(fname, entry, id=f"{fname}"))
    return out


def reference_error_files(method_key: str) -> list[str]:
    path = REFERENCE / "expected.json"
    if not path.exists():
        return []
    expected = json.loads(path.read_text())
    return [f for f, m in expected.items() if "error" in m.get(method_key, {})]
