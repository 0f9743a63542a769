"""A discriminator on a frozen network's features, for the adversarial terms of any strategy.

Feature source: forward hooks on several blocks of a Denoiser's backbone (``feature_levels``: every down block and
the mid block of a UNet, evenly spaced joint-attention blocks of an SD3 transformer), read in one forward pass on a
noisy image, as LADD (Sauer et al. 2024, arXiv 2403.12015) reads its teacher and a peer toolkit's DMD2 reads the frozen
teacher at several resolutions. On top of each level sits a small head (two 3x3 convolutions, global pooling), and a
projection on the condition (Miyato & Koyama 2018: the inner product of the pooled features with a class embedding,
or with a projection of the prompt's mean token embedding); the logits of the levels are summed.

What the critic sees and how it learns are separate, stateless helpers: ``critic_times`` (uniform over training
indices, biased to low noise, or LADD's logit-normal), the non-saturating or hinge losses, an approximate R1 penalty
(the change of the logits under a small perturbation of the real input), and ``accuracy_by_level``, which buckets the
critic's accuracy by noise level so that a critic at chance at every level shows in the log while training.

Rule: a discriminator reads the teacher, the fake score or the student, never the evaluation's feature network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backbones import FeaturesRead, captured_levels
from .denoiser import Condition, Denoiser
from .schedules import add_noise

CRITIC_TIME_SAMPLINGS = ("uniform", "low", "logit_normal")
LOSSES = ("non_saturating", "hinge")


def feature_levels(backbone: nn.Module) -> list[str]:
    """The default blocks read for a discriminator: a UNet's down blocks and mid block, or three evenly spaced
    joint-attention blocks of an SD3 transformer."""
    if hasattr(backbone, "down_blocks"):
        names = [f"down_blocks.{i}" for i in range(len(backbone.down_blocks))]
        return names + (["mid_block"] if getattr(backbone, "mid_block", None) is not None else [])
    if hasattr(backbone, "transformer_blocks"):
        n = len(backbone.transformer_blocks)
        return sorted({f"transformer_blocks.{i}" for i in (n // 4, n // 2, (3 * n) // 4)})
    raise ValueError(f"{type(backbone).__name__} has no blocks a discriminator can read.")


def level_channels(backbone: nn.Module, name: str) -> int:
    """Channels of block ``name``'s features."""
    config = backbone.config
    if name.startswith("down_blocks."):
        return config.block_out_channels[int(name.split(".")[1])]
    if name == "mid_block":
        return config.block_out_channels[-1]
    return config.num_attention_heads * config.attention_head_dim


def read_features(net: Denoiser, x_t: Tensor, t: Tensor, cond: Condition | None, names: list[str]) -> list[Tensor]:
    """``net``'s features of blocks ``names`` at ``(x_t, t)`` (unguided), one forward pass that stops after the last
    of them. Gradient reaches ``x_t`` if it has one; ``net``'s parameters get none when it is frozen."""
    with captured_levels(net.backbone, names, stop=True) as store:
        try:
            net(x_t, t, cond)
        except FeaturesRead:
            pass
    return [store[name] for name in names]


def head_layers(channels: int, width: int, groups: int) -> list[nn.Module]:
    """Two 3x3 convolutions with group norm and SiLU, then global average pooling: ``[B, C, h, w]`` ->
    ``[B, width, 1, 1]`` (DMD2's GAN head and each level of ``Discriminator``)."""
    return [
        nn.Conv2d(channels, width, 3, padding=1),
        nn.GroupNorm(groups, width),
        nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.GroupNorm(groups, width),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
    ]


