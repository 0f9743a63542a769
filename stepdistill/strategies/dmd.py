"""Distribution matching distillation: DMD (Yin et al. 2023, arXiv 2311.18828) and DMD2 (Yin et al. 2024,
arXiv 2405.14867).

Three networks: the frozen teacher is the *real* score (classifier-free guided at ``real_guidance_scale``), a
*fake* score starts as a copy of the teacher and keeps learning the denoising loss on the generator's samples,
and the generator (``student``, also a copy of the teacher) maps noise to images in ``generator_steps`` steps.
The generator follows the distribution-matching gradient ``(p_real - p_fake) / mean|p_real|`` at a random noise
level (``losses.distribution_matching_loss``). DMD2's additions, all options:

* two time-scale updates: the fake score steps every iteration, the generator every
  ``fake_updates_per_generator``-th, expressed only by which loss keys ``losses`` returns;
* a GAN term: a small classifier head on the fake score's bottleneck features (a forward hook on the UNet's
  mid block, ``Denoiser.forward(return_features=True)``) learns real vs generated noisy images, and the generator
  gets the non-saturating loss through the frozen fake score;
* multi-step generators at the trailing grid of ``generator_steps`` times (999/749/499/249 for 4), trained with
  backward simulation: step ``k``'s input comes from running the generator's own first ``k`` steps. The option
  ``unroll`` (not in the papers, as in SiD) trains the K-step sampler end to end instead: the losses and the fake
  score see only the last step's output, and the generator's gradient runs back through every step.

Option: ``init_timestep`` starts the generator below the top time, as SiD does (its ``sigma_init``), with the steps
evenly spaced below it (``score_distillation.generator_times``).

DMD's regression loss on teacher noise-image pairs (generated once with the teacher's DDIM and kept) is an
option for one-step generators. Deviations: the regression distance is MSE (the paper's LPIPS needs VGG
weights); the GAN head pools globally instead of a second strided convolution, so that any bottleneck size
works; the critic's generated half reuses the fake score's denoising batch (one forward of 2B, not 3B).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..denoiser import Condition, Denoiser
from ..discriminator import (
    head_layers,
)
from ..export import ExportSpec
from ..io import atomic_torch_save
from ..losses import denoising_loss, distribution_matching_loss, gan_critic_loss, gan_generator_loss
from ..sampling import ddim_sample
from ..schedules import add_noise, combine
from .adversarial import TeacherCritic
from .base import register, unwrap
from .options import AdversarialOptions, ScoreDistillationOptions, TwoTimeScaleOptions
from .score_distillation import ScoreDistillationStrategy, cat_conditions, input_grid


@dataclass
class DMDConfig(ScoreDistillationOptions, TwoTimeScaleOptions, AdversarialOptions):
    """DMD / DMD2 options (DMD2's ImageNet-64 defaults where they apply; presets in train/dmd.py). The options DMD
    shares with SiD (generator steps and input time, unroll, guidance, LoRA, t_range) are in
    ``ScoreDistillationOptions``."""

    lr: float = field(default=2e-6, metadata={"help": "AdamW learning rate of the generator (DMD2: 2e-6)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of both networks"})
    backward_simulation: bool = field(
        default=True,
        metadata={"help": "multi-step: step k's input from the generator's own first k steps (else noised data)"},
    )
    regression_weight: float = field(default=0.0, metadata={"help": "DMD's regression loss weight (0: off)"})
    regression_pairs: int = field(default=0, metadata={"help": "teacher noise-image pairs for the regression loss"})
    regression_teacher_steps: int = field(default=50, metadata={"help": "teacher DDIM steps making those pairs"})
    regression_cache: str | None = field(
        default=None,
        metadata={
            "help": "file that keeps the regression pairs: made once, reused by a resumed run or a later one with the "
            "same teacher and pair settings (train/dmd.py: OUTPUT_DIR/regression-pairs.pt)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.regression_weight < 0:
            raise ValueError("DMDConfig.regression_weight must be >= 0.")
        if self.regression_weight and (self.regression_pairs < 1 or self.generator_steps != 1):
            raise ValueError("The regression loss needs regression_pairs >= 1 and a one-step generator.")
        if self.unroll and not self.backward_simulation:
            raise ValueError(
                "unroll trains a few-step sampler on its own outputs end to end: keep backward simulation on, or drop "
                "unroll."
            )
        if self.regression_weight and self.init_timestep is not None:
            raise ValueError(
                "The regression loss pairs the teacher's DDIM from pure noise at the top time with the generator's "
                "input: drop init_timestep or the regression loss."
            )


class GANHead(nn.Module):
    """DMD2's real/fake classifier on the fake score's bottleneck features ``[B, C, h, w]`` -> logits ``[B]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(*head_layers(channels, channels, math.gcd(32, channels)), nn.Conv2d(channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).flatten()


@register("dmd")
class DMDStrategy(TeacherCritic, ScoreDistillationStrategy):
    """DMD / DMD2 (see the module docstring; networks, real score and sampler in ``ScoreDistillationStrategy``).

    Args:
        config: the method's options.
        teacher: the frozen teacher (the real score).
        student: the initial generator (default: a copy of the teacher, or the teacher + LoRA).
        fake_score: the initial fake score (default: a copy of the teacher, + LoRA with ``fake_lora_rank``).
    """

    config_class = DMDConfig

    def __init__(
        self, config: DMDConfig, teacher: Denoiser, student: Denoiser | None = None, fake_score: Denoiser | None = None
    ):
        super().__init__(config, teacher, student, fake_score)
        self._add_teacher_critic()
        if config.gan and self.disc is None:
            channels = self._fake_score_bottleneck("set --gan-generator-weight 0 --gan-critic-weight 0")
            self.fake_score.gan_head = GANHead(channels)
        self.times = input_grid(teacher.schedule, config.generator_steps, config.init_timestep)  # [K]
        self.pairs: dict[str, Tensor] | None = None  # DMD's regression pairs, made on first use

    def trainable(self) -> dict[str, nn.Module]:
        return {**super().trainable(), **self._critic_trainable()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), **self._critic_optimizers(self.config.fake_lr)}

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Every step: the fake score's losses on generated samples; every ``fake_updates_per_generator``-th step
        also the generator's, from the same samples. The samples are one step ``k`` of the generator (drawn per step,
        its input from backward simulation) or, with ``unroll``, the whole K-step sampler's output."""
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        train_student = step % self.config.fake_updates_per_generator == 0
        gan_on = step >= self.config.gan_warmup_steps  # the generator's GAN term (the critic trains from step 0)
        out: dict[str, Tensor] = {}

        def forward(x_in: Tensor, t_in: Tensor) -> Tensor:  # one step's forward, DMD's regression pairs riding in it
            losses, x_gen = self._generator_losses(x_in, t_in, cond, gan_on)
            out.update(losses)
            return x_gen

        def make_input(noise: Tensor, k: int) -> Tensor:
            return self._generator_input(x0, cond, k, noise)

        noise = torch.randn_like(x0)
        x_gen = self.student_samples(noise, cond, step, train_student, make_input, forward)
        if train_student and self.config.unroll:
            out.update(self._matching_losses(x_gen, cond, gan_on))
        out.update(self._fake_score_losses(x_gen.detach(), x0, cond))
        if self.disc is not None:
            out.update(self._critic_losses(x0, x_gen.detach(), cond))
        return out

    def _generator_input(self, x0: Tensor, cond: Condition | None, k: int, noise: Tensor | None = None) -> Tensor:
        """Step ``k``'s input: ``noise`` (k = 0), the generator's own first k steps from it (backward simulation),
        or data noised to ``times[k]`` (``noise`` drawn here when not given)."""
        noise = torch.randn_like(x0) if noise is None else noise
        if k == 0 or self.config.backward_simulation:
            return self._simulated_input(noise, cond, k)
        return add_noise(x0, noise, *self.teacher.schedule.alpha_sigma(self.times[k].to(x0).expand(len(x0))))

    def _generator_losses(
        self, x_in: Tensor, t_in: Tensor, cond: Condition | None, gan_on: bool = True
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The generator's losses (``_matching_losses``, + DMD's regression term) from one forward of the generator
        at ``(x_in, t_in)``, and its samples ``x_gen`` (with gradient)."""
        cfg, b = self.config, len(x_in)
        if cfg.regression_weight:  # DMD: the pairs ride in the same forward (one forward per backward under DDP)
            pairs = self._regression_pairs(x_in)
            pick = torch.randint(len(pairs["noise"]), (b,), device=x_in.device)
            x_in, t_in = torch.cat([x_in, pairs["noise"][pick]]), torch.cat([t_in, t_in])
            cond = cat_conditions(cond, Condition(labels=pairs["labels"][pick]) if "labels" in pairs else None)
        out_all = self.student(x_in, t_in, cond)
        x_gen = out_all[:b]
        out = self._matching_losses(x_gen, None if cond is None else cond.map(lambda v: v[:b]), gan_on)
        if cfg.regression_weight:
            regression = (out_all[b:].float() - pairs["images"][pick].float()).pow(2).mean()
            out["student"] = out["student"] + cfg.regression_weight * regression
            out["log/regression"] = regression.detach()
        return out, x_gen

    def _matching_losses(self, x_gen: Tensor, cond: Condition | None, gan_on: bool = True) -> dict[str, Tensor]:
        """The distribution-matching loss (+ the GAN term, unless ``gan_on`` is off: before ``gan_warmup_steps``) of
        generator samples ``x_gen`` (with gradient)."""
        cfg, b = self.config, len(x_gen)
        t = self._loss_times(b, x_gen, cfg.time_sampling, cfg.t_range)  # DMD2: indices 20-980
        x_t = add_noise(x_gen.detach(), torch.randn_like(x_gen), *self.teacher.schedule.alpha_sigma(t))
        with torch.no_grad():
            x0_real = self._real_x0(x_t, t, cond)
            x0_fake = unwrap(self.fake_score)(x_t, t, cond)
        dm = distribution_matching_loss(x_gen, x0_real, x0_fake)
        loss, logs = dm, {"log/dm": dm.detach()}
        if cfg.gan and gan_on:
            gan = self._generator_gan_loss(x_gen, cond)
            loss = loss + cfg.gan_generator_weight * gan
            logs["log/gan_generator"] = gan.detach()
        return {"student": loss, **logs}

    def _generator_gan_loss(self, x_gen: Tensor, cond: Condition | None) -> Tensor:
        """The generator's GAN loss on ``x_gen`` (with gradient): through the frozen fake score and its head (DMD2), or
        the frozen teacher's features and the frozen critic; neither network's parameters receive gradient."""
        b, schedule = len(x_gen), self.teacher.schedule
        if self.disc is None:
            t_gan = self._gan_times(b, x_gen)
            x_t_gan = add_noise(x_gen, torch.randn_like(x_gen), *schedule.alpha_sigma(t_gan))
            with self.frozen("fake_score") as fake:  # gradient reaches x_gen, not the fake score or its head
                _, features = fake(x_t_gan, t_gan, cond, return_features=True)
                return gan_generator_loss(fake.gan_head(features))
        return self._teacher_gan_loss(x_gen, cond)

    def _fake_score_losses(self, x_gen: Tensor, x0_real: Tensor, cond: Condition | None) -> dict[str, Tensor]:
        """Denoising loss on generated samples (+ the GAN critic on noisy real vs generated), one forward."""
        cfg, b = self.config, len(x_gen)
        if not cfg.gan or self.disc is not None:  # the teacher-feature critic has its own loss (_critic_losses)
            return {"fake_score": denoising_loss(self.fake_score, x_gen, cond, t=self._score_times(b, x_gen))}
        net = unwrap(self.fake_score)
        schedule, kind = net.schedule, net.prediction
        t = self._score_times(b, x_gen)
        eps = torch.randn_like(x_gen)
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = add_noise(x_gen, eps, alpha, sigma)
        target = combine(x_gen, eps, kind, alpha, sigma)
        # the critic's generated half reuses the denoising batch when the GAN shares its noise levels; with its own
        # range it gets its own noisy copy, so that real and generated images reach the critic at the same levels
        inputs, times = [x_t], [t]
        separate = cfg.gan_t_max < 1
        for x in (x_gen, x0_real) if separate else (x0_real,):
            t_gan = self._gan_times(b, x_gen)
            inputs.append(add_noise(x, torch.randn_like(x), *schedule.alpha_sigma(t_gan)))
            times.append(t_gan)
        n = len(inputs)
        conds = None if cond is None else cond.map(lambda v: torch.cat([v] * n))
        pred, features = self.fake_score(torch.cat(inputs), torch.cat(times), conds, kind=kind, return_features=True)
        denoising = (pred[:b] - target).float().pow(2).mean()
        logits = net.gan_head(features[b:] if separate else features)  # [2B]: generated, then real
        critic = gan_critic_loss(logits[-b:], logits[-2 * b : -b])
        return {
            "fake_score": denoising + cfg.gan_critic_weight * critic,
            "log/denoising": denoising.detach(),
            "log/gan_critic": critic.detach(),
        }

    def _gan_times(self, b: int, like: Tensor) -> Tensor:
        """``[B]`` noise levels of the GAN term: the fake score's, or uniform training indices under ``gan_t_max``."""
        if self.config.gan_t_max < 1:
            return self._uniform_index_times(b, like, [0.0, self.config.gan_t_max])
        return self._score_times(b, like)

    def _score_times(self, b: int, like: Tensor) -> Tensor:
        """``[B]`` noise levels of the fake score's denoising loss and of the GAN term: uniform ``t`` (the schedule's
        own draw), or with ``time_sampling = "karras"`` the DM loss's ramp."""
        if self.config.time_sampling == "uniform":
            return self.teacher.schedule.sample_t(b, device=like.device).to(like.dtype)
        return self._loss_times(b, like, "karras", self.config.t_range)

    def export_spec(self, step: int) -> ExportSpec:
        cfg, gan = self.config, "with" if self.config.gan else "without"
        details = (
            f"Trained {step} steps ({cfg.fake_updates_per_generator} fake-score updates per generator "
            f"update); the teacher's guidance w = {cfg.real_guidance_scale:g} is baked in."
        )
        method = f"DMD2 (Yin et al. 2024, arXiv 2405.14867), {gan} the GAN term"
        return ExportSpec(len(self.times), self.scheduler_spec(), method, details, lora_method="DMD2")

    @torch.no_grad()
    def _regression_pairs(self, like: Tensor) -> dict[str, Tensor]:
        """DMD's teacher pairs: noise and the teacher's DDIM image from it, made once from a fixed seed (so a
        resumed run rebuilds the same pairs), class-balanced for a class-conditional teacher. With
        ``regression_cache`` they are kept in that file and read back when its settings and its probe of the teacher
        (one x0 prediction at a fixed input) match this run's."""
        if self.pairs is not None:
            return self.pairs
        cfg, n = self.config, self.config.regression_pairs
        classes = self.teacher.null_class
        w = cfg.real_guidance_scale if classes else 1.0
        key = {"pairs": n, "teacher_steps": cfg.regression_teacher_steps, "w": w, "shape": list(like.shape[1:])}
        probe = self._teacher_probe(like) if cfg.regression_cache else None
        cached = _load_pairs(cfg.regression_cache, key, probe)
        if cached is not None:
            self.pairs = {k: v.to(like.device) for k, v in cached.items()}
            return self.pairs
        g = torch.Generator().manual_seed(20231129)
        noise = torch.randn((n, *like.shape[1:]), generator=g).to(like)
        cond = Condition(labels=torch.arange(n, device=like.device) % classes) if classes else None
        chunks = []
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        for i in tqdm(range(0, n, 256), desc="regression pairs", disable=not rank0, leave=False):
            part = None if cond is None else Condition(labels=cond.labels[i : i + 256])  # chunks bound the memory
            chunks.append(ddim_sample(self.teacher, noise[i : i + 256], part, cfg.regression_teacher_steps, w))
        self.pairs = {"noise": noise, "images": torch.cat(chunks), **({"labels": cond.labels} if cond else {})}
        if cfg.regression_cache and rank0:
            pairs = {k: v.cpu() for k, v in self.pairs.items()}
            atomic_torch_save({"key": key, "probe": probe, "pairs": pairs}, cfg.regression_cache)
        return self.pairs

    def _teacher_probe(self, like: Tensor) -> Tensor:
        """The teacher's x0 at one fixed input: tells a cache made with another teacher apart."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn((1, *like.shape[1:]), generator=g).to(like)
        cond = (
            Condition(labels=torch.zeros(1, dtype=torch.long, device=like.device)) if self.teacher.null_class else None
        )
        return self.teacher(x, torch.full((1,), 0.5).to(like), cond).float().cpu()


def _load_pairs(path: str | None, key: dict, probe: Tensor | None) -> dict[str, Tensor] | None:
    """The pairs kept in ``path``, or None when there is no such file or it was made with other settings or another
    teacher (then the caller makes them anew and overwrites it)."""
    if not path or not os.path.isfile(path):
        return None
    try:  # tensors and plain values only: a pickled object in the file is refused, never run
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] != key or not torch.allclose(saved["probe"], probe, atol=1e-5):
            return None
        return saved["pairs"]
    except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):  # unreadable: made anew
        return None
