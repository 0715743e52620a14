"""Shared pytest set-up: few threads (the test machine is shared) and fixed seeds for every test."""
import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch before each test so results do not depend on test order."""
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(0)
