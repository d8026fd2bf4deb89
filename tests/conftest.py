"""Test settings: one intra-op thread (the machine has 2 cores and tests are small), fixed seeds, and
where the real data sets are.

The real data sets (``mnist.npz``, ``cifar10-jpeg.tar.gz``) are looked for in one place: the folder
``$CONDENSE_TEST_DATA``, else ``../shared/data`` beside the repository. A test that needs one calls
``real_data(name)``, which skips it with the reason when the file is absent (a fresh clone), or fails
when ``CONDENSE_TEST_REQUIRE_DATA`` is set (CI, which has them). Every other test builds its data itself,
with the shared helpers below (``tiny_mnist``, ``small_net``, ``ConvStage``), imported as
``from conftest import ...``.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


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


# --- shared helpers: data and models the tests build themselves ----------------------------------------


def tiny_mnist(path: Path, n_train=256, n_test=128, seed=0) -> Path:
    """An MNIST-format .npz with a learnable signal: class k lights up row band k."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
        return x, y.astype(np.int64)

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def small_net() -> nn.Module:
    """A 1-channel 28x28 classifier with a run of two repeated conv blocks."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d((28, 1)),
        nn.Flatten(),
        nn.Linear(8 * 28, 10),
    )


class ConvStage(nn.Module):
    """``n`` conv-BN-ReLU blocks of ``c`` channels in a ModuleList looped over in forward (a user's stage)."""

    def __init__(self, c, n):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()) for _ in range(n)
        )

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x
