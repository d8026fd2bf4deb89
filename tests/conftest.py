"""Test settings: one intra-op thread (the machine has 2 cores and tests are small), fixed seeds, and
where the real data sets are.

The real data sets (``mnist.npz``, ``cifar10-jpeg.tar.gz``) are looked for in one place: the folder
``$CONDENSE_TEST_DATA``, else ``../shared/data`` beside the repository. A test that needs one calls
``real_data(name)``, which skips it with the reason when the file is absent (a fresh clone), or fails
when ``CONDENSE_TEST_REQUIRE_DATA`` is set (CI, which has them). Every other test builds its data itself.
"""
import os
from pathlib import Path

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def data_dir() -> Path:
    """The folder of the real data sets: ``$CONDENSE_TEST_DATA``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("CONDENSE_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def real_data(name: str) -> Path:
    """The real data set file ``name`` (e.g. ``mnist.npz``); skips the test when it is absent, or fails
    when ``CONDENSE_TEST_REQUIRE_DATA`` is set."""
    path = data_dir() / name
    if not path.is_file():
        reason = f"the real data set {name} is not in {data_dir()} (set CONDENSE_TEST_DATA to its folder)"
        if os.environ.get("CONDENSE_TEST_REQUIRE_DATA"):
            pytest.fail(reason + "; CONDENSE_TEST_REQUIRE_DATA is set")
        pytest.skip(reason)
    return path
