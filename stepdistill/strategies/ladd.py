"""Latent adversarial diffusion distillation: LADD (Sauer et al. 2024, arXiv 2403.12015, SD3-Turbo).

The generator (``student``, a copy of the teacher or the teacher + LoRA) maps noise to an image in
``generator_steps`` steps, re-noising between steps as DMD2's and SiD's generators do (999/749/499/249 for 4). It
learns from the adversarial loss alone: a critic (``adversarial.TeacherCritic``: small heads on the frozen teacher's
down and mid blocks) tells re-noised real images from re-noised generated ones, and the generator follows it through
the frozen teacher and the frozen critic. No score, no distillation loss: the teacher is only the feature network.

Each optimizer step trains the critic (``disc``) and the generator on the same samples: step ``k`` of the sampler
(drawn per step, the same on every rank), its input made by noising the critic's real half to ``times[k]`` (ADD's and
LADD's student input, ``input_from = "data"``) or by the generator's own first ``k`` steps from noise (DMD2's backward
simulation, ``"generator"``: the inputs sampling gives it).

The critic's real half is the data (``data_source = "real"``) or the teacher's own samples (``"teacher"``, LADD's
synthetic data: the teacher's ``teacher_steps``-step DDIM at ``teacher_guidance_scale`` from fresh noise, made per
batch without gradient). With one step and real data, LADD is GAN-only fine-tuning of the teacher (GDD / D2O).

LADD's defaults: hinge loss, logit-normal noise levels for the critic (``critic_times``); the paper biases them to
high noise for global structure on 1024 px latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..denoiser import Condition, Denoiser
from ..export import ExportSpec
from ..sampling import ddim_sample
from ..schedules import add_noise
from .adversarial import TeacherCritic
from .base import register
from .options import AdversarialOptions, GeneratorOptions
from .score_distillation import ReNoisingGenerator, input_grid

DATA_SOURCES = ("real", "teacher")
INPUTS = ("data", "generator")


@dataclass
class LADDConfig(GeneratorOptions, AdversarialOptions):
    """LADD options (presets in train/ladd.py). The critic is always the teacher-feature one."""

    generator_steps: int = field(default=4, metadata={"help": "sampling steps of the generator (LADD: 1-4)"})
    input_from: str = field(
        default="data",
        metadata={
            "help": "step k's input: 'data' (the critic's real half noised to the step's time: LADD, ADD) or "
            "'generator' (its own first k steps from noise: DMD2's backward simulation, as sampling makes it)"
        },
    )
    data_source: str = field(
        default="real", metadata={"help": "the critic's real half: 'real' (the data) or 'teacher' (its samples)"}
    )
    teacher_steps: int = field(
        default=25, metadata={"help": "DDIM steps of the teacher's samples (data_source teacher)"}
    )
    teacher_guidance_scale: float = field(
        default=1.0, metadata={"help": "guidance of the teacher's samples (data_source teacher)"}
    )
    gan_generator_weight: float = field(default=1.0, metadata={"help": "weight of the generator's adversarial loss"})
    gan_critic_weight: float = field(default=1.0, metadata={"help": "weight of the critic's loss"})
    gan_features: str = field(default="teacher", metadata={"help": "the critic: 'teacher' (LADD's only choice)"})
    gan_t_sampling: str = field(
        default="logit_normal", metadata={"help": "the critic's noise levels: 'logit_normal' (LADD), 'uniform', 'low'"}
    )
    gan_loss: str = field(default="hinge", metadata={"help": "'hinge' (LADD) or 'non_saturating'"})

    def __post_init__(self):
        super().__post_init__()
        if not self.gan or self.gan_features != "teacher":
            raise ValueError(
                "LADD trains by its adversarial term alone: set both GAN weights > 0, gan_features teacher."
            )
        if self.teacher_steps < 1:
            raise ValueError(f"LADDConfig.teacher_steps must be >= 1, got {self.teacher_steps}.")
        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"LADDConfig.data_source must be one of {DATA_SOURCES}, got {self.data_source!r}.")
        if self.input_from not in INPUTS:
            raise ValueError(f"LADDConfig.input_from must be one of {INPUTS}, got {self.input_from!r}.")


@register("ladd")
class LADDStrategy(TeacherCritic, ReNoisingGenerator):
    """LADD (see the module docstring).

    Args:
        config: the method's options.
        teacher: the frozen teacher (the critic's feature network).
        student: the initial generator (default: a copy of the teacher, or the teacher + LoRA).
    """

    config_class = LADDConfig

    def __init__(self, config: LADDConfig, teacher: Denoiser, student: Denoiser | None = None):
        super().__init__(config, teacher)
        self.student = self.initial_student(student)
        self._add_teacher_critic()
        self.times = input_grid(teacher.schedule, config.generator_steps, config.init_timestep)

    def trainable(self) -> dict[str, nn.Module]:
        return {**super().trainable(), **self._critic_trainable()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), **self._critic_optimizers(self.config.lr)}

    def check_compatible(self) -> None:
        if self.config.teacher_guidance_scale != 1 and not self.teacher.can_guide:
            raise ValueError("teacher_guidance_scale != 1 needs a class- or text-conditional teacher.")

    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The critic's loss and (after ``gan_warmup_steps``) the generator's, on one step ``k`` of the sampler."""
        cfg, x0 = self.config, batch["x0"]
        cond = Condition.from_batch(batch)
        k = self._draw_step(step)
        real = x0 if cfg.data_source == "real" else self._teacher_samples(x0, cond)
        x_gen = self.student(self._generator_input(real, cond, k), self.times[k].to(x0).expand(len(x0)), cond)
        out = self._critic_losses(real, x_gen.detach(), cond)
        if step >= cfg.gan_warmup_steps:
            gan = self._teacher_gan_loss(x_gen, cond)
            out.update({"student": cfg.gan_generator_weight * gan, "log/gan_generator": gan.detach()})
        return out

    def _generator_input(self, real: Tensor, cond: Condition | None, k: int) -> Tensor:
        """Step ``k``'s input: ``real`` noised to ``times[k]``, or the generator's own first k steps from noise."""
        noise = torch.randn_like(real)
        if self.config.input_from == "generator":
            return self._simulated_input(noise, cond, k)
        return add_noise(real, noise, *self.teacher.schedule.alpha_sigma(self.times[k].to(real).expand(len(real))))

    @torch.no_grad()
    def _teacher_samples(self, like: Tensor, cond: Condition | None) -> Tensor:
        """LADD's synthetic data: the teacher's DDIM samples from fresh noise, for the batch's conditions."""
        w = self.config.teacher_guidance_scale if cond is not None else 1.0
        with self.teacher_network() as teacher:
            return ddim_sample(teacher, torch.randn_like(like), cond, self.config.teacher_steps, w)

    def export_spec(self, step: int) -> ExportSpec:
        cfg = self.config
        data = "real images" if cfg.data_source == "real" else f"the teacher's {cfg.teacher_steps}-step samples"
        details = (
            f"Trained {step} steps by the adversarial loss alone ({cfg.gan_loss}, critic heads on the teacher's "
            f"features, noise levels {cfg.gan_t_sampling} up to {cfg.gan_t_max:g}) against {data}."
        )
        method = "LADD (Sauer et al. 2024, arXiv 2403.12015)"
        return ExportSpec(len(self.times), self.scheduler_spec(), method, details, lora_method="LADD")
