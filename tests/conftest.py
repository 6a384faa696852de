"""Shared fixtures. The plugin activates itself in SAELens through the .pth hook; calling
``msae_plugin.register()`` as well keeps the tests valid under ``python -S``."""

import pytest
import torch

import msae_plugin

msae_plugin.register()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def sparse_data():
    """A generator of (batch, d_in) activations: sparse non-negative codes over a random
    overcomplete dictionary, plus an offset (so mean-centring matters)."""

    def make(d_in: int = 16, n_feat: int = 64, batch: int = 256, seed: int = 0):
        g = torch.Generator().manual_seed(1234)  # the same dictionary for every seed
        dictionary = torch.randn(n_feat, d_in, generator=g)
        offset = torch.randn(d_in, generator=g) * 3
        g.manual_seed(seed)  # the seed picks the samples

        def gen():
            while True:
                codes = torch.relu(torch.randn(batch, n_feat, generator=g) - 1.5)
                yield codes @ dictionary + offset

        return gen()

    return make
