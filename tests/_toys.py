"""Small CNNs and attack problems for the tests (no data files needed)."""

from __future__ import annotations

import torch
from torch import nn


class CountingModel(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


def make_cnn(c: int = 10, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A small random CNN on (B, 3, 16, 16) images; eval mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, c),
    )
    return net.to(dtype).eval()


def make_problem(
    model: nn.Module,
    b: int,
    k: int,
    n_relevant: int = 5,
    n_specified: int = 1,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images and labels such that each sample's relevant set is its clean top-``n_relevant``
    and the specified labels are drawn from its clean top-k (so every sample is eligible)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 16, 16, generator=g, dtype=dtype)
    with torch.no_grad():
        s = model(x)
    order = s.argsort(dim=1, descending=True)
    labels = torch.zeros_like(s)
    labels.scatter_(1, order[:, :n_relevant], 1)
    spec = torch.zeros_like(s)
    for i in range(b):
        pick = torch.randperm(k, generator=g)[:n_specified]
        spec[i, order[i, pick]] = 1
    return x, labels, spec


class TopKDataset(torch.utils.data.Dataset):
    """``n`` random (3, 16, 16) images whose labels are ``model``'s clean top-5 (c = 10)."""

    def __init__(self, model: nn.Module, n: int, seed: int, c: int = 10) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        with torch.no_grad():
            top = model(self.images).topk(5, dim=1).indices
        self.labels = torch.zeros(n, c).scatter_(1, top, 1)
        self.classes = [f"l{i}" for i in range(c)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
