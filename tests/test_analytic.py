import pytest
import torch

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.denoiser import Condition
from stepdistill.sampling import ddim_sample
from stepdistill.schedules import Schedule, add_noise, ddim_step, timestep_grid


def test_single_gaussian_posterior_is_the_linear_closed_form():
    mixture = GaussianMixture.random(num_components=1, shape=(3,), seed=1)
    mu, cov = mixture.means[0], mixture.covs[0]
    alpha, sigma = torch.tensor([0.8, 0.3], dtype=torch.float64), torch.tensor([0.6, 0.95], dtype=torch.float64)
    x_t = torch.randn(2, 3, dtype=torch.float64)
    for i in range(2):
        gain = (
            alpha[i] * cov @ torch.linalg.inv(alpha[i] ** 2 * cov + sigma[i] ** 2 * torch.eye(3, dtype=torch.float64))
        )
        expected = mu + gain @ (x_t[i] - alpha[i] * mu)
        torch.testing.assert_close(
            mixture.posterior_mean(x_t[i : i + 1], alpha[i : i + 1], sigma[i : i + 1])[0], expected
        )


def test_mixture_posterior_matches_numerical_integration_in_1d():
    means = torch.tensor([[-1.5], [0.5], [2.0]], dtype=torch.float64)
    covs = torch.tensor([0.2, 0.05, 0.4], dtype=torch.float64).view(3, 1, 1)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mixture = GaussianMixture(means, covs, weights)
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    prior = sum(
        w * torch.exp(-0.5 * (grid - m) ** 2 / c) / (2 * torch.pi * c) ** 0.5
        for w, m, c in zip(weights, means[:, 0], covs[:, 0, 0])
    )
    for alpha, sigma, x in [(0.9, 0.436, 0.3), (0.5, 0.866, -1.0), (0.2, 0.98, 1.7)]:
        post = prior * torch.exp(-0.5 * (x - alpha * grid) ** 2 / sigma**2)
        expected = (grid * post).sum() / post.sum()
        got = mixture.posterior_mean(
            torch.tensor([[x]], dtype=torch.float64), torch.tensor([alpha]), torch.tensor([sigma])
        )
        assert abs(got.item() - expected.item()) < 1e-6


@pytest.mark.parametrize(
    "schedule",
    [Schedule.cosine(), Schedule.flow(), Schedule.from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})],
)
def test_one_ddim_step_matches_closed_form(schedule):
    """One DDIM step of a single-Gaussian teacher is the closed-form affine map of x_t."""
    mixture = GaussianMixture.random(num_components=1, shape=(2,), seed=3)
    den = GaussianMixtureDenoiser(mixture, schedule)
    t, s = 0.7, 0.4
    (a_t, s_t), (a_s, s_s) = (
        schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)),
        schedule.alpha_sigma(torch.tensor(s, dtype=torch.float64)),
    )
    mu, cov, eye = mixture.means[0], mixture.covs[0], torch.eye(2, dtype=torch.float64)
    gain = a_t * cov @ torch.linalg.inv(a_t**2 * cov + s_t**2 * eye)
    x_t = torch.randn(5, 2, dtype=torch.float64)
    x0 = mu + (x_t - a_t * mu) @ gain.T
    expected = a_s * x0 + s_s * (x_t - a_t * x0) / s_t
    x0_hat, eps_hat = den.split(x_t, torch.full((5,), t, dtype=torch.float64))
    torch.testing.assert_close(ddim_step(x0_hat, eps_hat, a_s, s_s), expected)


@pytest.mark.parametrize(
    "schedule",
    [Schedule.cosine(), Schedule.flow(), Schedule.from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})],
)
def test_50_step_ddim_reproduces_mixture_moments(schedule):
    mixture = GaussianMixture.random(num_components=3, shape=(2,), seed=0)
    den = GaussianMixtureDenoiser(mixture, schedule)
    noise = torch.randn(6000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples = ddim_sample(den, noise, num_steps=50)
    mean, cov = mixture.moments()
    # tolerance: a few standard errors of the sample mean / covariance for 6000 samples
    assert (samples.mean(0) - mean).abs().max() < 0.08
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.15, rtol=0.05)
    # and the 1-step sampler does not (the mean of the mixture is all it can produce)
    one_step = ddim_sample(den, noise, num_steps=1)
    assert torch.cov(one_step.T).trace() < 0.1 * cov.trace()


def test_conditional_sampling_and_guidance():
    mixture = GaussianMixture.random(num_components=3, shape=(1, 1, 2), seed=0)
    den = GaussianMixtureDenoiser(mixture, Schedule.cosine())
    noise = torch.randn(3000, 1, 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.full((3000,), 2)
    uncond_mean = mixture.moments()[0]
    shift = {}
    for w in (1.0, 3.0):
        samples = ddim_sample(den, noise, Condition(labels=labels), num_steps=50, guidance_scale=w).reshape(-1, 2)
        assert torch.isfinite(samples).all()
        nearest = torch.cdist(samples, mixture.means).argmin(1)
        assert (nearest == 2).double().mean() > 0.99, f"guidance {w} left class 2"
        shift[w] = (samples.mean(0) - uncond_mean).norm()
        if w == 1.0:  # unguided conditional sampling reproduces the class's moments
            mean, cov = mixture.moments(labels=2)
            assert (samples.mean(0) - mean).norm() < 0.05
            torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.05, rtol=0.1)
    assert shift[3.0] > shift[1.0], "guidance pushes samples away from the unconditional mean"
    null = ddim_sample(den, noise, Condition(labels=torch.full((3000,), mixture.num_classes)), num_steps=50)
    torch.testing.assert_close(null.reshape(-1, 2).mean(0), mixture.moments()[0], atol=0.1, rtol=0)


def test_noised_samples_have_the_right_marginal():
    """Sanity check of the sampler's data: x_t of mixture samples has the mixture-of-Gaussians marginal."""
    mixture = GaussianMixture.random(num_components=2, shape=(2,), seed=2)
    x0 = mixture.sample(20000, torch.Generator().manual_seed(0))
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    x_t = add_noise(x0, torch.randn_like(x0), alpha, sigma)
    mean, cov = mixture.moments()
    torch.testing.assert_close(
        torch.cov(x_t.T), alpha**2 * cov + sigma**2 * torch.eye(2, dtype=torch.float64), atol=0.05, rtol=0.03
    )
    assert timestep_grid(Schedule.cosine(), 4).tolist() == [1.0, 0.75, 0.5, 0.25]
