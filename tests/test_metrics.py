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
    images = torch.from_numpy(load_fashion_mnist("assets/fashion-mnist", "train")[0][:1500].copy())[:, None]
    for i in range(0, 1500, 400):  # several batches, as the command feeds them
        scorers.update(images[i : i + 400])
    fd = scorers.compute()["fd_domain"]
    mu, sigma = feature_stats(net(images))
    ref = scipy_frechet(mu, sigma, reference.mu, reference.sigma)
    assert abs(fd - ref) <= 1e-3 * ref


def test_fd_of_two_real_halves_is_near_zero_and_grows_with_noise():
    """FD between the two halves of the bundled real subset is near 0 (the floor), and grows monotonically
    as Gaussian noise of increasing strength is added to one half."""
    from stepdistill.evaluation import DomainFeatures, FrechetDistance, Scorers
    from stepdistill.features import DomainClassifier

    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    real = torch.from_numpy(images.copy())[:, None]
    net = DomainFeatures(DomainClassifier.from_pretrained(CLASSIFIER))
    half_a, half_b = real[:2500], real[2500:]
    scorers = Scorers({"fd_domain": FrechetDistance(net, ReferenceStats.of(net, half_a, "half A"))}, net)
    scorers.update(half_b, torch.from_numpy(labels[2500:]))
    clean = scorers.compute()
    # near 0: the estimation floor at 2,500 samples, far below the 50-step teacher's 5.3 (README)
    assert clean["fd_domain"] < 1.5 and clean["accuracy"] > 0.85 and clean["n"] == 2500
    fds = [clean["fd_domain"]]
    g = torch.Generator().manual_seed(0)
    for strength in (5.0, 10.0, 20.0, 40.0):
        scorers.reset()
        noisy = (half_b.float() + strength * torch.randn(half_b.shape, generator=g)).round().clamp(0, 255)
        scorers.update(noisy.to(torch.uint8))
        fds.append(scorers.compute()["fd_domain"])
    assert fds == sorted(fds) and fds[-1] > 20 * fds[0], fds
    with pytest.raises(ValueError, match="takes"):
        scorers.update(torch.zeros(4, 3, 16, 16, dtype=torch.uint8))
