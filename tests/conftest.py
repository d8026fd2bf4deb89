"""Test settings: one intra-op thread (the machine has 2 cores and tests are small), fixed seeds."""
import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
