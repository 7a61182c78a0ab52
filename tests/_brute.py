"""Brute-force references of the losses, as plain Python loops over one sample's scores."""

from __future__ import annotations

from statistics import NormalDist


def atk_loop(a: list[float], m: int) -> float:
    """ATk_m: the mean of the m largest entries."""
    return sum(sorted(a, reverse=True)[:m]) / m


def tkmia_loop(f: list[float], y: list[int], s: list[int], k: int) -> float:
    """TkMIA's loss of one sample: ``ATk_{c−k}(max_S f − f) + ATk_k(f − min_R f)``."""
    c = len(f)
    max_s = max(f[i] for i in range(c) if s[i])
    min_r = min(f[i] for i in range(c) if y[i] and not s[i])
    return atk_loop([max_s - v for v in f], c - k) + atk_loop([v - min_r for v in f], k)


def sgd_reference(
    model, x, objective, lr: float, lam: float, steps: int, penalty: str = "w", min_step=3e-6
):
    """SPEC §4.1 written out in float64 for a batch, without early exit: ``steps`` SGD steps
    (momentum 0.9) on ``w`` in ``x' = (tanh(atanh(2x − 1) + w) + 1) / 2``, minimising
    ``objective(model(x')).sum()`` plus ``(λ/2)‖w‖²`` (``penalty="w"``) or
    ``(λ/2)‖x' − x‖²`` (``"pixel"``); returns the pixels ``x'`` after the last step.
    A sample whose first step ``lr·rms`` (RMS of its first gradient) is below ``min_step``
    steps with the learning rate ``lr·min(min_step / (lr·rms), 1e4)`` throughout (issue 35)."""
    import torch

    x = x.double()
    z0 = torch.atanh(2 * x.clamp(1e-6, 1 - 1e-6) - 1)
    w = torch.zeros_like(x)
    buf = torch.zeros_like(x)
    boost = None
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
            if boost is None:
                rms = grad.flatten(1).norm(dim=1) / grad[0].numel() ** 0.5
                boost = (min_step / (lr * rms)).clamp(1.0, 1e4).view(-1, *([1] * (x.dim() - 1)))
            buf = 0.9 * buf + grad
            w = w.detach() - lr * boost * buf
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


def kfool_loop_reference(model, x, y, s, k: int, max_iter: int):
    """The paper's kFool loop (``kfool_global`` of the reference code, SPEC §4.2 with
    gradients w.r.t. the *pixels* and no overshoot), one image ``x`` ``(1, C, H, W)`` at a
    time in float64, with S1's success rule; written from its description, independently
    of :class:`tkmia.attacks.KFool`.

    ``y``, ``s``: ``(c,)`` 0/1, the relevant labels Y and the specified S. The anchor is the
    best relevant label on the clean image. While some label of Y is in the top-k and fewer
    than ``max_iter`` steps were taken: take the gradients w.r.t. the image ``x'`` of the
    top-(k+1) scores and of the anchor's; for each of those labels other than the anchor
    whose gradient differs from the anchor's, add ``g/‖g‖`` to ``w`` and ``(f_p − f_m)/‖g‖``
    to ``s``; add ``|s|·w/‖w‖`` to the tanh-space step ``r`` (a zero ``w`` leaves ``r`` as
    it is, and the image can never move again: the loop ends after that step); rescore;
    success once every label of S that was in the clean top-k has left it.

    Returns:
        ``(success, steps taken, x' (1, C, H, W))``.
    """
    import torch

    x = x.double()
    yb, sb = [bool(v) for v in y.tolist()], [bool(v) for v in s.tolist()]
    z0 = torch.atanh(2 * x.clamp(1e-6, 1 - 1e-6) - 1)

    def image(r):
        return ((torch.tanh(z0 + r) + 1) / 2).requires_grad_(True)

    def top(f, n):
        return f.detach().topk(n).indices.tolist()

    xa = image(torch.zeros_like(x))
    f = model(xa)[0]
    fd = f.detach()
    anchor = max((j for j in range(len(yb)) if yb[j]), key=lambda j: (float(fd[j]), -j))
    clean_in = [j for j in top(f, k) if sb[j]]
    r = torch.zeros_like(x)
    steps = 0
    while any(yb[j] for j in top(f, k)) and steps < max_iter:
        (g_m,) = torch.autograd.grad(f[anchor], xa, retain_graph=True)
        w = torch.zeros_like(x)
        total = 0.0
        for p in top(f, k + 1):
            (g_p,) = torch.autograd.grad(f[p], xa, retain_graph=True)
            g = g_p - g_m
            if p == anchor or bool((g == 0).all()):
                continue
            inv = 1.0 / float(g.norm())
            w = w + g * inv
            total += float((f[p] - f[anchor]).detach()) * inv
        steps += 1
        if float(w.norm()) == 0:
            break
        r = r + abs(total) * w / w.norm()
        xa = image(r)
        f = model(xa)[0]
        if not any(j in clean_in for j in top(f, k)):
            return True, steps, xa.detach()
    return False, steps, xa.detach()


def tkmlapt_loop(f: list[float], t: list[int], k: int, tie: float = 0.0) -> float:
    """TkML-AP-T's loss of one sample (SPEC §7.3), term by term:
    ``Σ_{j∈T} max(f_[k] − f_j, 0) + Σ_{j∉T} max(f_j − f_[k], 0) + (τ/2) Σ_j (1 − t_j f_j)²``
    with ``t_j = +1`` on the targets and ``−1`` elsewhere."""
    kth = sorted(f, reverse=True)[k - 1]
    pull = sum(max(kth - f[j], 0.0) for j in range(len(f)) if t[j])
    push = sum(max(f[j] - kth, 0.0) for j in range(len(f)) if not t[j])
    sign = [1.0 if t[j] else -1.0 for j in range(len(f))]
    return pull + push + tie / 2 * sum((1 - sign[j] * f[j]) ** 2 for j in range(len(f)))


_N01 = NormalDist()


def _phi(x: float) -> float:
    if x == float("inf"):
        return 1.0
    if x == float("-inf"):
        return 0.0
    return _N01.cdf(x)


def _phi_inv(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return _N01.inv_cdf(p)


def multiguard_e(lower, upper, relevant, k, r, sigma, k_prime):  # noqa: ANN001, ANN201
    """MultiGuard's certified intersection size e(R) for one image, as Theorem 1 reads
    (SPEC §7.8): plain-Python float64 loops over e, u and v, no numpy or scipy."""
    c = len(lower)
    a = sorted((lower[i] for i in range(c) if relevant[i]), reverse=True)
    b = sorted((upper[i] for i in range(c) if not relevant[i]), reverse=True)
    d = len(a)
    a += [0.0] * (c - len(a))
    b += [0.0] * (c - len(b))
    for e in range(min(d, k), 0, -1):
        s = k - e + 1
        lhs = _phi(_phi_inv(a[e - 1]) - r / sigma)
        for u in range(1, d - e + 2):
            total = sum(a[e - 1 : e - 1 + u])
            lhs = max(lhs, k_prime / u * _phi(_phi_inv(total / k_prime) - r / sigma))
        rhs = _phi(_phi_inv(b[s - 1]) + r / sigma)
        for v in range(1, s + 1):
            total = sum(b[s - v : s])
            rhs = min(rhs, k_prime / v * _phi(_phi_inv(total / k_prime) + r / sigma))
        if lhs > rhs:
            return e
    return 0
