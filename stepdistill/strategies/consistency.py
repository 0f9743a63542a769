"""Consistency distillation: CD (Song et al. 2023, arXiv 2303.01469), LCM (Luo et al. 2023, arXiv 2310.04378)
and LCM-LoRA (Luo et al. 2023, arXiv 2311.05556).

The student is a consistency function ``f(x_t, t) = c_skip(t) x_t + c_out(t) x0_student(x_t, t)`` (Eq. 5 of
LCM, boundary scalings with ``sigma_data`` and ``timestep_scaling``), trained so that ``f`` agrees at two
adjacent points of one teacher ODE trajectory: ``x_t`` and ``x_s``, one teacher DDIM step (with classifier-
free guidance inside the step) of ``skip`` training timesteps earlier (the skipping-step solver of LCM,
Sec. 4.3). The target side uses a target network: an EMA of the student (CD/LCM), or the student itself
without gradient (LCM-LoRA). A LoRA student's EMA target averages the adapter weights only and swaps them in
for the target pass, so there is still no second copy of the network. Guidance ``w ~ U[w_min, w_max]`` (the
standard form; LCM's ``w`` is ours minus 1) is fed to a guidance-embedding student, or a fixed ``w`` is baked in.

Phased (``phases > 1``; PCM, Wang et al. 2024, arXiv 2405.18407, and multistep CMs, Heek et al. 2024,
arXiv 2403.06807): the trajectory is cut at the trailing DDIM grid of ``phases`` steps; each segment is
trained jointly as its own consistency problem whose boundary is its lower edge (the consistency output is
carried to the edge with one DDIM step), and sampling jumps deterministically from edge to edge.

Deviation: times are this library's continuous ``t`` (``t = (index + 1) / T``); the boundary scalings use
the backbone's timestep value, as LCM's code does, so ``c_skip = 1`` exactly at the clean end. A rectified-flow
teacher (SD3) gets no boundary scalings: its ``x0 = x_t - t * flow`` is already the identity at the clean end, and
diffusers' stochastic ``FlowMatchEulerDiscreteScheduler`` samples exactly that consistency function.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..denoiser import Condition, Denoiser
from ..ema import EMA
from ..export import ExportSpec
from ..losses import consistency_distance
from ..sampling import consistency_function, consistency_sample
from ..schedules import add_noise, consistency_pairs, ddim_step, lcm_times, timestep_grid
from .base import Strategy, register, unwrap
from .options import GuidedStudentOptions, LoRAOptions


@dataclass
class ConsistencyConfig(LoRAOptions, GuidedStudentOptions):
    """Consistency distillation options (LCM defaults). ``lora_rank > 0`` trains LCM-LoRA; a LoRA student keeps no
    guidance embedding (its w is baked in)."""

    solver_steps: int = field(default=50, metadata={"help": "teacher DDIM grid size N; skip = T / N timesteps"})
    sample_steps: int = field(default=4, metadata={"help": "multistep consistency sampling steps for grids/export"})
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate (LCM full UNet 1e-6; LoRA 1e-4)"})
    guidance_range: list[float] = field(
        default_factory=lambda: [4.0, 16.0], metadata={"help": "w_min w_max, standard CFG form (LCM's 3..15 + 1)"}
    )
    target: Literal["ema", "none"] = field(
        default="ema",
        metadata={
            "help": "target network: EMA of the student (of the adapter weights only with LoRA), or the student"
        },
    )
    target_decay: float = field(default=0.95, metadata={"help": "EMA decay of the target network (LCM: 0.95)"})
    target_decay_warmup: bool = field(
        default=False, metadata={"help": "ramp the target's decay as min(decay, (1 + n) / (10 + n)) over updates n"}
    )
    loss: Literal["l2", "huber"] = field(default="huber", metadata={"help": "distance between f values"})
    huber_c: float = field(default=0.001, metadata={"help": "pseudo-Huber constant c"})
    sigma_data: float = field(default=0.5, metadata={"help": "sigma_data of the boundary scalings"})
    timestep_scaling: float = field(default=10.0, metadata={"help": "timestep scaling of the boundary scalings"})
    phases: int = field(
        default=1,
        metadata={"help": "segments of the trajectory (PCM / multistep CD); >1 samples in exactly that many steps"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.solver_steps < 1 or self.sample_steps < 1 or self.phases < 1:
            raise ValueError("ConsistencyConfig.solver_steps, sample_steps and phases must be >= 1.")
        if self.phases > 1 and self.sample_steps != self.phases:
            raise ValueError(
                f"A {self.phases}-phase student samples in exactly {self.phases} steps: set sample_steps to "
                f"{self.phases} (got {self.sample_steps})."
            )
        if self.phases > self.solver_steps:
            raise ValueError(f"phases ({self.phases}) cannot exceed solver_steps ({self.solver_steps}).")
        if len(self.guidance_range) != 2 or not 0 < self.guidance_range[0] <= self.guidance_range[1]:
            raise ValueError(
                f"guidance_range must be 'w_min w_max' with 0 < w_min <= w_max, got {self.guidance_range}."
            )
        if not 0 < self.target_decay < 1:
            raise ValueError(f"target_decay must be in (0, 1), got {self.target_decay}.")


@register("consistency")
class ConsistencyStrategy(Strategy):
    """CD / LCM / LCM-LoRA. With ``lora_rank > 0`` the student is the teacher's own network with a LoRA
    adapter, and the teacher is that network with adapters disabled (no second copy in memory).

    Args:
        config: the method's options.
        teacher: the frozen teacher.
        student: the initial student (default: a trainable copy of the teacher, or the teacher + LoRA).
    """

    config_class = ConsistencyConfig

    def __init__(self, config: ConsistencyConfig, teacher: Denoiser, student: Denoiser | None = None):
        super().__init__(config, teacher)
        student = self.initial_student(student)
        if config.guidance_embedding_dim and not config.lora_rank:
            student = student.with_guidance_embedding(config.guidance_embedding_dim)
        self.student = student
        # the (t, s, edge) training points depend on the config and schedule only: built once, not every step
        self.pairs = consistency_pairs(teacher.schedule, config.solver_steps, config.phases)
        self.target_net: Denoiser | None = None  # a full copy; LoRA students swap EMA adapter weights in instead
        self.target_ema: EMA | None = None
        if config.target == "ema":
            # averages the trainable weights only (the adapters of a LoRA student)
            self.target_ema = EMA(student, config.target_decay, warmup=config.target_decay_warmup)
            if not config.lora_rank:
                self.target_net = student.trainable_copy().frozen()

    def check_compatible(self) -> None:
        if not self.teacher.can_guide and self.config.guidance_range != [1.0, 1.0]:
            raise ValueError("Guided consistency distillation needs a teacher with a null class or an empty prompt.")
        if self.teacher.schedule.num_train_timesteps % self.config.solver_steps:
            raise ValueError(
                f"solver_steps ({self.config.solver_steps}) must divide the teacher's "
                f"{self.teacher.schedule.num_train_timesteps} training timesteps."
            )

    @property
    def w_conditioned(self) -> bool:
        return unwrap(self.student).guidance_embedding_dim is not None

    def _teacher_call(self, x_t: Tensor, t: Tensor, cond, w: Tensor) -> tuple[Tensor, Tensor]:
        with self.teacher_network() as teacher:
            return teacher.split(x_t, t, cond, w)

    def consistency_fn(self, net, x_t: Tensor, t: Tensor, cond, w: Tensor, edge: Tensor) -> Tensor:
        """Network ``net``'s consistency function at ``(x_t, t)``, mapping to the segment edge ``edge``."""
        return consistency_function(
            net,
            x_t,
            t,
            cond,
            w if self.w_conditioned else 1.0,
            self.config.sigma_data,
            self.config.timestep_scaling,
            edge if self.config.phases > 1 else None,
        )

    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        config, schedule = self.config, self.teacher.schedule
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        b = len(x0)
        pick = torch.randint(0, len(self.pairs[0]), (b,))
        t, s, edge = (v[pick].to(device=x0.device, dtype=x0.dtype) for v in self.pairs)
        lo, hi = config.guidance_range
        w = lo + (hi - lo) * torch.rand(b, device=x0.device, dtype=x0.dtype)
        if not self.w_conditioned:
            w = torch.full_like(w, lo)
        x_t = add_noise(x0, torch.randn_like(x0), *schedule.alpha_sigma(t))
        with torch.no_grad():  # before the student's pass: a LoRA EMA target swaps weights in place
            x0_w, eps_w = self._teacher_call(x_t, t, cond, w)
            x_s = ddim_step(x0_w, eps_w, *schedule.alpha_sigma(s))
            with self._target() as target_net:
                f_target = self.consistency_fn(target_net, x_s, s, cond, w, edge)
        f_student = self.consistency_fn(self.student, x_t, t, cond, w, edge)
        loss = consistency_distance(f_student.float(), f_target.float(), config.loss, config.huber_c)
        return {"student": loss}

    @contextmanager
    def _target(self):
        """The target network: the EMA copy, the LoRA student with its EMA adapter weights swapped in, or the
        student itself."""
        student = unwrap(self.student)
        if self.target_net is not None:
            yield self.target_net
        elif self.target_ema is not None:
            with self.target_ema.swapped(student):
                yield student
        else:
            yield student

    def on_step_end(self, step: int) -> None:
        if self.target_ema is not None:
            self.target_ema.update(unwrap(self.student))
            if self.target_net is not None:
                self.target_ema.copy_to(self.target_net)

    def inference_network(self) -> Denoiser:
        """The network to export: the EMA target when there is one (as LCM saves), else the student. A LoRA
        student with an EMA target is returned as a separate copy holding the EMA adapter weights."""
        if self.target_ema is not None and self.target_net is None:
            net = unwrap(self.student).trainable_copy().frozen()
            self.target_ema.copy_to(net)
            return net
        return self.target_net if self.target_net is not None else unwrap(self.student)

    def sampling_network(self) -> Denoiser:
        return self.inference_network()

    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Condition | None = None, guidance_scale: float | None = None) -> Tensor:
        w = self.config.guidance_range[0] if guidance_scale is None else guidance_scale
        with self._target() as net:
            return consistency_sample(
                net,
                noise,
                cond,
                self.config.sample_steps,
                guidance_scale=w if self.w_conditioned else 1.0,
                solver_steps=self.config.solver_steps,
                sigma_data=self.config.sigma_data,
                timestep_scaling=self.config.timestep_scaling,
                phases=self.config.phases,
            )

    def scheduler_spec(self) -> dict:
        """Phased: deterministic jumps between segment edges, trailing DDIM at the segment tops. Else LCM's multistep
        sampler at the solver-grid times it was trained on (its boundary scalings from the config)."""
        cfg, schedule = self.config, self.teacher.schedule
        if cfg.phases > 1:
            return {"scheduler_class": "DDIMScheduler", "times": timestep_grid(schedule, cfg.sample_steps)}
        return {
            "scheduler_class": "LCMScheduler",
            "times": lcm_times(schedule, cfg.sample_steps, cfg.solver_steps),
            "scheduler_options": {
                "original_inference_steps": cfg.solver_steps,
                "timestep_scaling": cfg.timestep_scaling,
            },
        }

    def export_spec(self, step: int) -> ExportSpec:
        cfg = self.config
        if cfg.phases > 1:
            method = (
                f"Phased consistency distillation ({cfg.phases} segments; PCM, Wang et al. 2024, arXiv 2405.18407)"
            )
        else:
            method = "Consistency distillation (LCM, Luo et al. 2023, arXiv 2310.04378)"
        details = f"Trained {step} steps on a {cfg.solver_steps}-step teacher DDIM grid."
        w = cfg.guidance_range[0] if self.w_conditioned else 1.0
        return ExportSpec(cfg.sample_steps, self.scheduler_spec(), method, details, w, lora_method="LCM")

    def extra_state(self) -> dict:
        if self.target_ema is None:
            return {}
        return {"target_ema": self.target_ema.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "target_ema" in state:
            self.target_ema.load_state_dict(state["target_ema"])
            if self.target_net is not None:
                self.target_ema.copy_to(self.target_net)
