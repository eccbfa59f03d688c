"""Linear CKA (Kornblith et al., 2019) for the layer-similarity heatmaps (Figs. 4-6).

``CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)`` on column-centred X (n x d1), Y (n x d2),
in fp64. Equivalently, with centred Gram matrices K = XXᵀ, L = YYᵀ (n x n):
``<K, L>_F / (||K||_F ||L||_F)`` — the kernel form, cheaper when n < d. Rows are examples
(e.g. token positions), columns features; both inputs must have the same rows in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from semalign_core.errors import InvalidParameterError


def _centred(x: Tensor) -> Tensor:
    if x.dim() != 2:
        raise InvalidParameterError(
            f"CKA takes 2-D (n examples x d features) states, got shape {tuple(x.shape)}"
        )
    x = x.detach().to(device="cpu", dtype=torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _check_rows(n_a: int, n_b: int) -> None:
    if n_a != n_b:
        raise InvalidParameterError(
            f"CKA needs the same examples on both sides, got {n_a} and {n_b} rows"
        )


def linear_cka(X: Tensor, Y: Tensor) -> float:
    """Linear CKA of two representations of the same n examples; NaN if either is constant."""
    _check_rows(X.shape[0], Y.shape[0])
    x, y = _centred(X), _centred(Y)
    if x.shape[0] < min(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        num, den = (kx * ky).sum(), kx.norm() * ky.norm()
    else:
        num = (y.T @ x).square().sum()
        den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else math.nan


def _normalised_grams(states: Sequence[Tensor]) -> Tensor:
    """(L, n*n): each layer's centred Gram, flattened and scaled to unit Frobenius norm."""
    out = []
    for s in states:
        x = _centred(s)
        k = (x @ x.T).reshape(-1)
        norm = k.norm()
        out.append(k / norm if norm > 0 else torch.full_like(k, math.nan))
    return torch.stack(out)


def cka_matrix(states_a: Sequence[Tensor], states_b: Sequence[Tensor]) -> Tensor:
    """(La, Lb) matrix of linear CKA between every layer of ``states_a`` and of ``states_b``.

    Each state is (n, d) over the same n examples. Work is done once per layer: when n is at
    most the smallest width, each layer's normalised n x n Gram is built once and the whole
    matrix is one matmul; otherwise the feature form is used with ||XᵀX||_F cached per layer.
    """
    if not states_a or not states_b:
        raise InvalidParameterError("cka_matrix needs at least one layer on each side")
    n = states_a[0].shape[0]
    for s in list(states_a) + list(states_b):
        _check_rows(n, s.shape[0])
    min_width = min(s.shape[-1] for s in list(states_a) + list(states_b))
    if n <= min_width:
        return _normalised_grams(states_a) @ _normalised_grams(states_b).T
    xs = [_centred(s) for s in states_a]
    ys = [_centred(s) for s in states_b]
    nx = [(x.T @ x).norm() for x in xs]
    ny = [(y.T @ y).norm() for y in ys]
    out = torch.empty(len(xs), len(ys), dtype=torch.float64)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            den = nx[i] * ny[j]
            out[i, j] = (y.T @ x).square().sum() / den if den > 0 else math.nan
    return out
