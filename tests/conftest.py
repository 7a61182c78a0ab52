"""Shared fixtures."""

from __future__ import annotations

import pytest
from torch import nn

from _toys import make_cnn


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()
