"""Shared pytest set-up: few threads (the test machine is shared), fixed seeds for every test, and no sample
data for tests not marked ``network`` (so ``pytest -m "not network"`` runs offline)."""
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


@pytest.fixture(scope="session")
def _empty_data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("no-sample-data")


@pytest.fixture(autouse=True)
def _offline_unless_marked_network(request, monkeypatch, _empty_data_cache):
    """A test not marked ``network`` sees an empty sample-data cache and cannot download, so a missing
    marker fails here rather than on an offline machine."""
    if request.node.get_closest_marker("network") is None:
        from rcreg import data

        def refuse(*args, **kwargs):
            raise AssertionError("a test not marked `network` tried to download sample data")

        monkeypatch.setenv("RCREG_DATA", str(_empty_data_cache))
        monkeypatch.setattr(data, "_download", refuse)
