"""The teacher-feature critic as a part of any strategy (DMD2, SiDA / SiD²A, LADD).

A strategy whose config is an ``AdversarialOptions`` mixes in ``TeacherCritic`` and calls ``_add_teacher_critic``
from its constructor; with ``gan_features = "teacher"`` it then holds ``disc`` (``discriminator.Discriminator`` on
the frozen teacher's blocks ``disc_levels``) with its own optimizer ``disc``. Two losses, each computed where the
strategy chooses:

* ``_critic_losses(x0, x_gen, cond)``: the critic learns noisy real from noisy generated images (same levels, same
  noise), the teacher's features read without gradient; logs its accuracy per noise-level bucket;
* ``_teacher_gan_loss(x_gen, cond)``: the generator's adversarial loss through the frozen teacher and the frozen
  critic: gradient reaches ``x_gen`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..denoiser import Condition
from ..discriminator import (
    Discriminator,
    accuracy_by_level,
    critic_loss,
    critic_times,
    generator_loss,
    noised_pair,
    perturbed,
    r1_penalty,
    read_features,
)
from ..schedules import add_noise


class TeacherCritic:
    """Mixin for ``Strategy`` subclasses: the teacher-feature critic (see the module docstring)."""

    disc: nn.Module | None  # no class-level default: it would shadow the module nn.Module registers
    disc_levels: list[str]

    def _add_teacher_critic(self) -> None:
        """Builds ``disc`` when the config asks for the teacher-feature critic (else leaves it None)."""
        cfg = self.config
        self.disc, self.disc_levels = None, []
        if cfg.gan and cfg.gan_features == "teacher":
            if self.teacher.backbone is None:
                raise ValueError("The teacher-feature critic reads the teacher's blocks: the teacher has no backbone.")
            self.disc, self.disc_levels = Discriminator.for_network(self.teacher)

    def _critic_trainable(self) -> dict[str, nn.Module]:
        return {"disc": self.disc} if self.disc is not None else {}

    def _critic_optimizers(self, default_lr: float) -> dict[str, torch.optim.Optimizer]:
        """The critic's AdamW at ``gan_lr`` (else ``default_lr``)."""
        return {"disc": self.adamw(self.disc, self.config.gan_lr or default_lr)} if self.disc is not None else {}

    def _critic_losses(self, x0: Tensor, x_gen: Tensor, cond: Condition | None) -> dict[str, Tensor]:
        """The critic's loss (optimizer ``disc``): real images ``x0`` and detached generated ones ``x_gen`` at the same
        noise levels with the same noise, the teacher's features without gradient, one call of the critic; with
        ``gan_r1_weight`` the approximate R1 penalty on the real half. Logs its accuracy per noise-level bucket."""
        cfg, b, schedule = self.config, len(x0), self.teacher.schedule
        t = critic_times(schedule, b, x0, cfg.gan_t_sampling, cfg.gan_t_max)
        x_real, x_fake = noised_pair(schedule, x0, x_gen.detach(), t)
        inputs, n = [x_real, x_fake], 2
        if cfg.gan_r1_weight:  # the real half again, slightly perturbed: approximate R1 from the same call
            inputs.append(perturbed(x_real))
            n = 3
        conds = None if cond is None else cond.map(lambda v: torch.cat([v] * n))
        with torch.no_grad(), self.teacher_network() as teacher:
            features = read_features(teacher, torch.cat(inputs), torch.cat([t] * n), conds, self.disc_levels)
        logits = self.disc(features, conds)
        real, fake = logits[:b], logits[b : 2 * b]
        loss = critic_loss(real, fake, cfg.gan_loss)
        out = {"log/gan_critic": loss.detach(), **accuracy_by_level(real, fake, t)}
        if cfg.gan_r1_weight:
            r1 = r1_penalty(real, logits[2 * b :])
            loss = loss + cfg.gan_r1_weight * r1
            out["log/gan_r1"] = r1.detach()
        return {"disc": cfg.gan_critic_weight * loss, **out}

    def _teacher_gan_loss(self, x_gen: Tensor, cond: Condition | None) -> Tensor:
        """The generator's adversarial loss on ``x_gen`` (with gradient), re-noised to the critic's levels, through the
        frozen teacher's features and the frozen critic: neither network's parameters receive gradient."""
        cfg, schedule = self.config, self.teacher.schedule
        t = critic_times(schedule, len(x_gen), x_gen, cfg.gan_t_sampling, cfg.gan_t_max)
        x_t = add_noise(x_gen, torch.randn_like(x_gen), *schedule.alpha_sigma(t))
        with self.teacher_network() as teacher, self.frozen("disc") as disc:
            return generator_loss(disc(read_features(teacher, x_t, t, cond, self.disc_levels), cond), cfg.gan_loss)
