import numpy as np
import pytest
import scipy.linalg
import torch

from stepdistill.data import from_uint8, load_fashion_mnist
from stepdistill.evaluation import DomainScorer
from stepdistill.metrics import feature_stats, frechet_distance


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's matrix square root (pytorch-fid's reference computation)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_frechet_distance_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(400, dim)) * 1.3 + 0.2
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), scipy_frechet(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-3 * abs(ref)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6


def test_frechet_distance_of_known_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[1.0]])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))


def test_domain_fd_is_small_for_real_and_grows_with_noise():
    scorer = DomainScorer.from_folder("assets/fashion-classifier")
    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    real = from_uint8(images[:2000], 16)
    clean = scorer.score(real, torch.from_numpy(labels[:2000]))
    assert clean["accuracy"] > 0.85
    fds = [clean["fd"]]
    g = torch.Generator().manual_seed(0)
    for strength in (0.1, 0.3, 0.6):
        fds.append(scorer.score((real + strength * torch.randn(real.shape, generator=g)).clamp(-1, 1))["fd"])
    assert fds == sorted(fds) and fds[-1] > 20 * fds[0]
    with pytest.raises(ValueError, match="takes"):
        scorer.score(torch.zeros(4, 3, 16, 16))
