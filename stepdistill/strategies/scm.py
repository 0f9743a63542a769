"""Continuous-time consistency distillation: sCD (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", arXiv 2410.11081, Algorithm 1 and Sec. 4).

The student is a consistency function in TrigFlow (``stepdistill.trigflow``): ``f(x_s, s) = cos(s) x_s -
sin(s) sigma_d F(x_s, s)``, which for a network in the teacher's own parametrisation is its x0 prediction, so the
student keeps the teacher's architecture and prediction type, starts as the teacher, and is sampled and exported like
any re-noising generator (one step from the top time, or several with fresh noise between them). Each step:

1. times from sCM's proposal, ``tan(s) = exp(tau) / sigma_d`` with ``tau ~ N(p_mean, p_std^2)``, mapped to the
   teacher's time; ``x_s`` from real data;
2. the teacher's PF-ODE ``dx_s/ds`` (its classifier-free guidance baked in);
3. ``F`` of the student without gradient and its JVP ``dF/ds`` along ``(dx_s/ds, 1)`` (``trigflow.velocity_jvp``:
   forward-mode AD on PyTorch's math attention kernel, or a finite difference);
4. the tangent ``g`` with warm-up ``r`` (0 -> 1 over ``tangent_warmup_steps``) and normalisation ``g / (||g|| + c)``;
5. ``L = exp(w(s)) / D ||F_theta - F_theta^- - g||^2 - w(s)`` with the adaptive weight ``w`` a learned log-variance
   over time (``LogVarianceWeighting``), split into the student's term (``w`` held fixed) and the weighting's term
   (the error held fixed), whose gradients are exactly those of ``L``.

Deviations: the times are drawn in TrigFlow and then clamped to the teacher's range (``sigma / alpha <= 1e4``); the
student's time input is the teacher's own timestep (fractional between training indices), not TrigFlow's ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..denoiser import Condition, Denoiser
from ..export import ExportSpec
from ..losses import denoising_loss, distribution_matching_loss
from ..schedules import _bcast, add_noise, split
from ..trigflow import TrigFlow, scm_tangent, teacher_velocity, velocity_jvp
from .base import register, unwrap
from .options import GeneratorOptions, TeacherGuidanceOptions, TrigFlowOptions, TwoTimeScaleOptions
from .score_distillation import ReNoisingGenerator, input_grid

# the largest sigma / alpha the time proposal reaches: beyond it dt/ds and the input scale leave float range
MAX_NOISE_RATIO = 1e4


@dataclass
class SCMConfig(GeneratorOptions, TeacherGuidanceOptions, TwoTimeScaleOptions, TrigFlowOptions):
    """sCD options (sCM's CIFAR-10 defaults, App. G.2 of Lu & Song 2024, where the paper gives them)."""

    p_mean: float = field(default=-1.0, metadata={"help": "mean of log(sigma_d tan s) in the time proposal (-1.0)"})
    p_std: float = field(default=1.4, metadata={"help": "its standard deviation (sCM CIFAR-10: 1.4)"})
    tangent_warmup_steps: int = field(
        default=10000, metadata={"help": "optimizer steps over which the tangent's second term ramps in (sCM: 10k)"}
    )
    tangent_norm_c: float = field(
        default=0.1, metadata={"help": "c of the tangent normalisation g / (||g|| + c) (sCM: 0.1; 0: none)"}
    )
    adaptive_weighting: bool = field(
        default=True, metadata={"help": "learn sCM's log-variance weighting w(s) over time (off: w = 0)"}
    )
    dmd_weight: float = field(
        default=0.0,
        metadata={
            "help": "rCM: weight of DMD's distribution-matching term on the student's samples, with a fake score (0: "
            "sCD alone; 0.02 is rCM's 1:100 against the sCM loss in this toolkit's per-element means)"
        },
    )
    dmd_p_mean: float = field(
        default=0.0, metadata={"help": "rCM: mean of log(sigma / alpha) of the DMD and fake-score noise (rCM: 0.0)"}
    )
    dmd_p_std: float = field(default=1.6, metadata={"help": "rCM: its standard deviation (rCM: 1.6)"})

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if not self.p_std > 0:
            raise ValueError(f"{name}.p_std must be positive, got {self.p_std}.")
        if self.tangent_warmup_steps < 0 or self.tangent_norm_c < 0:
            raise ValueError(f"{name}.tangent_warmup_steps and tangent_norm_c must be >= 0.")
        if self.dmd_weight < 0 or not self.dmd_p_std > 0:
            raise ValueError(f"{name}: dmd_weight must be >= 0 and dmd_p_std > 0.")
        if self.dmd_weight and self.lora_rank:
            raise ValueError(
                "rCM's fake score is a full copy of the teacher, which a LoRA student shares: drop --lora-rank or "
                "--dmd-weight."
            )


class LogVarianceWeighting(nn.Module):
    """sCM's adaptive weight ``w(s)``: a linear layer on fixed random Fourier features of ``log(sigma_d tan s) / 4``
    (EDM2's log-variance head), zero at the start so the first steps weigh every time equally."""

    def __init__(self, features: int = 128, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(features, generator=g))
        self.register_buffer("phases", torch.rand(features, generator=g))
        self.linear = nn.Linear(features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, log_sigma: Tensor) -> Tensor:
        """``w`` ``[B]`` at ``log(sigma_d tan s)`` ``[B]``."""
        x = log_sigma.float()[:, None] / 4
        features = math.sqrt(2) * torch.cos(2 * math.pi * (x * self.freqs + self.phases))  # [B, features]
        return self.linear(features)[:, 0]


@register("scm")
class SCMStrategy(ReNoisingGenerator):
    """Continuous-time consistency distillation (sCD; Lu & Song 2024, arXiv 2410.11081).

    Args:
        config: an ``SCMConfig``.
        teacher: the frozen teacher (its PF-ODE is the target).
        student: the initial student (default: a trainable copy of the teacher, or the teacher + LoRA).
    """

    config_class = SCMConfig

    def __init__(
        self,
        config: SCMConfig,
        teacher: Denoiser,
        student: Denoiser | None = None,
        fake_score: Denoiser | None = None,
    ):
        super().__init__(config, teacher)
        if config.dmd_weight and fake_score is None:
            fake_score = teacher.trainable_copy()
        self.fake_score = fake_score if config.dmd_weight else None
        self.student = self.initial_student(student)
        self.weighting = LogVarianceWeighting() if config.adaptive_weighting else None
        self.trig = TrigFlow(teacher.schedule, config.sigma_d)
        self.times = input_grid(teacher.schedule, config.generator_steps, config.init_timestep)
        self.t_min = float(teacher.schedule.index_time(0)) if teacher.schedule.kind == "discrete" else 1e-4
        self.t_max = float(self.trig.t_of_s(math.atan(MAX_NOISE_RATIO / config.sigma_d)))

    def trainable(self) -> dict[str, nn.Module]:
        extra = {"weighting": self.weighting} if self.weighting is not None else {}
        if self.fake_score is not None:
            extra["fake_score"] = self.fake_score
        return {"student": self.student, **extra}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        extra = {"weighting": self.adamw(self.weighting)} if self.weighting is not None else {}
        if self.fake_score is not None:
            extra["fake_score"] = self.adamw(self.fake_score, self.config.fake_lr)
        return {"student": self.adamw(self.student), **extra}

    def draw_times(self, b: int, like: Tensor, p_mean: float | None = None, p_std: float | None = None) -> Tensor:
        """``[B]`` teacher times from sCM's proposal ``tan(s) = exp(tau) / sigma_d``, ``tau ~ N(p_mean, p_std^2)``
        (``tau = log(sigma / alpha)``; the config's ``p_mean`` and ``p_std`` unless given)."""
        cfg = self.config
        p_mean, p_std = cfg.p_mean if p_mean is None else p_mean, cfg.p_std if p_std is None else p_std
        tau = p_mean + p_std * torch.randn(b, dtype=torch.float64)
        s = torch.atan(torch.exp(tau) / cfg.sigma_d)
        return self.trig.t_of_s(s).clamp(self.t_min, self.t_max).to(device=like.device, dtype=like.dtype)

    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        cfg = self.config
        if not cfg.dmd_weight:
            return self._scd_losses(batch, step)
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        k = self._draw_step(step)
        x_in = self._simulated_input(torch.randn_like(x0), cond, k)  # DMD2's backward simulation on the export grid
        t_in = self.times[k].to(x0).expand(len(x0))
        train_student = step % cfg.fake_updates_per_generator == 0  # else a fake-score step only (rCM's alternation)
        dmd_on = train_student and step >= cfg.tangent_warmup_steps  # rCM: the DMD term after the tangent warm-up
        out = self._scd_losses(batch, step, (x_in, t_in) if dmd_on else None) if train_student else {}
        if dmd_on:
            x_gen = out.pop("x_gen")
            dm = self._distribution_matching(x_gen, cond)
            out["student"] = out["student"] + cfg.dmd_weight * dm
            out["log/dm"] = dm.detach()
        else:
            with torch.no_grad():
                x_gen = unwrap(self.student)(x_in, t_in, cond)
        out["fake_score"] = self._fake_score_loss(x_gen, cond)
        return out

    def _dmd_times(self, b: int, like: Tensor) -> Tensor:
        return self.draw_times(b, like, self.config.dmd_p_mean, self.config.dmd_p_std)

    def _distribution_matching(self, x_gen: Tensor, cond: Condition | None) -> Tensor:
        """DMD's loss on the student's samples ``x_gen`` (with gradient) at rCM's noise levels: the teacher (guided
        at ``guidance_scale``) as the real score, the fake score as the fake one."""
        t = self._dmd_times(len(x_gen), x_gen)
        x_t = add_noise(x_gen.detach(), torch.randn_like(x_gen), *self.teacher.schedule.alpha_sigma(t))
        with torch.no_grad(), self.teacher_network() as teacher:
            x0_real = teacher(x_t, t, cond, guidance_scale=self.config.guidance_scale)
            x0_fake = unwrap(self.fake_score)(x_t, t, cond)
        return distribution_matching_loss(x_gen, x0_real, x0_fake)

    def _fake_score_loss(self, x_gen: Tensor, cond: Condition | None) -> Tensor:
        """The fake score's denoising loss on the student's samples, at rCM's noise levels."""
        return denoising_loss(self.fake_score, x_gen.detach(), cond, t=self._dmd_times(len(x_gen), x_gen))

    def _scd_losses(
        self, batch: dict[str, Tensor], step: int, generate: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """sCD's losses; with ``generate = (x_in, t_in)`` the student's x0 there rides in the same forward (one
        forward per backward under DDP) and is returned as ``x_gen``."""
        cfg, trig = self.config, self.trig
        x0 = batch["x0"]
        cond = Condition.from_batch(batch)
        t = self.draw_times(len(x0), x0)
        x_s = trig.to_trigflow(add_noise(x0, torch.randn_like(x0), *self.teacher.schedule.alpha_sigma(t)), t)
        with self.teacher_network() as teacher:
            dx_ds = teacher_velocity(trig, teacher, x_s, t, cond, cfg.guidance_scale)
        network = unwrap(self.student)
        # forward-mode AD through the bare module; the finite difference's plain forwards through the wrapper, which
        # gathers sharded (FSDP) parameters
        jvp_network = self.student if cfg.jvp == "finite_difference" else network

        def velocity(x: Tensor, time: Tensor) -> Tensor:
            return trig.network_velocity(jvp_network, network.prediction, x, time, cond)

        f_minus, df_ds = velocity_jvp(velocity, x_s, t, dx_ds, trig.dt_ds(t), cfg.jvp, cfg.jvp_eps)
        warmup = min(1.0, step / cfg.tangent_warmup_steps) if cfg.tangent_warmup_steps else 1.0
        cos_s, sin_s, _ = trig.scales(t)
        g = scm_tangent(x_s, f_minus, df_ds, dx_ds, cos_s, sin_s, cfg.sigma_d, warmup, cfg.tangent_norm_c)
        target = (f_minus + g).detach()
        logs = {"log/tangent_warmup": torch.tensor(warmup), "log/tangent_norm": g.flatten(1).norm(dim=1).mean()}
        if generate is None:
            f_theta = trig.network_velocity(self.student, network.prediction, x_s, t, cond)
        else:
            f_theta, logs["x_gen"] = self._velocity_and_sample(x_s, t, cond, *generate)
        error = (f_theta.float() - target.float()).square().flatten(1).mean(1)  # [B]: ||.||^2 / D
        if self.weighting is None:
            return {"student": error.mean(), **logs}
        w = self.weighting(torch.log(cfg.sigma_d * sin_s / cos_s))
        return {
            "student": (torch.exp(w.detach()) * error).mean(),
            "weighting": (torch.exp(w) * error.detach() - w).mean(),
            **logs,
        }

    def _velocity_and_sample(
        self, x_s: Tensor, t: Tensor, cond: Condition | None, x_in: Tensor, t_in: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The student's TrigFlow velocity at ``(x_s, t)`` and its x0 at ``(x_in, t_in)`` from one forward."""
        network, b = unwrap(self.student), len(x_s)
        schedule, kind = network.schedule, network.prediction
        x_t = x_s / _bcast(self.trig.scales(t)[2], x_s)
        conds = None if cond is None else cond.cat(cond)
        out = self.student(torch.cat([x_t, x_in]), torch.cat([t, t_in]), conds, kind=kind)
        x0, eps = split(out[:b], kind, x_t, *schedule.alpha_sigma(t))
        x_gen = split(out[b:], kind, x_in, *schedule.alpha_sigma(t_in))[0]
        return self.trig.velocity(x0, eps, t), x_gen

    def export_spec(self, step: int) -> ExportSpec:
        cfg = self.config
        spec = super().export_spec(step)
        spec.lora_method = "sCM"
        rcm = (
            f"; rCM: DMD term weight {cfg.dmd_weight:g} with a fake score, {cfg.fake_updates_per_generator} fake-score "
            "updates per student update"
            if cfg.dmd_weight
            else ""
        )
        spec.details = (
            f"Trained {step} optimizer steps (sigma_d = {cfg.sigma_d}, tau ~ N({cfg.p_mean}, {cfg.p_std}^2), tangent "
            f"warm-up {cfg.tangent_warmup_steps} steps, JVP: {cfg.jvp}{rcm}); teacher guidance {cfg.guidance_scale}, "
            "baked in."
        )
        if cfg.dmd_weight:
            spec.method = "rCM: sCD + DMD (Zheng et al. 2025, arXiv 2510.08431)"
        return spec
