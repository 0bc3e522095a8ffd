"""Fixtures for the data-pipeline tests.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m pytest -q tests/finetune/data
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.finetune.data._data_helpers import FIXTURES


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
