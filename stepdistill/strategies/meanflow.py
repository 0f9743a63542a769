"""MeanFlow distillation (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", arXiv 2505.13447): a
student of the average velocity between two times, trained with the MeanFlow identity against the teacher's
instantaneous velocity, sampled in one or a few deterministic jumps.

The student is the teacher's network with a second time input, the jump's length, in diffusers' ``timestep_cond``
slot (``time_cond_proj_dim``, LCM's guidance embedding, zero-initialised so the student starts as the teacher). In
TrigFlow time (``stepdistill.trigflow``: ``x_s = cos(s) x0 + sin(s) sigma_d eps``) the network's ``(x0, eps)`` at
``(x_s, s)`` with input ``h = s - r`` defines the jump to ``r`` as DDIM's, ``x_r = cos(r) x0 + sin(r) sigma_d eps``,
and so the average velocity

    u(x_s, s, r) = (x_s - x_r) / h = sinc(h / 2) (-sin(m) x0 + cos(m) sigma_d eps),   m = s - h / 2,

which at ``h = 0`` is the instantaneous velocity ``dx_s/ds`` of a diffusion model. Each step:

1. two times from MeanFlow's logit-normal proposal (``log(sigma / alpha) ~ N(p_mean, p_std^2)``, the same family as
   sCM's), the larger ``t``, the smaller ``r``; for a fraction ``flow_fraction`` of the batch ``r = t``;
2. ``x_s`` from real data; the teacher's velocity ``v = dx_s/ds`` there (its guidance baked in);
3. ``u`` and its total derivative ``du/ds`` along ``(v, 1)`` with ``r`` held, by a JVP (``trigflow.velocity_jvp``);
4. the loss ``||u_theta - sg(v - (s - r) du/ds)||^2 / D`` with MeanFlow's adaptive weight ``1 / sg(loss + c)^p``.

Sampling: K jumps down the trailing grid (999/499 for 2 steps) to the schedule's first training index, each with the
interval input ``1 / K`` of the time range (the input is ``(t - t_r) / (t_top - t_end)`` in the teacher's own time,
so every jump of a trailing grid has the same one, up to a training index). Diffusers' TCDScheduler at ``eta = 0``
takes exactly these jumps, and its pipelines pass a constant ``timestep_cond``, so the export needs no custom
sampler: the pipeline is called with ``guidance_scale = 1 / K`` (``1 + 1 / K`` for diffusers' SD pipelines, which
embed ``guidance_scale - 1``).

Deviations from the paper: the times live in the teacher's schedule (clamped to its range), the second time enters as
the interval in the teacher's time through the guidance-embedding slot, and the adaptive weight uses the per-element
mean squared error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..denoiser import Condition, Denoiser
from ..export import ExportSpec
from ..sampling import ddim_sample
from ..schedules import _bcast, add_noise
from ..trigflow import TrigFlow, teacher_velocity, velocity_jvp
from .base import register, unwrap
from .options import GeneratorOptions, TeacherGuidanceOptions, TrigFlowOptions
from .scm import MAX_NOISE_RATIO
from .score_distillation import ReNoisingGenerator, input_grid


@dataclass
class MeanFlowConfig(GeneratorOptions, TeacherGuidanceOptions, TrigFlowOptions):
    """MeanFlow options (the paper's ImageNet defaults where it gives them: logit-normal (-0.4, 1.0), 25% of the pairs
    with r != t, adaptive weight p = 1)."""

    p_mean: float = field(default=-0.4, metadata={"help": "mean of log(sigma / alpha) in the time proposal (-0.4)"})
    p_std: float = field(default=1.0, metadata={"help": "its standard deviation (MeanFlow: 1.0)"})
    flow_fraction: float = field(
        default=0.75, metadata={"help": "fraction of the batch with r = t, plain flow matching (MeanFlow: 0.75)"}
    )
    grid_fraction: float = field(
        default=0.0,
        metadata={
            "help": "fraction of the batch whose (t, r) is one of the sampler's jumps (top to end for one step, and "
            "the K-step grid's jumps), which the proposal rarely reaches on a VP teacher (not in the paper; 0: off)"
        },
    )
    adaptive_p: float = field(
        default=1.0, metadata={"help": "power p of the adaptive weight 1 / (loss + c)^p (MeanFlow: 1; 0: none)"}
    )
    adaptive_c: float = field(default=1e-3, metadata={"help": "c of the adaptive weight"})
    interval_embedding_dim: int = field(
        default=256, metadata={"help": "width of the interval input's embedding (time_cond_proj_dim)"}
    )

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.lora_rank:
            raise ValueError(
                "MeanFlow's student gets a new input (the jump's length, time_cond_proj_dim) that a LoRA adapter "
                "cannot carry: train a full student (drop --lora-rank)."
            )
        if not self.p_std > 0:
            raise ValueError(f"{name}.p_std must be positive, got {self.p_std}.")
        if not 0 <= self.flow_fraction < 1 or not 0 <= self.grid_fraction <= 1 - self.flow_fraction:
            raise ValueError(
                f"{name}.flow_fraction must be in [0, 1) and grid_fraction in [0, 1 - flow_fraction], got "
                f"{self.flow_fraction} and {self.grid_fraction}."
            )
        if self.adaptive_p < 0 or not self.adaptive_c > 0:
            raise ValueError(f"{name}.adaptive_p must be >= 0 and adaptive_c > 0.")
        if self.interval_embedding_dim < 2:
            raise ValueError(f"{name}.interval_embedding_dim must be >= 2, got {self.interval_embedding_dim}.")


@register("meanflow")
class MeanFlowStrategy(ReNoisingGenerator):
    """MeanFlow distillation (Geng et al. 2025, arXiv 2505.13447) in TrigFlow time.

    Args:
        config: a ``MeanFlowConfig``.
        teacher: the frozen teacher (its PF-ODE velocity is the target at ``r = t``).
        student: the initial student (default: a trainable copy of the teacher); a network without an interval input
            gets one (``Denoiser.with_guidance_embedding``, zero-initialised).
    """

    config_class = MeanFlowConfig

    def __init__(self, config: MeanFlowConfig, teacher: Denoiser, student: Denoiser | None = None):
        super().__init__(config, teacher)
        if teacher.guidance_embedding_dim:
            raise ValueError(
                "This teacher already takes a guidance embedding (time_cond_proj_dim), the slot MeanFlow's interval "
                "input needs: distil a teacher with classifier-free guidance instead."
            )
        student = self.initial_student(student)
        if not student.guidance_embedding_dim:
            try:
                student.with_guidance_embedding(config.interval_embedding_dim)
            except TypeError as err:
                raise TypeError(
                    f"MeanFlow feeds the jump's length through the UNet's time_cond_proj_dim input: {err}"
                ) from None
        self.student = student
        self.trig = TrigFlow(teacher.schedule, config.sigma_d)
        self.times = input_grid(teacher.schedule, config.generator_steps, config.init_timestep)
        discrete = teacher.schedule.kind == "discrete"
        self.t_end = float(teacher.schedule.index_time(0)) if discrete else 0.0
        self.t_top = float(self.times[0])
        self.t_max = min(self.t_top, float(self.trig.t_of_s(math.atan(MAX_NOISE_RATIO / config.sigma_d))))

    # ------------------------------------------------------------------------------------------ the model
    def interval(self, t: Tensor, r: Tensor) -> Tensor:
        """The student's interval input ``(t - r) / (t_top - t_end)`` ``[B]``: 1 for the one-step jump, ``1 / K``
        for each jump of a K-step trailing grid."""
        return (t - r) / (self.t_top - self.t_end)

    def average_velocity(self, network, prediction: str, x_s: Tensor, t: Tensor, r: Tensor, s_r: Tensor, cond):
        """``u(x_s, s(t), s_r)`` ``[B, ...]`` of a student (or its distributed wrapper) whose native output kind is
        ``prediction``, from its ``(x0, eps)`` at ``(x_s, t)`` with interval input ``interval(t, r)``; smooth in
        ``(x_s, t)`` for the JVP (``r`` and ``s_r = s(r)`` are held)."""
        velocity = self.trig.network_velocity(network, prediction, x_s, t, cond, guidance_scale=self.interval(t, r))
        half = (self.trig.s_of_t(t) - s_r) / 2
        # -sin(m) x0 + cos(m) sigma_d eps at m = s - h/2, written through x_s and sigma_d F at s
        jump = _bcast(torch.sin(half), x_s) * x_s + _bcast(torch.cos(half), x_s) * self.trig.sigma_d * velocity
        return _bcast(torch.sinc(half / math.pi), x_s) * jump  # sinc: sin(h/2) / (h/2)

    # ------------------------------------------------------------------------------------------ training
    def draw_times(self, b: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(t, r)`` ``[B]`` each: two draws of ``log(sigma / alpha) ~ N(p_mean, p_std^2)`` in the teacher's time,
        ``t >= r``; ``r = t`` for a ``flow_fraction`` of the batch, and one of the sampler's jumps (``jumps``) for a
        ``grid_fraction``."""
        cfg = self.config
        log_ratio = cfg.p_mean + cfg.p_std * torch.randn(2, b, dtype=torch.float64)
        times = self.trig.t_of_s(torch.atan(torch.exp(log_ratio) / cfg.sigma_d)).clamp(self.t_end, self.t_max)
        t, r = times.max(0).values, times.min(0).values
        u = torch.rand(b, dtype=torch.float64)
        r = torch.where(u < cfg.flow_fraction, t, r)
        if cfg.grid_fraction:
            starts, ends = self.jumps()
            pick = torch.randint(len(starts), (b,))
            on_grid = (u >= cfg.flow_fraction) & (u < cfg.flow_fraction + cfg.grid_fraction)
            t, r = torch.where(on_grid, starts[pick], t), torch.where(on_grid, ends[pick], r)
            t = t.clamp(max=self.t_max)  # the top time itself: dt/ds and the input scale can leave float range
        return t.to(like.device, like.dtype), r.to(like.device, like.dtype)

    def jumps(self) -> tuple[Tensor, Tensor]:
        """The sampler's jumps as ``(starts, ends)`` ``[J]`` (float64): one step from the top to the end, and each
        jump of the K-step grid."""
        times = self.times.to(torch.float64)
        ends = torch.cat([times[1:], times.new_tensor([self.t_end])])
        starts = torch.cat([times[:1], times]) if len(times) > 1 else times
        ends = torch.cat([times.new_tensor([self.t_end]), ends]) if len(times) > 1 else ends
        return starts, ends

    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        cfg, trig = self.config, self.trig
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        t, r = self.draw_times(len(x0), x0)
        x_s = trig.to_trigflow(add_noise(x0, torch.randn_like(x0), *self.teacher.schedule.alpha_sigma(t)), t)
        with self.teacher_network() as teacher:
            v = teacher_velocity(trig, teacher, x_s, t, cond, cfg.guidance_scale)
        network = unwrap(self.student)
        # forward-mode AD through the bare module; the finite difference's plain forwards through the wrapper
        jvp_network = self.student if cfg.jvp == "finite_difference" else network
        s_r = trig.s_of_t(r)

        def mean_velocity(x: Tensor, time: Tensor) -> Tensor:
            return self.average_velocity(jvp_network, network.prediction, x, time, r, s_r, cond)

        _, du_ds = velocity_jvp(mean_velocity, x_s, t, v, trig.dt_ds(t), cfg.jvp, cfg.jvp_eps)
        h = trig.s_of_t(t) - s_r
        target = (v - _bcast(h, v) * du_ds).detach()
        u = self.average_velocity(self.student, network.prediction, x_s, t, r, s_r, cond)
        error = (u.float() - target.float()).square().flatten(1).mean(1)  # [B]
        weight = (error.detach() + cfg.adaptive_c) ** -cfg.adaptive_p if cfg.adaptive_p else torch.ones_like(error)
        flow = h == 0
        logs = {
            "log/mse_flow": error[flow].mean() if flow.any() else torch.tensor(0.0),
            "log/mse_mean": error[~flow].mean() if (~flow).any() else torch.tensor(0.0),
        }
        return {"student": (weight * error).mean(), **logs}

    # ------------------------------------------------------------------------------------------ sampling
    def generate(self, noise: Tensor, cond: Condition | None, generator: torch.Generator | None) -> Tensor:
        """K deterministic jumps down ``self.times`` to the first training index (DDIM's update with the student's
        ``(x0, eps)``), each with interval input ``1 / K`` (``sample`` refuses a guidance other than 1: it is baked
        in)."""
        return meanflow_sample(unwrap(self.student), noise, cond, self.times, self.t_end)

    def scheduler_spec(self) -> dict:
        """Diffusers' TCDScheduler at ``eta = 0`` (its pipelines' default): from the top time its grid over every
        training index (``original_inference_steps = T``) gives the trailing grid, and each step is the
        deterministic jump ``sqrt(abar_next) x0 + sqrt(1 - abar_next) eps`` to the next timestep, the last to
        index 0."""
        big_t = self.teacher.schedule.num_train_timesteps
        if self.teacher.schedule.kind != "discrete" or self.teacher.schedule.time_index(self.times[0]) != big_t - 1:
            raise ValueError(
                "MeanFlow exports a discrete-schedule teacher sampled from its top time (TCDScheduler): drop "
                "--init-timestep."
            )
        options = {"original_inference_steps": big_t}
        return {"scheduler_class": "TCDScheduler", "times": self.times, "scheduler_options": options}

    def export_spec(self, step: int) -> ExportSpec:
        cfg, k = self.config, len(self.times)
        return ExportSpec(
            num_steps=k,
            scheduler=self.scheduler_spec(),
            method="MeanFlow distillation (Geng et al. 2025, arXiv 2505.13447)",
            details=(
                f"Trained {step} optimizer steps (sigma_d = {cfg.sigma_d}, log(sigma/alpha) ~ N({cfg.p_mean}, "
                f"{cfg.p_std}^2), r = t for {cfg.flow_fraction:g} of the batch, JVP: {cfg.jvp}); teacher guidance "
                f"{cfg.guidance_scale}, baked in. The UNet's `timestep_cond` input (the guidance embedding) takes the "
                "length of each jump as a fraction of the time range, so call the pipeline with `guidance_scale = 1 "
                "/ num_inference_steps` (diffusers' SD pipelines: `1 + 1 / num_inference_steps`); the scheduler, "
                "TCDScheduler at `eta=0`, jumps deterministically between the trailing grid's timesteps."
            ),
            guidance_scale=1.0 / k,
            interval_input=True,
        )


@torch.no_grad()
def meanflow_sample(
    student: Denoiser, noise: Tensor, cond: Condition | None, times: Tensor, t_end: float = 0.0
) -> Tensor:
    """A MeanFlow student's sampler: from ``noise`` at ``times[0]``, DDIM's deterministic jumps with the student's
    ``(x0, eps)`` to each next time and last to ``t_end``, its interval input ``1 / K`` at every jump (what diffusers'
    TCDScheduler at ``eta = 0`` does with a constant ``timestep_cond``)."""
    return ddim_sample(student, noise, cond, guidance_scale=1.0 / len(times), times=times, end=t_end)
