import numpy as np
import pytest
import scipy.linalg
import torch

from stepdistill.data import load_fashion_mnist
from stepdistill.evaluation import ReferenceStats, domain_scorers
from stepdistill.metrics import feature_stats, frechet_distance

CLASSIFIER = "assets/fashion-classifier"


def scorers_and_net():
    scorers = domain_scorers(CLASSIFIER)
    return scorers, scorers.classifier, ReferenceStats.load(f"{CLASSIFIER}/reference-test.npz")


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
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[1.0]])) == pytest.approx(
        5.0
    )
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 3)))


def test_command_fd_equals_independent_numpy_fd():
    """The torchmetrics-accumulated FD equals scipy's FD of the same features to 1e-3 relative."""
    scorers, net, reference = scorers_and_net()
    images = torch.from_numpy(load_fashion_mnist("assets/fashion-mnist", "train")[0][:1500])[:, None]
    for i in range(0, 1500, 400):  # several batches, as the command feeds them
        scorers.update(images[i : i + 400])
    fd = scorers.compute()["fd_domain"]
    mu, sigma = feature_stats(net(images))
    ref = scipy_frechet(mu, sigma, reference.mu, reference.sigma)
    assert abs(fd - ref) <= 1e-3 * ref


def test_domain_fd_is_small_for_real_and_grows_with_noise():
    scorers, _, _ = scorers_and_net()
    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    real = torch.from_numpy(images[:2000])[:, None]
    scorers.update(real, torch.from_numpy(labels[:2000]))
    clean = scorers.compute()
    assert clean["accuracy"] > 0.85 and clean["n"] == 2000
    fds = [clean["fd_domain"]]
    g = torch.Generator().manual_seed(0)
    for strength in (10.0, 30.0, 60.0):
        scorers.reset()
        noisy = (real.float() + strength * torch.randn(real.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
        scorers.update(noisy)
        fds.append(scorers.compute()["fd_domain"])
    assert fds == sorted(fds) and fds[-1] > 20 * fds[0], fds
    with pytest.raises(ValueError, match="takes"):
        scorers.update(torch.zeros(4, 3, 16, 16, dtype=torch.uint8))
