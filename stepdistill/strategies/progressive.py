"""Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512) and guided PD (Meng et al. 2023, arXiv 2210.03142).

Each round halves the number of sampling steps: a student with ``N`` steps learns to match, in one DDIM
step ``t -> t - 1/N``, two DDIM steps of its teacher ``t -> t - 0.5/N -> t - 1/N`` (Algorithm 2 of Salimans &
Ho). The student of one round is the teacher of the next. Times are the paper's uniform continuous grid
``t = k / N``; with the discrete schedule of a diffusers teacher (``T`` training steps) the final grid lands on
integer timesteps whenever ``N`` divides ``T``.

Guided PD, stage 1 (Sec. 3.1 of Meng et al.): when ``guidance_range`` is set, the student is given a
guidance-scale embedding and first learns the guided teacher ``u + w (c - u)`` for ``w ~ U[w_min, w_max]``
at the same step count (``guided_steps`` optimizer steps); stage 2 then halves steps with ``w`` passed
through. Deviation from the paper: its guidance form ``(1 + w) c - w u`` is our ``w + 1``.

Without ``guidance_range``, a ``guidance_scale`` other than 1 is baked into the student: round 1 distils
the teacher's guided sampler, the student is always called unguided (one pass per step), and the exported
pipeline is sampled at guidance 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..denoiser import Condition, Denoiser
from ..export import ExportSpec
from ..losses import distillation_weight
from ..sampling import ddim_sample
from ..schedules import ddim_step, two_step_target
from .base import Strategy, register, unwrap
from .options import GuidedStudentOptions, TeacherGuidanceOptions


@dataclass
class ProgressiveConfig(GuidedStudentOptions, TeacherGuidanceOptions):
    """Progressive distillation options (paper defaults where they apply; the README has CPU settings)."""

    teacher_steps: int = field(default=1024, metadata={"help": "steps of the teacher's DDIM sampler in round 1"})
    target_steps: int = field(default=4, metadata={"help": "student steps after the last round"})
    steps_per_round: int = field(default=50000, metadata={"help": "optimizer steps per halving round"})
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate (paper: 5e-5 on CIFAR-10)"})
    round_lr_schedule: Literal["linear", "constant"] = field(
        default="linear",
        metadata={
            "help": "LR within each halving round: annealed linearly to 0 by its end (as the official "
            "configs do), or constant"
        },
    )
    weighting: Literal["truncated_snr", "snr_plus_one", "constant"] = field(
        default="truncated_snr", metadata={"help": "x-space loss weight: max(SNR, 1), SNR + 1 or 1 (Sec. 4)"}
    )
    guidance_range: list[float] | None = field(
        default=None, metadata={"help": "w_min w_max: guided PD with a w-conditioned student"}
    )
    guided_steps: int = field(default=0, metadata={"help": "stage-1 optimizer steps of guided PD"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("teacher_steps", "target_steps"):
            n = getattr(self, name)
            if n < 1 or n & (n - 1):
                raise ValueError(f"ProgressiveConfig.{name} must be a power of two, got {n}.")
        if self.target_steps >= self.teacher_steps:
            raise ValueError(f"target_steps ({self.target_steps}) must be below teacher_steps ({self.teacher_steps}).")
        if self.steps_per_round < 1 or self.lr <= 0:
            raise ValueError("ProgressiveConfig.steps_per_round and lr must be positive.")
        if self.guidance_range is not None:
            if len(self.guidance_range) != 2 or not 0 < self.guidance_range[0] <= self.guidance_range[1]:
                raise ValueError(
                    f"guidance_range must be 'w_min w_max' with 0 < w_min <= w_max, got {self.guidance_range}."
                )
            if self.guided_steps < 1:
                raise ValueError("guided PD needs guided_steps >= 1 (the stage-1 length).")
            if self.guidance_embedding_dim is None:
                raise ValueError("guided PD trains a w-conditioned student: set guidance_embedding_dim (e.g. 256).")
        elif self.guided_steps:
            raise ValueError("guided_steps is set but guidance_range is not.")

    @property
    def num_rounds(self) -> int:
        return int(math.log2(self.teacher_steps // self.target_steps))

    @property
    def total_steps(self) -> int:
        return self.guided_steps + self.num_rounds * self.steps_per_round


@register("progressive")
class ProgressiveStrategy(Strategy):
    """Progressive distillation with full fine-tuning of the student.

    Args:
        config: the method's options.
        teacher: the frozen teacher.
        student: the initial student; default a trainable copy of the teacher (as in the paper).
    """

    config_class = ProgressiveConfig

    def __init__(self, config: ProgressiveConfig, teacher: Denoiser, student: Denoiser | None = None):
        super().__init__(config, teacher)
        student = student if student is not None else teacher.trainable_copy()
        if config.guidance_range is not None:
            student = student.with_guidance_embedding(config.guidance_embedding_dim)
        self.student = student
        self.round = -1  # -1: guided stage 1 (or not started); k >= 0: halving round k
        self.round_teacher: Denoiser | None = None  # frozen snapshot of the student at the round's start

    def check_compatible(self) -> None:
        self.teacher.check_matches(unwrap(self.student))
        if self.config.guidance_range is not None and not self.teacher.can_guide:
            raise ValueError("Guided PD needs a teacher with a null class or an empty prompt.")
        super().check_compatible()

    # ------------------------------------------------------------------------------------ schedule
    def round_of(self, step: int) -> int:
        """Round index at optimizer step ``step``: -1 during guided stage 1, then 0, 1, ..."""
        if step < self.config.guided_steps:
            return -1
        return min((step - self.config.guided_steps) // self.config.steps_per_round, self.config.num_rounds - 1)

    def lr_factor(self, step: int) -> float:
        """Linear annealing to zero within each halving round (``round_lr_schedule``); guided stage 1 is constant."""
        cfg = self.config
        if cfg.round_lr_schedule == "constant" or step < cfg.guided_steps:
            return 1.0
        into_round = step - cfg.guided_steps - self.round_of(step) * cfg.steps_per_round
        # past the schedule (a longer max_steps) the last round keeps its final LR, never a negative one
        return 1.0 - min(into_round, cfg.steps_per_round - 1) / cfg.steps_per_round

    def student_steps(self, round_index: int) -> int:
        """Sampling steps the student learns in ``round_index`` (stage 1 keeps the teacher's count)."""
        if round_index < 0:
            return self.config.teacher_steps
        return self.config.teacher_steps // 2 ** (round_index + 1)

    def _enter_round(self, round_index: int) -> None:
        """Freeze a snapshot of the current student as the teacher of ``round_index`` (> 0 or after stage 1)."""
        self.round = round_index
        guided_student = self.config.guidance_range is not None
        if round_index == 0 and not guided_student:
            self.round_teacher = None  # round 0 distils the original teacher
            return
        student = unwrap(self.student)
        self.round_teacher = student.trainable_copy().frozen()

    # -------------------------------------------------------------------------------------- losses
    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        round_index = self.round_of(step)
        if round_index != self.round:
            self._enter_round(round_index)
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        n = self.student_steps(round_index)
        k = torch.randint(1, n + 1, (len(x0),), device=x0.device)
        t = k.to(x0.dtype) / n  # [B], the student's uniform grid
        w = self._draw_guidance(len(x0), x0)
        w_student = w if self.config.guidance_range is not None else torch.ones_like(w)
        # the original teacher is guided at w; snapshots of a baked-guidance student already include it
        w_teacher = w if self.round_teacher is None or self.config.guidance_range is not None else w_student
        schedule = self.teacher.schedule
        alpha, sigma = schedule.alpha_sigma(t)
        eps = torch.randn_like(x0)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
        with torch.no_grad():
            if round_index < 0:  # guided stage 1: match the guided teacher's x0 at the same time
                target = self.teacher(x_t, t, cond, guidance_scale=w_teacher)
            else:
                target = self._two_step_target(x_t, t, cond, w_teacher, n)
        pred = self.student(x_t, t, cond, guidance_scale=w_student, kind="x0")
        weight = distillation_weight(schedule.log_snr(t), self.config.weighting)
        per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()
        return {"student": loss, "log/student_steps": torch.tensor(float(n))}

    def _draw_guidance(self, b: int, like: Tensor) -> Tensor:
        if self.config.guidance_range is None:
            return torch.full((b,), self.config.guidance_scale, device=like.device, dtype=like.dtype)
        lo, hi = self.config.guidance_range
        return lo + (hi - lo) * torch.rand(b, device=like.device, dtype=like.dtype)

    def _two_step_target(self, x_t, t, cond, w, n) -> Tensor:
        """x-target that makes one student DDIM step t -> t - 1/n land on two teacher steps (Alg. 2)."""
        teacher = self.round_teacher if self.round_teacher is not None else self.teacher
        schedule = teacher.schedule
        t_mid, t_end = t - 0.5 / n, t - 1.0 / n
        x0_a, eps_a = teacher.split(x_t, t, cond, w)
        x_mid = ddim_step(x0_a, eps_a, *schedule.alpha_sigma(t_mid))
        x0_b, eps_b = teacher.split(x_mid, t_mid, cond, w)
        x_end = ddim_step(x0_b, eps_b, *schedule.alpha_sigma(t_end))
        return two_step_target(x_t, x_end, schedule.alpha_sigma(t), schedule.alpha_sigma(t_end))

    # ---------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Condition | None = None, guidance_scale: float | None = None) -> Tensor:
        """DDIM with the student on its current grid; ``guidance_scale`` only applies to guided-PD students."""
        student = unwrap(self.student)
        n = self.student_steps(self.round)
        w = self.sampling_guidance if guidance_scale is None else guidance_scale
        times = torch.arange(n, 0, -1, dtype=torch.float64) / n
        return ddim_sample(student, noise, cond, guidance_scale=w, times=times)

    @property
    def sampling_guidance(self) -> float:
        """The guidance scale to sample the student with (1 when guidance is baked in)."""
        return self.config.guidance_scale if self.config.guidance_range is not None else 1.0

    def scheduler_spec(self) -> dict:
        """Deterministic DDIM on the trailing grid of the current round's steps (``configure_scheduler``'s default
        times)."""
        return {"scheduler_class": "DDIMScheduler"}

    def export_spec(self, step: int) -> ExportSpec:
        """The student of the round that ends at ``step``, as ``pipeline-<N>steps``."""
        cfg, steps = self.config, self.student_steps(self.round_of(step - 1))
        details = (
            f"Teacher sampler {cfg.teacher_steps} steps, halved each round of {cfg.steps_per_round} "
            f"optimizer steps; exported after {step} steps."
        )
        if cfg.guidance_range is None and cfg.guidance_scale != 1:
            details += f" The teacher's guidance w = {cfg.guidance_scale:g} is baked in."
        method = "Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512)"
        return ExportSpec(
            steps, self.scheduler_spec(), method, details, self.sampling_guidance, folder=f"pipeline-{steps}steps"
        )

    def round_ends(self, step: int) -> bool:
        """Whether optimizer step ``step`` completes a halving round (its student is then exported)."""
        return self.round_of(step - 1) >= 0 and self.round_of(step) != self.round_of(step - 1)

    def extra_state(self) -> dict:
        state = {"round": self.round}
        if self.round_teacher is not None:
            state["round_teacher"] = {k: v.cpu() for k, v in self.round_teacher.state_dict().items()}
        return state

    def load_extra_state(self, state: dict) -> None:
        self.round = state["round"]
        if "round_teacher" in state:
            student = unwrap(self.student)
            self.round_teacher = student.trainable_copy().frozen()
            self.round_teacher.load_state_dict(state["round_teacher"])
        else:
            self.round_teacher = None
