"""Fixtures for the fusion tests.

The case factory lives in ``_cases.py`` next to this file. It is loaded under a
unique module name so it cannot collide with a helper module of the same name
in another test directory (the test directories are not packages).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load_cases() -> ModuleType:
    name = "tests_fusion_cases"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_cases.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cf() -> ModuleType:
    """The case factory: ``cf.make_case("DX")``, ``cf.with_dicom_patient(case, ...)``, ``cf.ctx()``."""
    return _load_cases()
