"""Shared fixtures. Tests that need ../shared's real datasets skip cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lcrypt import Key

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets, or skip the test when this checkout has none beside it."""
    if not (DATASETS / "cifar10-jpeg.tar.gz").exists():
        pytest.skip("../shared/datasets is not beside this checkout")
    return DATASETS


@pytest.fixture
def fixed_key() -> Key:
    """A key with a fixed secret (bytes 0..31), for golden vectors and reproducible tests."""
    return Key(bytes(range(32)), owner="test-owner", created="2026-01-01T00:00:00+00:00")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
