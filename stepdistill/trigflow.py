"""TrigFlow (Lu & Song 2024, sCM, arXiv 2410.11081, Sec. 2-3) as a view of any supported teacher, and the JVP of a
denoiser along its probability-flow ODE.

TrigFlow writes the forward process as ``x_s = cos(s) x0 + sin(s) sigma_d eps`` for ``s`` in [0, pi/2] and a network
``F`` whose PF-ODE is ``dx_s/ds = sigma_d F(x_s, s)``; its consistency function is
``f(x_s, s) = cos(s) x_s - sin(s) sigma_d F(x_s, s)``. Every schedule here (``x_t = alpha x0 + sigma eps``: discrete
VP, cosine VP, rectified flow) is TrigFlow after a change of time and a rescaling of the input, exactly:

    tan(s) = sigma_t / (sigma_d alpha_t),   x_s = c_t x_t,   c_t = 1 / sqrt(alpha_t^2 + sigma_t^2 / sigma_d^2)

(so ``cos(s) = c alpha``, ``sin(s) = c sigma / sigma_d``), and ``F = cos(s) eps - sin(s) x0 / sigma_d`` for the
network's own ``(x0, eps)`` at ``(x_t, t)``. For a VP teacher with ``sigma_d = 1`` this is ``x_s = x_t`` and ``F`` is
its v-prediction. The consistency function is then the network's own x0 prediction, so a TrigFlow student keeps the
teacher's parametrisation, and it is sampled and exported like any x0-predicting generator.

Derivatives along ``s`` are taken in the teacher's own time: for ``G(x, t) = F(x, s(t))``,
``dF/ds = dG/dx . dx/ds + dG/dt . dt/ds``, where ``dt/ds`` comes from the schedule (``dt_ds``), so the inverse map
``s -> t`` is never differentiated. The JVP is forward-mode AD (``torch.func.jvp``) with PyTorch's math attention
kernel, the one with forward-mode AD, or a central finite difference for fused kernels and sharded networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .denoiser import Condition, Denoiser
from .schedules import Schedule, _bcast, split

JVPMethod = Literal["forward", "finite_difference"]
JVP_METHODS = ("forward", "finite_difference")


@dataclass(frozen=True)
class TrigFlow:
    """The TrigFlow view of ``schedule`` with data scale ``sigma_d`` (sCM: 0.5 for pixels in [-1, 1])."""

    schedule: Schedule
    sigma_d: float = 0.5

    def __post_init__(self):
        if not self.sigma_d > 0:
            raise ValueError(f"TrigFlow's sigma_d must be positive, got {self.sigma_d}.")

    # ------------------------------------------------------------------------------------------- times
    def scales(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(cos s, sin s, c)`` at the teacher's times ``t`` ``[B]``: ``x_s = c x_t``; in ``t``'s dtype, smooth in
        ``t`` (forward-mode AD passes through)."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        c = torch.rsqrt(alpha * alpha + (sigma / self.sigma_d) ** 2)
        return c * alpha, c * sigma / self.sigma_d, c

    def s_of_t(self, t: Tensor | float) -> Tensor:
        """TrigFlow time ``s = atan(sigma_t / (sigma_d alpha_t))`` of the teacher's ``t`` (float64 inside)."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        return torch.atan2(sigma, self.sigma_d * alpha).to(dtype)

    def t_of_s(self, s: Tensor | float) -> Tensor:
        """The teacher's time ``t`` in [0, 1] at TrigFlow time ``s`` (the inverse of ``s_of_t``; exact for the flow
        and cosine schedules, and for discrete ones the inverse of their piecewise-linear ``alpha_bar``). A time
        beyond the schedule's end is clamped to it."""
        s = torch.as_tensor(s)
        dtype = s.dtype if s.is_floating_point() else torch.get_default_dtype()
        ratio = self.sigma_d * torch.tan(s.to(torch.float64).clamp(0.0, math.pi / 2))  # sigma_t / alpha_t
        sched = self.schedule
        if sched.kind == "flow":
            t = ratio / (1.0 + ratio)
        elif sched.kind == "cosine":
            b = math.atan(math.exp(-0.5 * sched.logsnr_max))
            a = math.atan(math.exp(-0.5 * sched.logsnr_min)) - b
            t = (torch.atan(ratio) - b) / a
        else:
            alpha_bar = 1.0 / (1.0 + ratio * ratio)  # the alpha_bar at which sigma / alpha = ratio
            padded = torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod.to(torch.float64)])
            # padded is non-increasing: count the grid points above the target to find its segment
            hi = torch.searchsorted(-padded, -alpha_bar.reshape(-1), right=False).clamp(1, len(padded) - 1)
            lo_v, hi_v = padded[hi - 1], padded[hi]
            frac = ((lo_v - alpha_bar.reshape(-1)) / (lo_v - hi_v).clamp_min(1e-300)).clamp(0.0, 1.0)
            t = ((hi - 1 + frac) / sched.num_train_timesteps).reshape(alpha_bar.shape)
        return t.clamp(0.0, 1.0).to(dtype)

    def dt_ds(self, t: Tensor) -> Tensor:
        """``dt/ds`` at the teacher's times ``t`` ``[B]`` (from ``ds/dt``, by forward-mode AD through the
        schedule in float64), in ``t``'s dtype."""
        t64 = t.detach().to(torch.float64)
        _, ds_dt = torch.func.jvp(self.s_of_t, (t64,), (torch.ones_like(t64),))
        return (1.0 / ds_dt).to(t.dtype)

    # -------------------------------------------------------------------------------------- quantities
    def to_trigflow(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``x_s = c_t x_t`` ``[B, ...]``."""
        return _bcast(self.scales(t)[2], x_t) * x_t

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """TrigFlow's ``F = cos(s) eps - sin(s) x0 / sigma_d`` (``dx_s/ds = sigma_d F``) ``[B, ...]``."""
        cos_s, sin_s, _ = self.scales(t)
        return _bcast(cos_s, x0) * eps - _bcast(sin_s, x0) * x0 / self.sigma_d

    def consistency(self, x_s: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """``f(x_s, s) = cos(s) x_s - sin(s) sigma_d F``: the x0 estimate ``[B, ...]``."""
        cos_s, sin_s, _ = self.scales(t)
        return _bcast(cos_s, x_s) * x_s - _bcast(sin_s, x_s) * self.sigma_d * velocity

    def network_velocity(
        self,
        network: Callable[..., Tensor],
        prediction: str,
        x_s: Tensor,
        t: Tensor,
        cond: Condition | None,
        **kwargs,
    ) -> Tensor:
        """``F`` of a denoiser at ``(x_s, t)``: ``network(x_t, t, cond, kind=prediction, **kwargs)`` must return the
        denoiser's native output (a ``Denoiser`` or its distributed wrapper), ``prediction`` its kind."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        x_t = x_s / _bcast(self.scales(t)[2], x_s)
        out = network(x_t, t, cond, kind=prediction, **kwargs)
        return self.velocity(*split(out, prediction, x_t, alpha, sigma), t)


@contextmanager
def forward_ad_attention():
    """Context: PyTorch's scaled-dot-product attention on its math kernel, the one with forward-mode AD (the fused
    CPU flash kernel and the CUDA flash / memory-efficient kernels have none)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def velocity_jvp(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    dx: Tensor,
    dt: Tensor,
    method: JVPMethod = "forward",
    eps: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """``(fn(x, t), d fn(x, t) . (dx, dt))``: a network's output and its directional derivative, no gradient.

    Args:
        fn: ``(x [B, ...], t [B]) -> [B, ...]``.
        x, t: the point; dx ``[B, ...]``, dt ``[B]``: the direction (``dx/ds`` and ``dt/ds`` for a derivative in s).
        method: ``"forward"`` (``torch.func.jvp``, exact) or ``"finite_difference"`` (central difference with step
            ``eps`` along the direction, two more forward passes, in ``x``'s dtype).
        eps: the finite difference's step in the direction's parameter (``s`` for ``(dx/ds, dt/ds)``).
    """
    if method == "forward":
        with torch.no_grad(), forward_ad_attention():
            return torch.func.jvp(fn, (x, t), (dx, dt))
    if method != "finite_difference":
        raise ValueError(f"Unknown JVP method {method!r}; expected one of {JVP_METHODS}.")
    with torch.no_grad():
        plus, minus = fn(x + eps * dx, t + eps * dt), fn(x - eps * dx, t - eps * dt)
        return fn(x, t), (plus - minus) / (2 * eps)


def teacher_velocity(
    trig: TrigFlow,
    teacher: Denoiser,
    x_s: Tensor,
    t: Tensor,
    cond: Condition | None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """The teacher's PF-ODE in TrigFlow units, ``dx_s/ds = sigma_d F_teacher(x_s, s)`` ``[B, ...]``, with its
    classifier-free guidance."""
    with torch.no_grad():
        velocity = trig.network_velocity(teacher, teacher.prediction, x_s, t, cond, guidance_scale=guidance_scale)
        return trig.sigma_d * velocity


def scm_tangent(
    x_s: Tensor,
    velocity: Tensor,
    velocity_ds: Tensor,
    dx_ds: Tensor,
    cos_s: Tensor,
    sin_s: Tensor,
    sigma_d: float,
    warmup: float = 1.0,
    norm_c: float = 0.1,
) -> Tensor:
    """sCM's normalised tangent ``g / (||g|| + c)`` ``[B, ...]`` (Eq. 8 and Sec. 4.2 of Lu & Song 2024, Algorithm 1):

        g = -cos^2(s) (sigma_d F - dx/ds) - r cos(s) sin(s) (x_s + sigma_d dF/ds),

    ``cos(s) df/ds`` of the consistency function ``f = cos(s) x_s - sin(s) sigma_d F`` along the teacher's PF-ODE, with
    the second term ramped in by the tangent warm-up ``r`` in [0, 1]; the norm is per sample over all dimensions.

    Args:
        x_s, velocity (``F``), velocity_ds (``dF/ds``), dx_ds (the teacher's ``dx_s/ds``): ``[B, ...]``;
        cos_s, sin_s: ``[B]``; sigma_d: TrigFlow's data scale; warmup: ``r``; norm_c: ``c`` (0 skips the normalisation).
    """
    cos_s, sin_s = _bcast(cos_s, x_s), _bcast(sin_s, x_s)
    g = -cos_s * cos_s * (sigma_d * velocity - dx_ds) - warmup * cos_s * sin_s * (x_s + sigma_d * velocity_ds)
    if norm_c > 0:
        g = g / _bcast(g.flatten(1).norm(dim=1) + norm_c, g)
    return g
