"""Score identity distillation: SiD (Zhou et al. 2024, arXiv 2404.04057), SiD-LSG's long-short guidance
(arXiv 2406.01561), few-step SiD (arXiv 2505.12674), and SiDA / SiD²A (Zhou et al. 2024, ICLR 2025, arXiv 2410.14919: SiD plus an
adversarial term). Data-free unless the adversarial term is on: then the critic reads real images (``batch["x0"]``).

Generator (``student``), fake score and teacher start from the same weights. Every iteration is two optimizer
steps, fake score first: on even steps the fake score learns the denoising loss on the generator's samples (at
guidance ``fake_train_guidance``, kappa_1); on odd steps the generator follows the score-identity loss
``losses.score_identity_loss`` with the teacher at ``real_guidance_scale`` (kappa_4) and the fake score at
``fake_eval_guidance`` (kappa_2 = kappa_3). In the generator step the gradient flows through both score networks'
inputs into the samples while their parameters stay frozen (``Strategy.frozen``), so they are bit-identical after it.

The generator takes unit Gaussian noise at the time ``times[0]`` (EDM noise level ``init_sigma``, or the training
index ``init_timestep``) and returns x0. A K-step generator re-noises each x0 with fresh noise to the next of K
evenly spaced times from there (``_generator_times``); training draws a step k per iteration (the same on every
rank), runs steps before k without gradient and feeds step k's output to both losses (a uniform mixture over steps).
Measured here, the mixture's weak spot: the fake score learns the mixture of the K steps' outputs, so the loss is
zero once that mixture matches the data, whatever each step does, and the last step (the sample) may stay off.
``unroll`` (not in the papers) trains the sampler as one generator instead: both losses see only the last step's
output, and the generator's gradient runs back through every step and re-noising (K times the activations).

The adversarial term (``AdversarialOptions``; on when both GAN weights are > 0). ``gan_features = "fake_score"`` is
SiDA as its released code defines it: the critic has no parameters of its own, its logits are the channel mean of the
fake score's encoder output (a UNet's mid block), one per position; in the fake-score step, generated and real images
are noised to the same levels with the same noise and go through the fake score in one forward, whose denoising loss
(generated half) and the critic's cross-entropy (both halves, averaged) are summed with weight ``gan_critic_weight``;
in the generator step, the same forward that gives the fake score's x0 gives the logits of the generated ``x_t``, and
the generator adds ``gan_generator_weight`` times their non-saturating loss (logits clamped to +-10) averaged over the
whole batch (the paper's per-GPU batch "fakeness"), scaled by the batch mean of 1 / SiD's per-sample weight. Deviation: the official code weights the critic's loss per sample by EDM's lambda(sigma); here it
carries the fake score's own (unweighted) loss scale. ``gan_features = "teacher"`` uses the teacher-feature critic
(``adversarial.TeacherCritic``, its own optimizer ``disc``, trained on every step) instead. SiD²A is the same run
started from a trained SiD generator (``--student``). ``gan_warmup_steps`` holds the generator's term back.

Options from few-step SiD: ``zero_cfg`` (teacher unguided, fake score without the condition: trained and evaluated
on the null class / empty prompt) and ``anti_cfg`` (the fake score evaluated at guidance ``-fake_eval_guidance``).
Deviation: the official code feeds ``sigma(t_init) * z``; here the input is ``z`` itself, the first step of every
diffusers pipeline (``randn * init_noise_sigma``), so exported pipelines reproduce the sampler (at SiD's
``sigma_init`` = 2.5 the two differ by 7% in scale, which the generator, trained from there, absorbs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..denoiser import Condition, Denoiser
from ..discriminator import accuracy_by_level, critic_loss
from ..export import ExportSpec
from ..losses import denoising_loss, score_identity_loss
from ..schedules import add_noise, combine, time_at_edm_sigma
from .adversarial import TeacherCritic
from .base import register, unwrap
from .options import AdversarialOptions, ScoreDistillationOptions
from .score_distillation import ScoreDistillationStrategy, generator_times


@dataclass
class SiDConfig(ScoreDistillationOptions, AdversarialOptions):
    """SiD / SiD-LSG / few-step SiD options (SiD's CIFAR-10 defaults where they apply; presets in train/sid.py). The
    options SiD shares with DMD (generator steps and input time, unroll, guidance, LoRA, t_range) are in
    ``ScoreDistillationOptions``; ``real_guidance_scale`` is SiD-LSG's kappa_4."""

    betas: list[float] = field(default_factory=lambda: [0.0, 0.999], metadata={"help": "Adam betas (SiD: 0 0.999)"})
    time_sampling: str = field(
        default="karras",
        metadata={
            "help": "noise levels of both losses: 'karras' (EDM's rho-7 ramp over t_range, SiD) or 'uniform' "
            "(training indices in t_range, SiD-LSG)"
        },
    )
    t_range: list[float] = field(
        default_factory=lambda: [0.0, 0.8],
        metadata={"help": "range of the time draw, of [0, 1] (SiD: 0 0.8 Karras; LSG: 0.02 0.98 uniform)"},
    )
    init_sigma: float = field(
        default=2.5, metadata={"help": "EDM noise level of the generator's input, unless init_timestep (SiD: 2.5)"}
    )
    alpha: float = field(default=1.2, metadata={"help": "SiD's alpha (1.2 images; 1.0 with long-short guidance)"})
    fake_train_guidance: float = field(default=1.0, metadata={"help": "kappa_1: CFG of the fake score's training"})
    fake_eval_guidance: float = field(
        default=1.0, metadata={"help": "kappa_2 = kappa_3: CFG of the fake score in the generator loss"}
    )
    zero_cfg: bool = field(
        default=False, metadata={"help": "few-step SiD's Zero-CFG: unguided teacher, unconditional fake score"}
    )
    anti_cfg: bool = field(
        default=False, metadata={"help": "few-step SiD's Anti-CFG: the fake score at guidance -fake_eval_guidance"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.init_sigma <= 0:
            raise ValueError(f"SiDConfig.init_sigma must be positive, got {self.init_sigma}.")
        if self.zero_cfg and (self.real_guidance_scale != 1 or self.anti_cfg):
            raise ValueError("zero_cfg runs the teacher unguided: drop real_guidance_scale / anti_cfg.")
        if self.gan and self.gan_features == "fake_score" and self.gan_t_max < 1:
            raise ValueError(
                "SiDA's critic reads the fake score at its own denoising levels: gan_t_max shapes the teacher-feature "
                "critic only (add --gan-features teacher, or drop --gan-t-max)."
            )


@register("sid")
class SiDStrategy(TeacherCritic, ScoreDistillationStrategy):
    """SiD (see the module docstring; networks, real score and sampler in ``ScoreDistillationStrategy``).

    Args:
        config: the method's options.
        teacher: the frozen teacher.
        student: the initial generator (default: a copy of the teacher, or the teacher + LoRA).
        fake_score: the initial fake score (default: a copy of the teacher, + LoRA with ``fake_lora_rank``).
        sample_shape: ``(C, H, W)`` of a sample (default: the teacher backbone's channels and size).
    """

    config_class = SiDConfig

    def __init__(
        self,
        config: SiDConfig,
        teacher: Denoiser,
        student: Denoiser | None = None,
        fake_score: Denoiser | None = None,
        sample_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(config, teacher, student, fake_score)
        if sample_shape is None:
            if teacher.backbone is None:
                raise ValueError("SiD reads no images: give sample_shape for a teacher without a diffusers backbone.")
            sample_shape = teacher.sample_shape
        self.sample_shape = tuple(sample_shape)
        self.times = self._generator_times()
        self._add_teacher_critic()
        if config.gan and self.disc is None:  # SiDA's critic: the fake score's encoder output
            self._fake_score_bottleneck("use --gan-features teacher with this network")

    def trainable(self) -> dict[str, nn.Module]:
        return {**super().trainable(), **self._critic_trainable()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), **self._critic_optimizers(self.config.fake_lr)}

    def _generator_times(self) -> Tensor:
        """``[K]`` times from the input time (``init_timestep``, or the training index nearest ``init_sigma``):
        ``score_distillation.generator_times``."""
        cfg, schedule = self.config, self.teacher.schedule
        top = cfg.init_timestep
        if top is None:
            top = schedule.time_index(time_at_edm_sigma(schedule, cfg.init_sigma))
        return generator_times(schedule, cfg.generator_steps, top)

    def check_compatible(self) -> None:
        super().check_compatible()
        cfg, guided = self.config, (self.config.fake_train_guidance, self.config.fake_eval_guidance)
        if (any(w != 1 for w in guided) or cfg.anti_cfg or cfg.zero_cfg) and not self.teacher.can_guide:
            raise ValueError("Fake-score guidance, zero_cfg and anti_cfg need a class- or text-conditional teacher.")

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Even steps: the fake score's denoising loss; odd steps: the generator's score-identity loss. The batch
        only supplies conditions (labels or prompt embeddings) and its size; images in it are never read."""
        cond = Condition.from_batch(batch)
        b = len(cond) if cond is not None else len(next(iter(batch.values())))
        device = next(iter(batch.values())).device
        noise = torch.randn((b, *self.sample_shape), device=device)
        if self.config.gan and "x0" not in batch:
            raise ValueError("SiDA's critic compares generated with real images: the batch holds no 'x0' (--data).")
        if step % 2 == 0:
            x_gen = self.student_samples(noise, cond, step, with_grad=False)
            if not self.config.gan:
                return {"fake_score": self._fake_score_loss(x_gen, cond)}
            if self.disc is None:  # SiDA: the critic is the fake score's encoder, trained in the same forward
                return self._fake_score_and_critic_losses(x_gen, batch["x0"], cond)
            return {"fake_score": self._fake_score_loss(x_gen, cond), **self._critic_losses(batch["x0"], x_gen, cond)}
        gan_on = self.config.gan and step >= self.config.gan_warmup_steps
        x_gen = self.student_samples(noise, cond, step, with_grad=True)
        out = self._generator_loss(x_gen, cond, gan_on)
        if self.disc is not None:  # the teacher-feature critic has its own optimizer: it learns on every step
            out.update(self._critic_losses(batch["x0"], x_gen.detach(), cond))
        return out

    def export_spec(self, step: int) -> ExportSpec:
        cfg = self.config
        guidance = (cfg.real_guidance_scale, cfg.fake_train_guidance, cfg.fake_eval_guidance)
        method = "SiD (Zhou et al. 2024, arXiv 2404.04057)" + (", long-short guidance" if max(guidance) != 1 else "")
        how = "data-free"
        if cfg.gan:
            method = "SiDA (Zhou et al. 2024, arXiv 2410.14919): SiD" + method[3:] + " with an adversarial term"
            critic = "the fake score's encoder" if self.disc is None else "heads on the teacher's features"
            how = f"with a critic ({critic}) against real images, GAN weight {cfg.gan_generator_weight:g},"
        details = (
            f"Trained {how} for {step} optimizer steps (fake score and generator alternating); "
            f"alpha = {cfg.alpha:g}; guidance kappa_1 = {guidance[1]:g}, kappa_2 = kappa_3 = {guidance[2]:g}, "
            f"kappa_4 = {guidance[0]:g}, baked in."
        )
        return ExportSpec(len(self.times), self.scheduler_spec(), method, details, lora_method="SiD")

    def _fake_cond(self, cond: Condition | None) -> Condition | None:
        """The fake score's condition: none of it under Zero-CFG (the null class / empty prompt)."""
        if cond is None or not self.config.zero_cfg:
            return cond
        return unwrap(self.fake_score).null_condition(cond)

    def _fake_score_loss(self, x_gen: Tensor, cond: Condition | None) -> Tensor:
        """The fake score's denoising loss on (detached) generator samples, its output guided at kappa_1."""
        w = self.config.fake_train_guidance if cond is not None and not self.config.zero_cfg else 1.0
        t = self._loss_times(len(x_gen), x_gen, self.config.time_sampling, self.config.t_range)
        return denoising_loss(self.fake_score, x_gen, self._fake_cond(cond), t=t, guidance_scale=w)

    def _fake_score_and_critic_losses(self, x_gen: Tensor, x0: Tensor, cond: Condition | None) -> dict[str, Tensor]:
        """SiDA's fake-score step: generated and real images noised to the same levels with the same noise, one
        forward of the fake score; its denoising loss on the generated half, and the critic's loss on the channel
        mean of its encoder output (one logit per position of the bottleneck) of both halves."""
        cfg, b = self.config, len(x_gen)
        net = unwrap(self.fake_score)
        w = cfg.fake_train_guidance if cond is not None and not cfg.zero_cfg else 1.0
        t = self._loss_times(b, x_gen, cfg.time_sampling, cfg.t_range)
        eps = torch.randn_like(x_gen)
        alpha, sigma = net.schedule.alpha_sigma(t)
        inputs = torch.cat([add_noise(x_gen, eps, alpha, sigma), add_noise(x0, eps, alpha, sigma)])
        fake_cond = self._fake_cond(cond)
        conds = None if fake_cond is None else fake_cond.map(lambda v: torch.cat([v, v]))
        pred, features = self.fake_score(
            inputs, torch.cat([t, t]), conds, guidance_scale=w, kind=net.prediction, return_features=True
        )
        denoising = (pred[:b] - combine(x_gen, eps, net.prediction, alpha, sigma)).float().pow(2).mean()
        logits = encoder_logits(features)  # [2B, h, w]: generated, then real
        fake_logits, real_logits = logits[:b], logits[b:]
        critic = critic_loss(real_logits, fake_logits) / 2  # SiDA: the mean of the two halves' cross-entropies
        return {
            "fake_score": denoising + cfg.gan_critic_weight * critic,
            "log/denoising": denoising.detach(),
            "log/gan_critic": critic.detach(),
            **accuracy_by_level(real_logits.mean((1, 2)), fake_logits.mean((1, 2)), t),
        }

    def _generator_loss(self, x_gen: Tensor, cond: Condition | None, gan_on: bool = False) -> dict[str, Tensor]:
        """The score-identity loss at one noisy ``x_t`` of ``x_gen``; gradient through both score networks' inputs,
        none into their parameters. With ``gan_on`` the adversarial term is added: SiDA's, the non-saturating loss
        of the fake score's encoder logits at the same ``x_t`` (clamped to +-10; its batch mean times the batch mean
        of 1 / SiD's weight ``mean|x_gen - x0_real|``), or the teacher-feature critic's."""
        cfg = self.config
        t = self._loss_times(len(x_gen), x_gen, self.config.time_sampling, self.config.t_range)
        x_t = add_noise(x_gen, torch.randn_like(x_gen), *self.teacher.schedule.alpha_sigma(t))
        x0_real = self._real_x0(x_t, t, cond)
        w = cfg.fake_eval_guidance * (-1 if cfg.anti_cfg else 1) if cond is not None and not cfg.zero_cfg else 1.0
        sida = gan_on and self.disc is None
        with self.frozen("fake_score") as fake:
            out = fake(x_t, t, self._fake_cond(cond), guidance_scale=w, return_features=sida)
        x0_fake, features = out if sida else (out, None)
        loss = score_identity_loss(x_gen, x0_real, x0_fake, cfg.alpha)
        logs = {"log/sid": loss.detach(), "log/score_gap": (x0_real - x0_fake).detach().float().pow(2).mean()}
        if gan_on:
            if sida:
                weight = (x_gen - x0_real).detach().float().abs().mean((1, 2, 3)).clamp_min(1e-5)
                logits = encoder_logits(features).clamp(-10, 10)
                # the batch's mean "fakeness" (the official code's one cross-entropy over the whole batch) times the
                # batch mean of 1 / SiD's per-sample weight
                gan = torch.nn.functional.softplus(-logits).mean() * weight.reciprocal().mean()
            else:
                gan = self._teacher_gan_loss(x_gen, cond)
            loss = loss + cfg.gan_generator_weight * gan
            logs["log/gan_generator"] = gan.detach()
        return {"student": loss, **logs}


def encoder_logits(features: Tensor) -> Tensor:
    """SiDA's critic logits: the channel mean of the fake score's encoder output ``[B, C, h, w]`` -> ``[B, h, w]``
    (no parameters of its own)."""
    return features.float().mean(1)
