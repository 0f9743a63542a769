"""Knowledge distillation of a sampler: Luhman & Luhman 2021, arXiv 2101.02388 ("Knowledge distillation in iterative
generative models for improved sampling speed").

A one-step student learns the teacher's deterministic sampler as a map from noise to image: for each noise ``z`` the
target is the teacher's DDIM sample from ``z`` (``teacher_steps`` steps, guidance ``guidance_scale``), and the
student's x0 at the top time regresses onto it (Eq. 5, with a mean squared error for the paper's perceptual loss).
The student starts from the teacher's weights, as in the paper. One DDIM step from the top time returns the student's
x0, so it exports as a one-step ``DDIMScheduler`` pipeline.

Deviation: the paper samples its (noise, image) pairs once as a dataset; here they are made on the fly for each batch,
which costs ``teacher_steps`` teacher calls per step and needs no storage. This is the smallest complete strategy of
the toolkit: a config, ``losses``, a scheduler spec and a registration (README, "Add a strategy").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..denoiser import Condition, Denoiser
from ..sampling import ddim_sample
from .base import Strategy, register
from .options import TeacherGuidanceOptions


@dataclass
class KnowledgeDistillationConfig(TeacherGuidanceOptions):
    """Knowledge distillation options."""

    teacher_steps: int = field(default=16, metadata={"help": "DDIM steps of the teacher's target samples"})

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_steps < 1:
            raise ValueError(f"KnowledgeDistillationConfig.teacher_steps must be >= 1, got {self.teacher_steps}.")


@register("kd")
class KnowledgeDistillationStrategy(Strategy):
    """Knowledge distillation (Luhman & Luhman 2021, arXiv 2101.02388): a one-step student regresses the teacher's
    DDIM samples from the same noise."""

    config_class = KnowledgeDistillationConfig

    def __init__(self, config: KnowledgeDistillationConfig, teacher: Denoiser, student: Denoiser | None = None):
        super().__init__(config, teacher)
        self.student = self.initial_student(student)

    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The regression loss on fresh noise shaped like the batch's images (their content is not read)."""
        cond = Condition.from_batch(batch)
        noise = torch.randn_like(batch["x0"])
        with torch.no_grad():
            target = ddim_sample(self.teacher, noise, cond, self.config.teacher_steps, self.config.guidance_scale)
        t = torch.ones(len(noise), device=noise.device, dtype=noise.dtype)
        x0 = self.student(noise, t, cond)
        return {"student": (x0.float() - target.float()).pow(2).mean()}

    def scheduler_spec(self) -> dict:
        """One DDIM step from the top time: it returns the student's x0 (also what ``Strategy.sample`` runs)."""
        return {"scheduler_class": "DDIMScheduler", "times": torch.ones(1, dtype=torch.float64)}
