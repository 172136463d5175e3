"""Fixtures for the fusion tests.

The case factories live in ``_cases.py`` and ``_model_cases.py`` next to this file. Each is loaded
under a unique module name so it cannot collide with a helper module of the same name in another
test directory (the test directories are not packages).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load_cases(name: str = "tests_fusion_cases", file: str = "_cases.py") -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cf() -> ModuleType:
    """The case factory: ``cf.make_case("DX")``, ``cf.with_dicom_patient(case, ...)``, ``cf.ctx()``."""
    return _load_cases()


@pytest.fixture(scope="session")
def mc() -> ModuleType:
    """The model-case factory of ``_model_cases.py``: ``mc.make_case(i, size=40)``, ``mc.make_cohort(n)``."""
    return _load_cases("tests_fusion_model_cases", "_model_cases.py")
