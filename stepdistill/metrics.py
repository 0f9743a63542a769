"""Metric math: feature statistics and the Frechet distance (Heusel et al. 2017, arXiv 1706.08500, Eq. 6).

Kept free of any network so that it can be checked against an independent computation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def feature_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features`` ``[N, D]``."""
    f = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"Need features [N >= 2, D] for statistics, got shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

    ``tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same spectrum as ``S1 S2`` and avoids a non-symmetric
    matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"Feature statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}."
        )
    root = _sqrt_psd(sigma1)
    cross = np.linalg.eigvalsh(root @ sigma2 @ root).clip(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(cross).sum())


@torch.no_grad()
def batched(fn, x: Tensor, batch_size: int = 500) -> Tensor:
    """Apply ``fn`` to ``x`` in batches along dim 0 and concatenate the results."""
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
