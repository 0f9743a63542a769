"""Loss terms shared by strategies and by teacher training. Pure functions of networks and tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Condition, Denoiser
from .distributed import unwrap
from .schedules import add_noise, combine


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Condition | None = None,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """Denoising score matching in the backbone's native parameterisation (mean squared error).

    Eq. 14 of Ho et al. 2020 (DDPM, arXiv 2006.11239) for eps-prediction; the same regression on v
    (Salimans & Ho 2022, App. D), x0 or flow velocity for other backbones. Used to train teachers and,
    later, fake-score networks on generator samples.

    Args:
        denoiser: the network being trained, or its distributed wrapper: it is called through ``forward`` (so
            DDP sees the call and syncs gradients) and its schedule and prediction type are read via ``unwrap``.
        x0: ``[B, C, H, W]`` clean samples.
        cond: their conditions (already with any label dropout applied).
        t: ``[B]`` times; drawn with ``schedule.sample_t`` when omitted.
        eps: ``[B, C, H, W]`` noise; drawn when omitted.
        guidance_scale: regress the network's classifier-free guided output (SiD-LSG's fake score trained at
            kappa_1); 1 is the plain conditional output.

    Returns:
        scalar loss.
    """
    net = unwrap(denoiser)
    if t is None:
        t = net.schedule.sample_t(len(x0), device=x0.device, generator=generator)
    if eps is None:
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha, sigma = net.schedule.alpha_sigma(t.to(x0.dtype))
    x_t = add_noise(x0, eps, alpha, sigma)
    target = combine(x0, eps, net.prediction, alpha, sigma)
    pred = denoiser(x_t, t, cond, guidance_scale=guidance_scale, kind=net.prediction)
    return (pred - target).float().pow(2).mean()


def distillation_weight(log_snr: Tensor, kind: str) -> Tensor:
    """Per-sample weight ``[B]`` of an x-space regression loss (Sec. 4 of Salimans & Ho 2022).

    ``"truncated_snr"``: ``max(SNR, 1)``, i.e. ``max(||x - x_hat||^2, ||eps - eps_hat||^2)``;
    ``"snr_plus_one"``: ``SNR + 1`` (the v-loss); ``"constant"``: 1.
    """
    snr = log_snr.float().clamp(max=30.0).exp()  # clamp: SNR at the clean end is infinite
    if kind == "truncated_snr":
        return snr.clamp_min(1.0)
    if kind == "snr_plus_one":
        return snr + 1.0
    if kind == "constant":
        return torch.ones_like(snr)
    raise ValueError(f"Unknown loss weighting {kind!r}: expected truncated_snr, snr_plus_one or constant.")


def consistency_distance(a: Tensor, b: Tensor, kind: str = "l2", huber_c: float = 0.001) -> Tensor:
    """Mean distance between consistency-function outputs ``[B, ...]``.

    ``"l2"``: mean squared error; ``"huber"``: pseudo-Huber ``sqrt((a - b)^2 + c^2) - c`` per element
    (Song & Dhariwal 2023 use it per sample; LCM-LoRA's scripts per element, as here).
    """
    if kind == "l2":
        return (a - b).pow(2).mean()
    if kind == "huber":
        return ((a - b).pow(2) + huber_c * huber_c).sqrt().sub(huber_c).mean()
    raise ValueError(f"Unknown consistency distance {kind!r}: expected l2 or huber.")


def drop_labels(cond: Condition, p: float, null_class: int, generator: torch.Generator | None = None) -> Condition:
    """Replace each label by ``null_class`` with probability ``p`` (classifier-free guidance training)."""
    if cond.labels is None or p <= 0:
        return cond
    drop = torch.rand(cond.labels.shape, device=cond.labels.device, generator=generator) < p
    return Condition(
        **{**cond.__dict__, "labels": torch.where(drop, torch.full_like(cond.labels, null_class), cond.labels)}
    )


def distribution_matching_loss(x_gen: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's generator loss, whose gradient with respect to ``x_gen`` is the distribution-matching gradient.

    Eq. 7-8 of Yin et al. 2023 (DMD, arXiv 2311.18828), as DMD2 (arXiv 2405.14867) computes it: with
    ``p_real = x_gen - x0_real`` and ``p_fake = x_gen - x0_fake`` (the real and fake scores written through their
    x0 predictions at the same noisy ``x_t``), ``grad = (p_real - p_fake) / mean|p_real|`` per sample, and the loss
    ``0.5 * mean((x_gen - stopgrad(x_gen - grad))^2)``, so a gradient step moves ``x_gen`` along ``-grad``.

    Args:
        x_gen: ``[B, C, H, W]`` generator samples (with gradient).
        x0_real, x0_fake: ``[B, C, H, W]`` the teacher's (guided) and the fake score's x0 at ``x_t`` (no gradient).

    Returns:
        scalar loss (``0.5 * mean(grad^2)`` in value).
    """
    x = x_gen.float()
    with torch.no_grad():
        dims = tuple(range(1, x.ndim))
        norm = (x - x0_real.float()).abs().mean(dim=dims, keepdim=True)
        grad = (x0_fake.float() - x0_real.float()) / norm.clamp_min(torch.finfo(torch.float32).tiny)
    return 0.5 * (x - (x - grad).detach()).pow(2).mean()


def score_identity_loss(x_gen: Tensor, x0_real: Tensor, x0_fake: Tensor, alpha: float = 1.2) -> Tensor:
    """SiD's generator loss (Zhou et al. 2024, arXiv 2404.04057, Eq. 23 and its released code).

    With the teacher's and the fake score's x0 at the same noisy ``x_t`` of the generator's samples,
    ``L = (x0_real - x0_fake) . ((x0_real - x_gen) - alpha (x0_real - x0_fake)) / w`` per sample, where
    ``w = mean|x_gen - x0_real|`` (detached, at least 1e-5), averaged over pixels and batch. Unlike DMD's loss,
    the gradient is meant to flow through both x0 predictions (their networks' inputs) into ``x_gen``: call the
    score networks with gradient to their inputs and frozen parameters.

    Args:
        x_gen: ``[B, C, H, W]`` generator samples (with gradient).
        x0_real, x0_fake: ``[B, C, H, W]`` the teacher's (guided) and the fake score's x0 at ``x_t`` (with gradient
            to ``x_t``).
        alpha: 1.2 for images (SiD), 1.0 with long-short guidance (SiD-LSG).

    Returns:
        scalar loss.
    """
    x, real, fake = x_gen.float(), x0_real.float(), x0_fake.float()
    with torch.no_grad():
        dims = tuple(range(1, x.ndim))
        w = (x - real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-5)
    diff = real - fake
    return (diff * ((real - x) - alpha * diff) / w).mean()


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating GAN loss of the generator, ``softplus(-D(fake))`` (DMD2 Sec. 4.2)."""
    return torch.nn.functional.softplus(-fake_logits.float()).mean()


def gan_critic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The critic's loss, ``softplus(-D(real)) + softplus(D(fake))`` (DMD2 Sec. 4.2)."""
    softplus = torch.nn.functional.softplus
    return softplus(-real_logits.float()).mean() + softplus(fake_logits.float()).mean()
