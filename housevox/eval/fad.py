"""Fréchet distance between two Gaussians fitted to embeddings: the FAD of fadtk and frechet-audio-distance.

FAD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂). Both libraries take the trace of
`scipy.linalg.sqrtm(Σ₁Σ₂)`, a non-symmetric product whose square root goes complex on
rank-deficient covariances (few takes, many dimensions). Here the same trace comes from the
symmetric PSD matrix √Σ₁ Σ₂ √Σ₁, which has the same eigenvalues: real, and stable in float64.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    """Mean [D] and covariance [D, D] of a set of embeddings, with the number of vectors behind them."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def fit_gaussian(embeddings: np.ndarray) -> Gaussian:
    """Mean and unbiased covariance (ddof 1, as fadtk) of [N, D] embeddings in float64; needs N ≥ 2."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embedding vectors of one width, got shape {x.shape}")
    return Gaussian(x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False)), x.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative rounding-error eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr √(Σ₁Σ₂) for PSD Σ₁, Σ₂, via the eigenvalues of √Σ₁ Σ₂ √Σ₁."""
    root = _psd_sqrt(cov1)
    inner = root @ cov2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μa, Σa) and N(μb, Σb); 0 for identical statistics."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"embedding widths differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    diff = a.mean - b.mean
    value = float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt_product(a.cov, b.cov))
    return max(value, 0.0)
