"""N-step deterministic DDIM sampling with any Denoiser (teacher baselines, evaluation, exported pipelines)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Condition, Denoiser
from .distributed import unwrap
from .schedules import Spacing, add_noise, boundary_scalings, ddim_step, lcm_times, phase_edges, timestep_grid


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Condition | None = None,
    num_steps: int = 50,
    guidance_scale: float = 1.0,
    spacing: Spacing = "trailing",
    clip_x0: float | None = None,
    uncond: Condition | None = None,
    times: Tensor | None = None,
    progress: bool = False,
    end: float = 0.0,
) -> Tensor:
    """Run the deterministic DDIM sampler (eta = 0) from ``noise`` to a clean sample.

    Algorithm: Eq. 12 of Song et al. 2021 (DDIM) on the grid ``timestep_grid(schedule, num_steps, spacing)``,
    ending at ``t = 0`` (``alpha = 1``): the last step returns the predicted ``x0``.

    Args:
        denoiser: any Denoiser (teacher, student or the analytic Gaussian mixture).
        noise: ``[B, C, H, W]`` standard Gaussian noise, the starting point (as in diffusers).
        cond: conditions batched like ``noise``.
        num_steps: number of network evaluations (doubled batch when guided).
        guidance_scale: classifier-free guidance scale ``w`` (1 = unguided).
        spacing: the timestep grid's spacing.
        clip_x0: clip predicted ``x0`` to ``[-clip_x0, clip_x0]``; ``eps`` is then recomputed from the clipped
            ``x0`` so that the step stays on the same line through ``x_t`` (diffusers' DDIM does the same).
        times: an explicit decreasing grid ``[N]`` in (0, 1], overriding ``num_steps``/``spacing``.
        progress: show a progress bar.
        end: the time the last step lands at (0: it returns the predicted ``x0``; the first training index: a
            diffusers scheduler without ``set_alpha_to_one``, such as TCD's last step).

    Returns:
        ``[B, C, H, W]`` samples.
    """
    denoiser = unwrap(denoiser)  # no gradients here: nothing for a distributed wrapper to synchronise
    schedule = denoiser.schedule
    if times is None:
        times = timestep_grid(schedule, num_steps, spacing)
    times = times.to(device=noise.device, dtype=noise.dtype)
    x = noise
    for i in tqdm(range(len(times)), disable=not progress, desc="ddim", leave=False):
        t = times[i].expand(len(x))
        x0, eps = denoiser.split(x, t, cond, guidance_scale, uncond)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            alpha, sigma = schedule.alpha_sigma(times[i])
            if sigma > 0:
                eps = (x - alpha * x0) / sigma
        if i + 1 == len(times) and end == 0:
            return x0
        alpha_s, sigma_s = schedule.alpha_sigma(times[i + 1] if i + 1 < len(times) else times.new_tensor(end))
        x = ddim_step(x0, eps, alpha_s, sigma_s)
    return x


def consistency_function(
    net: Denoiser,
    x_t: Tensor,
    t: Tensor,
    cond: Condition | None = None,
    guidance_scale: float | Tensor = 1.0,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
    edge: Tensor | None = None,
) -> Tensor:
    """The consistency function of ``net`` at ``(x_t, t)`` ``[B]``: its estimate of the ODE solution at ``edge``.

    ``x0_c = c_skip x_t + c_out x0(x_t, t)`` with LCM's boundary scalings (Eq. 5 of Luo et al. 2023); with an
    ``edge`` ``[B]`` above 0 (phased models, Wang et al. 2024 PCM, arXiv 2405.18407), ``x0_c`` and the noise it
    implies are carried to ``edge`` by one DDIM step, which is the identity when ``t = edge``. ``net`` may be a
    distributed wrapper: it is called as given (so the wrapper syncs gradients) and read through ``unwrap``.
    """
    schedule = unwrap(net).schedule
    c_skip, c_out = boundary_scalings(schedule, t, sigma_data, timestep_scaling)
    x0 = c_skip.view(-1, 1, 1, 1) * x_t + c_out.view(-1, 1, 1, 1) * net(x_t, t, cond, guidance_scale=guidance_scale)
    if edge is None:
        return x0
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    eps = (x_t - alpha * x0) / sigma.clamp_min(1e-8)  # multiplied by sigma_edge = 0 when edge = t = 0
    return ddim_step(x0, eps, *schedule.alpha_sigma(edge.to(x_t.dtype)))


@torch.no_grad()
def consistency_sample(
    student: Denoiser,
    noise: Tensor,
    cond: Condition | None = None,
    num_steps: int = 4,
    guidance_scale: float = 1.0,
    solver_steps: int = 50,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
    times: Tensor | None = None,
    generator: torch.Generator | None = None,
    phases: int = 1,
) -> Tensor:
    """Multistep consistency sampling (Algorithm 1 of Song et al. 2023; LCM's multistep sampler).

    At each time: denoise with the consistency function ``f = c_skip x + c_out x0``, then re-noise the
    result to the next time with fresh Gaussian noise. Times default to ``lcm_times`` (those of diffusers'
    ``LCMScheduler``). A phased student (``phases > 1``) instead jumps deterministically from each segment
    top to the segment's lower edge, ``phases`` steps in all (diffusers' trailing DDIM with the same times).

    Args:
        student: the consistency model (its ``x0`` prediction is wrapped by the boundary scalings).
        noise: ``[B, C, H, W]`` initial noise.
        generator: the ``torch.Generator`` that draws the re-noising noise (on ``noise``'s device).
        phases: the student's number of segments; ``num_steps`` must equal it when above 1.
    """
    schedule = unwrap(student).schedule
    scalings = {"guidance_scale": guidance_scale, "sigma_data": sigma_data, "timestep_scaling": timestep_scaling}
    if phases > 1:
        if num_steps != phases:
            raise ValueError(f"A {phases}-phase consistency model samples in exactly {phases} steps, not {num_steps}.")
        edges = phase_edges(schedule, phases).flip(0).to(device=noise.device, dtype=noise.dtype)
        x = noise
        for top, low in zip(edges[:-1], edges[1:]):
            x = consistency_function(student, x, top.expand(len(x)), cond, edge=low.expand(len(x)), **scalings)
        return x
    times = lcm_times(schedule, num_steps, solver_steps) if times is None else times

    def denoise(x, t):
        return consistency_function(student, x, t, cond, **scalings)

    return renoising_loop(denoise, noise, times, schedule, generator)


@torch.no_grad()
def multistep_sample(
    student: Denoiser,
    noise: Tensor,
    cond: Condition | None,
    times: Tensor,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    until: int | None = None,
) -> Tensor:
    """A few-step generator's sampler: predict ``x0`` at each of ``times``, re-noise it to the next time with fresh
    noise (DMD2's multistep sampler, Sec. 4.4 of Yin et al. 2024; LCM's sampler without boundary scalings).

    Args:
        student: the few-step generator network (its x0 prediction is used as it is).
        noise: ``[B, C, H, W]`` initial noise, the input at ``times[0]``.
        times: decreasing ``[K]`` student times; the last prediction is returned.
        generator: the ``torch.Generator`` that draws the re-noising noise (on ``noise``'s device).
        until: stop before step ``until`` and return its noisy input ``x_{t_until}``: DMD2's backward simulation,
            which trains step ``until`` on inputs made by the generator's own earlier steps.
    """
    net = unwrap(student)

    def denoise(x, t):
        return net(x, t, cond, guidance_scale=guidance_scale)

    return renoising_loop(denoise, noise, times, net.schedule, generator, until)


def renoising_loop(
    denoise, noise: Tensor, times: Tensor, schedule, generator=None, until: int | None = None
) -> Tensor:
    """Denoise at each of ``times`` with ``denoise(x, t) -> x0`` and re-noise the result to the next time with
    fresh noise from ``generator``; the last denoised sample is returned (or, with ``until``, the noisy input of
    step ``until``)."""
    times = times.to(device=noise.device, dtype=noise.dtype)
    x = noise
    for i in range(len(times) if until is None else until):
        x0 = denoise(x, times[i].expand(len(x)))
        if i + 1 == len(times):
            return x0
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = add_noise(x0, z, *schedule.alpha_sigma(times[i + 1]))
    return x