class LevelHead(nn.Module):
    """One level's head: features ``[B, C, h, w]`` -> pooled ``[B, width]``."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        groups = math.gcd(8, width)  # several channels per group: a group keeps a level's overall offset
        self.net = nn.Sequential(*head_layers(channels, width, groups), nn.Flatten())

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float())


class Discriminator(nn.Module):
    """Heads on several feature levels, conditioned by projection; ``forward(features, cond) -> logits [B]``.

    Args:
        channels: each level's feature channels.
        width: channels of every head.
        num_classes: class embeddings for a class-conditional model (the null class included), or None.
        text_dim: width of a text-conditional model's token embeddings, or None.
    """

    def __init__(
        self, channels: list[int], width: int = 64, num_classes: int | None = None, text_dim: int | None = None
    ):
        super().__init__()
        self.heads = nn.ModuleList(LevelHead(c, width) for c in channels)
        self.out = nn.ModuleList(nn.Linear(width, 1) for _ in channels)
        self.class_embedding = nn.Embedding(num_classes, width * len(channels)) if num_classes else None
        self.text_projection = nn.Linear(text_dim, width * len(channels)) if text_dim else None
        self.width = width

    def forward(self, features: list[Tensor], cond: Condition | None = None) -> Tensor:
        pooled = [head(f) for head, f in zip(self.heads, features)]  # each [B, width]
        logits = sum(out(p).flatten() for out, p in zip(self.out, pooled))
        embedding = self._condition_embedding(cond)
        if embedding is not None:  # projection: <pooled features, embedding of the condition> per level
            logits = logits + (torch.cat(pooled, dim=1) * embedding).sum(1) / math.sqrt(self.width)
        return logits

    def _condition_embedding(self, cond: Condition | None) -> Tensor | None:
        if cond is None:
            return None
        if cond.labels is not None and self.class_embedding is not None:
            return self.class_embedding(cond.labels)
        if cond.text is not None and self.text_projection is not None:
            return self.text_projection(cond.text.float().mean(1))
        return None

    @classmethod
    def for_network(
        cls, net: Denoiser, names: list[str] | None = None, width: int = 64
    ) -> tuple[Discriminator, list[str]]:
        """A discriminator for ``net``'s features at blocks ``names`` (default ``feature_levels``), conditioned as
        ``net`` is; returns it and the block names."""
        backbone = net.backbone
        names = names or feature_levels(backbone)
        channels = [level_channels(backbone, name) for name in names]
        classes = net.null_class + 1 if net.null_class is not None else None
        text_dim = getattr(backbone.config, "cross_attention_dim", None) if classes is None else None
        if hasattr(backbone.config, "joint_attention_dim"):
            text_dim = backbone.config.joint_attention_dim
        return cls(channels, width, classes, text_dim), names


def critic_times(
    schedule, b: int, like: Tensor, sampling: str = "uniform", t_max: float = 1.0, generator=None
) -> Tensor:
    """``[B]`` noise levels of the critic's inputs, never below the first training index: uniform over the training
    indices under ``t_max`` (DMD2's GAN); ``"low"``, ``t_max u^2``, most of them at low noise where texture shows
    (SiDA's mostly-low levels); ``"logit_normal"``, ``t_max sigmoid(n)`` with standard normal ``n`` (LADD)."""
    if sampling not in CRITIC_TIME_SAMPLINGS:
        raise ValueError(f"Critic time sampling must be one of {CRITIC_TIME_SAMPLINGS}, got {sampling!r}.")
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    if sampling == "uniform":
        t = u * t_max
    elif sampling == "low":
        t = t_max * u.pow(2)
    else:
        t = t_max * torch.sigmoid(torch.randn(b, generator=generator, dtype=torch.float64))
    index = (t * schedule.num_train_timesteps).floor().clamp(0, schedule.num_train_timesteps - 1)
    return schedule.index_time(index).to(device=like.device, dtype=like.dtype)


def noised_pair(schedule, real: Tensor, fake: Tensor, t: Tensor, same_noise: bool = True) -> tuple[Tensor, Tensor]:
    """``real`` and ``fake`` noised to the same levels ``t``, with the same noise (SiDA) or independent noise."""
    eps = torch.randn_like(real)
    alpha, sigma = schedule.alpha_sigma(t)
    return add_noise(real, eps, alpha, sigma), add_noise(
        fake, eps if same_noise else torch.randn_like(fake), alpha, sigma
    )


def critic_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The critic's loss: ``softplus(-D(real)) + softplus(D(fake))``, or hinge ``relu(1 - D(real)) + relu(1 + D(fake))``."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    softplus = torch.nn.functional.softplus
    return softplus(-real).mean() + softplus(fake).mean()


def generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's adversarial loss: non-saturating ``softplus(-D(fake))``, or hinge ``-D(fake)``."""
    fake = fake_logits.float()
    return -fake.mean() if kind == "hinge" else torch.nn.functional.softplus(-fake).mean()


R1_SIGMA = 0.01  # the perturbation of the approximate R1 penalty


def perturbed(x_real: Tensor, sigma: float = R1_SIGMA) -> Tensor:
    """``x_real`` plus ``sigma`` times fresh Gaussian noise: the second input of the approximate R1 penalty."""
    return x_real + sigma * torch.randn_like(x_real)


def r1_penalty(real_logits: Tensor, perturbed_logits: Tensor, sigma: float = R1_SIGMA) -> Tensor:
    """Approximate R1: ``mean((D(x) - D(x + sigma eps))^2) / sigma^2``, a finite-difference stand-in for the squared
    gradient norm of the critic at real inputs that needs no double backward."""
    return (real_logits - perturbed_logits).float().pow(2).mean() / sigma**2


def approximate_r1(logits_fn, x_real: Tensor, sigma: float = R1_SIGMA) -> Tensor:
    """``r1_penalty`` of the critic ``logits_fn`` at ``x_real``."""
    return r1_penalty(logits_fn(x_real), logits_fn(perturbed(x_real, sigma)), sigma)


def accuracy_by_level(real_logits: Tensor, fake_logits: Tensor, t: Tensor, buckets: int = 4) -> dict[str, Tensor]:
    """The critic's accuracy (real > 0, fake < 0) per noise-level bucket of ``t`` (``buckets`` equal ranges of
    [0, 1]), as ``log/critic_acc_t<k>`` keys: 0.5 is chance. Buckets without samples are left out."""
    out = {}
    correct = torch.cat([(real_logits > 0).float(), (fake_logits < 0).float()]).detach()
    level = (t.detach().float().clamp(0, 1 - 1e-6) * buckets).long().repeat(2)
    for k in range(buckets):
        mask = level == k
        if mask.any():
            out[f"log/critic_acc_t{k}"] = correct[mask].mean()
    return out
