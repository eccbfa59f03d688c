"""Linear CKA: identities, invariances, and the layer x layer matrix."""

import math

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.lm.cka import cka_matrix, linear_cka


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_cka(X, Y):
    """Kernel form with an explicit centring matrix H (Kornblith et al. 2019, linear HSIC)."""
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float((K * L).sum() / (K.norm() * L.norm()))


@pytest.mark.parametrize("n, d", [(50, 8), (8, 50)])  # feature form and kernel form
def test_self_similarity_is_one(n, d):
    X = randn(n, d, seed=1)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, d1, d2", [(60, 10, 7), (6, 20, 30)])
def test_matches_reference_and_is_symmetric(n, d1, d2):
    X, Y = randn(n, d1, seed=2), randn(n, d2, seed=3)
    assert linear_cka(X, Y) == pytest.approx(reference_cka(X, Y), abs=1e-12)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), abs=1e-12)
    assert 0.0 <= linear_cka(X, Y) <= 1.0


def test_invariant_to_orthogonal_transform_isotropic_scaling_and_shift():
    X = randn(40, 12, seed=4)
    Y = randn(40, 9, seed=5) + X[:, :9]  # related to X so the value is not trivial
    Q = torch.linalg.qr(randn(12, 12, seed=6))[0]
    base = linear_cka(X, Y)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(3.7 * X, 0.2 * Y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(X + 5.0, Y) == pytest.approx(base, abs=1e-12)  # centring
    # not invariant to a non-isotropic scaling
    assert linear_cka(X * torch.linspace(0.1, 10, 12, dtype=torch.float64), Y) != pytest.approx(
        base, abs=1e-6
    )


def test_low_precision_inputs_are_handled_in_fp64():
    X = randn(30, 16, seed=7).to(torch.bfloat16)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [6, 40])  # kernel path (n ≤ widths) and feature path
def test_cka_matrix_matches_pairwise(n):
    a = [randn(n, 10, seed=10 + i) for i in range(3)]
    b = [randn(n, 12, seed=20 + i) for i in range(2)] + [
        a[1] @ torch.linalg.qr(randn(10, 10, seed=30))[0]
    ]
    M = cka_matrix(a, b)
    assert M.shape == (3, 3) and M.dtype == torch.float64
    for i in range(3):
        for j in range(3):
            assert M[i, j].item() == pytest.approx(linear_cka(a[i], b[j]), abs=1e-10)
    assert M[1, 2].item() == pytest.approx(1.0, abs=1e-10)


def test_constant_representation_and_errors():
    assert math.isnan(linear_cka(torch.ones(5, 3), randn(5, 3)))
    with pytest.raises(InvalidParameterError):
        linear_cka(randn(5, 3), randn(6, 3))
    with pytest.raises(InvalidParameterError):
        linear_cka(randn(5, 3, 2), randn(5, 3))
    with pytest.raises(InvalidParameterError):
        cka_matrix([randn(5, 3)], [randn(4, 3)])
    with pytest.raises(InvalidParameterError):
        cka_matrix([], [randn(4, 3)])
