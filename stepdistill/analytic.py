"""An analytic teacher: Gaussian-mixture data whose denoiser is exact (after EDM2's ``toy_example.py``).

For data ``x0 ~ sum_k pi_k N(mu_k, S_k)`` and ``x_t = alpha x0 + sigma eps``, each component gives
``x_t | k ~ N(alpha mu_k, alpha^2 S_k + sigma^2 I)`` and the posterior mean

    E[x0 | x_t, k] = mu_k + alpha S_k (alpha^2 S_k + sigma^2 I)^-1 (x_t - alpha mu_k),
    E[x0 | x_t]    = sum_k r_k(x_t) E[x0 | x_t, k],
    r_k proportional to pi_k N(x_t; alpha mu_k, alpha^2 S_k + sigma^2 I).

``GaussianMixtureDenoiser`` returns this exact ``x0`` through the same interface as a network, so every
strategy can be checked for correctness in seconds: a perfect student of it is known in closed form.
Components carry class labels, so conditional sampling and classifier-free guidance are testable too
(the null class means "all components").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Condition, Denoiser
from .schedules import Schedule


class GaussianMixture:
    """A Gaussian mixture over images ``[C, H, W]`` (flattened to ``D = C*H*W`` internally).

    Args:
        means: ``[K, D]`` component means.
        covs: ``[K, D, D]`` component covariances (symmetric positive definite).
        weights: ``[K]`` mixture weights (normalised here).
        shape: the sample shape ``(C, H, W)`` with ``C*H*W = D``; default ``(D,)`` vectors.
        classes: ``[K]`` class label of each component; default ``arange(K)``.
    """

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        weights: Tensor | None = None,
        shape: tuple[int, ...] | None = None,
        classes: Tensor | None = None,
    ):
        self.means = means.double()
        self.covs = covs.double()
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(f"covs must be [K, D, D] = [{k}, {d}, {d}], got {tuple(self.covs.shape)}.")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else weights.double()
        self.weights = weights / weights.sum()
        self.shape = tuple(shape) if shape is not None else (d,)
        if torch.Size(self.shape).numel() != d:
            raise ValueError(f"shape {self.shape} does not hold D = {d} values.")
        self.classes = torch.arange(k) if classes is None else classes.long()
        self.chol = torch.linalg.cholesky(self.covs)  # raises if a covariance is not positive definite

    @classmethod
    def random(
        cls, num_components: int = 3, shape: tuple[int, ...] = (2,), scale: float = 1.0, seed: int = 0
    ) -> GaussianMixture:
        """A reproducible random mixture with well-separated means and anisotropic covariances."""
        g = torch.Generator().manual_seed(seed)
        d = torch.Size(shape).numel()
        means = 2.0 * scale * torch.randn(num_components, d, generator=g, dtype=torch.float64)
        a = torch.randn(num_components, d, d, generator=g, dtype=torch.float64) * (0.3 * scale / d**0.5)
        covs = a @ a.transpose(1, 2) + (0.05 * scale) ** 2 * torch.eye(d, dtype=torch.float64)
        weights = 0.5 + torch.rand(num_components, generator=g, dtype=torch.float64)
        return cls(means, covs, weights, shape)

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        """Draw ``[n, *shape]`` float64 samples (from the components of ``labels`` if given)."""
        probs = self.weights.expand(n, -1)
        if labels is not None:
            probs = probs * (self.classes[None] == labels[:, None])
        comp = torch.multinomial(probs, 1, generator=generator)[:, 0]
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[comp] + (self.chol[comp] @ z[:, :, None])[:, :, 0]
        return x.reshape(n, *self.shape)

    def moments(self, labels: int | None = None) -> tuple[Tensor, Tensor]:
        """Exact mean ``[D]`` and covariance ``[D, D]`` of the mixture (or of one class's components)."""
        w = self.weights if labels is None else self.weights * (self.classes == labels)
        w = w / w.sum()
        mean = (w[:, None] * self.means).sum(0)
        centred = self.means - mean
        cov = (w[:, None, None] * (self.covs + centred[:, :, None] * centred[:, None, :])).sum(0)
        return mean, cov

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact ``E[x0 | x_t]`` ``[B, *shape]`` for per-sample ``alpha, sigma`` ``[B]``.

        ``labels`` ``[B]`` restricts each sample to its class's components; entries equal to ``num_classes``
        (the null class) use the whole mixture.
        """
        b, d = len(x_t), self.means.shape[1]
        x = x_t.reshape(b, d).double()
        alpha, sigma = alpha.double().reshape(b, 1, 1, 1), sigma.double().reshape(b, 1, 1, 1)
        eye = torch.eye(d, dtype=torch.float64)
        cov_t = alpha**2 * self.covs[None] + sigma**2 * eye  # [B, K, D, D]
        chol = torch.linalg.cholesky(cov_t)
        resid = x[:, None, :] - alpha[..., 0] * self.means[None]  # [B, K, D]
        sol = torch.cholesky_solve(resid[..., None], chol)[..., 0]  # (cov_t)^-1 resid, [B, K, D]
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # [B, K]
        logp = self.weights.log()[None] - 0.5 * ((resid * sol).sum(-1) + logdet)
        if labels is not None:
            allowed = (self.classes[None] == labels[:, None]) | (labels[:, None] >= self.num_classes)
            logp = logp.masked_fill(~allowed, float("-inf"))
        resp = torch.softmax(logp, dim=1)  # [B, K]
        comp_mean = self.means[None] + alpha[..., 0] * (self.covs[None] @ sol[..., None])[..., 0]  # [B, K, D]
        x0 = (resp[..., None] * comp_mean).sum(1)
        return x0.reshape(b, *self.shape).to(x_t.dtype)


class GaussianMixtureDenoiser(Denoiser):
    """The exact denoiser of a ``GaussianMixture`` under any ``Schedule``; native prediction is ``x0``.

    The null class is ``mixture.num_classes``; conditioning on a label restricts the posterior to that
    class's components, so classifier-free guidance behaves as for a real class-conditional teacher.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__(None, schedule, "x0", null_class=mixture.num_classes)
        self.mixture = mixture

    def native(self, x_t: Tensor, t: Tensor, cond: Condition | None, w: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.double())
        labels = None if cond is None else cond.labels
        return self.mixture.posterior_mean(x_t, alpha, sigma, labels)
