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
