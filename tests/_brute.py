"""Brute-force references of the losses, as plain Python loops over one sample's scores."""

from __future__ import annotations


def atk_loop(a: list[float], m: int) -> float:
    """ATk_m: the mean of the m largest entries."""
    return sum(sorted(a, reverse=True)[:m]) / m


def tkmia_loop(f: list[float], y: list[int], s: list[int], k: int) -> float:
    """TkMIA's loss of one sample: ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)``."""
    c = len(f)
    max_s = max(f[i] for i in range(c) if s[i])
    min_r = min(f[i] for i in range(c) if y[i] and not s[i])
    return atk_loop([max_s - v for v in f], c - k) + atk_loop([v - min_r for v in f], k)


def sgd_reference(model, x, objective, lr: float, lam: float, steps: int, penalty: str = "w"):
    """SPEC §4.1 written out in float64 for a batch, without early exit: ``steps`` SGD steps
    (momentum 0.9) on ``w`` in ``x' = (tanh(atanh(2x − 1) + w) + 1) / 2``, minimising
    ``objective(model(x')).sum()`` plus ``(λ/2)‖w‖²`` (``penalty="w"``) or
    ``(λ/2)‖x' − x‖²`` (``"pixel"``); returns the pixels ``x'`` after the last step."""
    import torch

    x = x.double()
    z0 = torch.atanh(2 * x.clamp(1e-6, 1 - 1e-6) - 1)
    w = torch.zeros_like(x)
    buf = torch.zeros_like(x)
    for _ in range(steps):
        w.requires_grad_(True)
        x_adv = (torch.tanh(z0 + w) + 1) / 2
        loss = objective(model(x_adv)).sum()
        if penalty == "w":
            loss = loss + 0.5 * lam * w.pow(2).sum()
        else:
            loss = loss + 0.5 * lam * (x_adv - x).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            buf = 0.9 * buf + grad
            w = w.detach() - lr * buf
    with torch.no_grad():
        return (torch.tanh(z0 + w) + 1) / 2


def kfool_step_reference(model, x, r, anchor: int, k: int, overshoot: float):
    """One kFool step (SPEC §4.2, gradients w.r.t. the tanh-space variable, as
    :class:`tkmia.attacks.KFool` documents) for a single image ``x`` ``(1, C, H, W)``
    in float64, from the accumulated step ``r``; returns the new ``r``."""
    import torch

    z0 = torch.atanh(2 * x.double().clamp(1e-6, 1 - 1e-6) - 1)
    v = ((1 + overshoot) * r).clone().requires_grad_(True)
    f = model((torch.tanh(z0 + v) + 1) / 2)[0]
    w = torch.zeros_like(r)
    s = 0.0
    for p in f.detach().topk(k + 1).indices.tolist():
        if p == anchor:
            continue
        (g,) = torch.autograd.grad(f[p] - f[anchor], v, retain_graph=True)
        norm = float(g.norm())
        w = w + g / norm
        s += float((f[p] - f[anchor]).detach()) / norm
    return r + abs(s) * w / w.norm()
