"""Noise schedules, prediction parameterisations and deterministic samplers steps.

Every forward process here is written ``x_t = alpha(t) * x0 + sigma(t) * eps`` with a continuous time
``t`` in [0, 1] (t = 0 clean, t = 1 noisiest). Three families are supported:

* ``discrete``: a discrete VP schedule read from a diffusers scheduler config (``alphas_cumprod``).
  Training index ``i`` in ``0..T-1`` sits at ``t = (i + 1) / T``, so ``t = 0`` is the clean endpoint
  (``alpha = 1``, diffusers' ``set_alpha_to_one``) and ``t = 1`` is the last training timestep.
  Between grid points ``alpha_bar`` is interpolated linearly in the index.
* ``cosine``: the continuous cosine VP schedule with truncated log-SNR, Sec. 2 of Salimans & Ho 2022
  (arXiv 2202.00512): ``logsnr(t) = -2 log tan(a t + b)`` in ``[logsnr_min, logsnr_max]``.
* ``flow``: rectified flow / flow matching, ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2022,
  arXiv 2209.03003; Esser et al. 2024 SD3).

Prediction kinds (``Prediction``) and their definitions for any ``(alpha, sigma)``:

* ``x0``: the clean sample.
* ``eps``: the noise.
* ``v``: ``alpha * eps - sigma * x0`` (Sec. 4 and App. D of Salimans & Ho 2022).
* ``flow``: the rectified-flow velocity ``eps - x0``. For the flow schedule this is ``dx_t/dt``; for
  any other schedule it is the velocity of the same process rescaled to ``alpha + sigma = 1``.

Conversions always go through the pair ``(x0, eps)`` (``split`` then ``combine``), so every kind
converts to every other kind with one formula each way.

Glossary: ``x_t`` noisy sample; ``x0`` clean sample; ``eps`` Gaussian noise; ``alpha``/``sigma``
signal and noise scales at ``t``; ``s`` an earlier (less noisy) time; ``logsnr = log(alpha^2/sigma^2)``;
``T`` the number of training timesteps of a discrete schedule.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch
from torch import Tensor

Prediction = Literal["x0", "eps", "v", "flow"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
ScheduleKind = Literal["discrete", "cosine", "flow"]
Spacing = Literal["trailing", "leading", "linspace"]

# diffusers' names for the prediction kinds, mapped to ours.
_DIFFUSERS_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}


def check_prediction(kind: str) -> Prediction:
    """Return ``kind`` as a ``Prediction``, accepting diffusers' names; raise ``ValueError`` otherwise."""
    kind = _DIFFUSERS_PREDICTION.get(kind, kind)
    if kind not in PREDICTIONS:
        raise ValueError(
            f"Unknown prediction type {kind!r}: expected one of {PREDICTIONS} "
            f"or diffusers' {tuple(_DIFFUSERS_PREDICTION)}."
        )
    return kind  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Schedule:
    """A forward process ``x_t = alpha(t) x0 + sigma(t) eps`` over continuous ``t`` in [0, 1].

    Build one with ``Schedule.discrete``, ``Schedule.from_scheduler_config``, ``Schedule.cosine`` or
    ``Schedule.flow`` rather than calling the constructor.

    Attributes:
        kind: ``"discrete"``, ``"cosine"`` or ``"flow"``.
        num_train_timesteps: ``T``; for continuous schedules, the scale of the backbone's timestep input.
        alphas_cumprod: ``[T]`` float64, discrete schedules only.
        logsnr_min: lower log-SNR bound of the cosine schedule.
        logsnr_max: upper log-SNR bound of the cosine schedule.
        scheduler_config: the diffusers scheduler config it was read from, if any (reused on export).
    """

    kind: ScheduleKind
    num_train_timesteps: int = 1000
    alphas_cumprod: Tensor | None = field(default=None, repr=False)
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    scheduler_config: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in get_args(ScheduleKind):
            raise ValueError(f"Schedule kind must be one of {get_args(ScheduleKind)}, got {self.kind!r}.")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}.")
        if self.kind == "discrete":
            ac = self.alphas_cumprod
            if ac is None or ac.ndim != 1 or len(ac) != self.num_train_timesteps:
                raise ValueError("A discrete schedule needs alphas_cumprod of length num_train_timesteps.")
            if not torch.isfinite(ac).all() or (ac < 0).any() or (ac > 1).any() or (ac[1:] > ac[:-1]).any():
                raise ValueError("alphas_cumprod must be finite, in [0, 1] and non-increasing.")
        if self.kind == "cosine" and not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max}).")

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def discrete(cls, alphas_cumprod: Tensor) -> Schedule:
        """A discrete VP schedule from ``alphas_cumprod`` ``[T]``."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        return cls(kind="discrete", num_train_timesteps=len(ac), alphas_cumprod=ac)

    @classmethod
    def cosine(cls, logsnr_min: float = -20.0, logsnr_max: float = 20.0, num_train_timesteps: int = 1000):
        """The continuous cosine VP schedule of Salimans & Ho 2022, log-SNR truncated to the bounds."""
        return cls(
            kind="cosine", num_train_timesteps=num_train_timesteps, logsnr_min=logsnr_min, logsnr_max=logsnr_max
        )

    @classmethod
    def flow(cls, num_train_timesteps: int = 1000) -> Schedule:
        """Rectified flow: ``alpha = 1 - t``, ``sigma = t``."""
        return cls(kind="flow", num_train_timesteps=num_train_timesteps)

    @classmethod
    def from_scheduler_config(cls, config: dict | str | os.PathLike) -> Schedule:
        """Read a diffusers scheduler config (a dict, a ``scheduler_config.json``, or its folder).

        Flow-matching schedulers (class name containing ``FlowMatch``) give the flow schedule; every other
        scheduler is treated as discrete VP and its ``alphas_cumprod`` computed by diffusers' own
        ``DDPMScheduler`` from the config's betas (so ``trained_betas`` and ``rescale_betas_zero_snr``
        are honoured).
        """
        config = load_scheduler_config(config)
        name = config.get("_class_name", "")
        if "FlowMatch" in name:
            return replace(cls.flow(int(config.get("num_train_timesteps", 1000))), scheduler_config=config)
        from diffusers import DDPMScheduler

        known = set(inspect.signature(DDPMScheduler.__init__).parameters)
        kwargs = {k: v for k, v in config.items() if k in known}
        try:
            scheduler = DDPMScheduler(**kwargs)
        except (NotImplementedError, ValueError, TypeError) as err:
            raise ValueError(f"Bad scheduler config ({name or 'no _class_name'}): {err}") from err
        return replace(cls.discrete(scheduler.alphas_cumprod), scheduler_config=config)

    # ------------------------------------------------------------------------------------------- values
    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Signal and noise scales at ``t`` (any shape); returned in ``t``'s floating dtype."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        t64 = t.to(torch.float64)
        if self.kind == "flow":
            alpha, sigma = 1.0 - t64, t64
        elif self.kind == "cosine":
            logsnr = self.log_snr(t64)
            alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
        else:
            alpha_bar = self._alpha_bar(t64)
            alpha, sigma = alpha_bar.sqrt(), (1.0 - alpha_bar).clamp_min(0).sqrt()
        return alpha.to(dtype), sigma.to(dtype)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """``log(alpha^2 / sigma^2)`` at ``t``; ``+inf`` at a clean endpoint."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        t64 = t.to(torch.float64)
        if self.kind == "cosine":
            b = math.atan(math.exp(-0.5 * self.logsnr_max))
            a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
            return (-2.0 * torch.log(torch.tan(a * t64 + b))).to(dtype)
        alpha, sigma = self.alpha_sigma(t64)
        return (2.0 * (alpha.log() - sigma.log())).to(dtype)

    def _alpha_bar(self, t: Tensor) -> Tensor:
        ac = self.alphas_cumprod.to(t.device)
        padded = torch.cat([ac.new_ones(1), ac])  # index 0 is the clean endpoint t = 0
        pos = t.clamp(0.0, 1.0) * self.num_train_timesteps
        lo = pos.floor().long().clamp(max=self.num_train_timesteps - 1)
        frac = pos - lo
        return padded[lo] * (1 - frac) + padded[lo + 1] * frac

    def index_time(self, index: Tensor | int) -> Tensor | float:
        """The time ``t = (index + 1) / T`` of training index ``index`` (``0..T-1``), the one place this library's
        continuous time meets the training grid: index ``T - 1`` is ``t = 1``, and ``t = 0`` (index -1) is the clean
        end. A float tensor keeps its dtype. Inverse: ``time_index``."""
        return (index + 1) / self.num_train_timesteps

    def time_index(self, t: Tensor | float) -> int:
        """The training index ``round(t * T) - 1`` of a time ``t`` on the grid (a scalar): ``index_time``'s inverse."""
        return round(float(t) * self.num_train_timesteps) - 1

    def sample_t(self, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Training times ``[n]``: uniform over the training indices (discrete) or over (0, 1] (continuous)."""
        if self.kind == "discrete":
            index = torch.randint(0, self.num_train_timesteps, (n,), device=device, generator=generator)
            return self.index_time(index.float())
        return 1.0 - torch.rand(n, device=device, generator=generator)  # (0, 1]: never the clean endpoint

    def model_timestep(self, t: Tensor) -> Tensor:
        """The timestep value a diffusers backbone was trained with at ``t``.

        Discrete schedules use the training index ``t * T - 1`` (fractional between grid points);
        continuous ones ``t * T`` (the ``sigma * 1000`` convention of diffusers' flow-matching models).
        """
        if self.kind == "discrete":
            return t * self.num_train_timesteps - 1
        return t * self.num_train_timesteps


def load_scheduler_config(config: dict | str | os.PathLike) -> dict:
    """Return a scheduler config dict from a dict, a JSON file or a folder holding ``scheduler_config.json``."""
    if isinstance(config, dict):
        return dict(config)
    path = os.fspath(config)
    if os.path.isdir(path):
        for candidate in (
            os.path.join(path, "scheduler_config.json"),
            os.path.join(path, "scheduler", "scheduler_config.json"),
        ):
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise FileNotFoundError(f"No scheduler_config.json in {config!r} or its 'scheduler/' subfolder.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Scheduler config {path!r} does not exist.")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"Scheduler config {path!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"Scheduler config {path!r} must hold a JSON object.")
    return data


# ------------------------------------------------------------------------------------------ conversions
def _bcast(scale: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-sample scale ``[B]`` (or scalar) against ``like`` ``[B, ...]``."""
    scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
    return scale.reshape(scale.shape + (1,) * (like.ndim - scale.ndim)) if scale.ndim else scale


def split(pred: Tensor, kind: Prediction, x_t: Tensor, alpha, sigma) -> tuple[Tensor, Tensor]:
    """Recover ``(x0, eps)`` from a prediction of ``kind`` at ``x_t``.

    Args:
        pred: ``[B, ...]`` the model output.
        kind: what ``pred`` is.
        x_t: ``[B, ...]`` the noisy input.
        alpha, sigma: ``[B]`` or scalars, the scales at the input's time.

    Returns:
        ``(x0, eps)``, each shaped like ``x_t``.
    """
    alpha, sigma = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if kind == "x0":
        return pred, (x_t - alpha * pred) / sigma
    if kind == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if kind == "v":
        norm = alpha * alpha + sigma * sigma  # 1 for VP schedules; kept so any (alpha, sigma) works
        return (alpha * x_t - sigma * pred) / norm, (sigma * x_t + alpha * pred) / norm
    if kind == "flow":
        x0 = (x_t - sigma * pred) / (alpha + sigma)
        return x0, x0 + pred
    raise ValueError(f"Unknown prediction kind {kind!r}; expected one of {PREDICTIONS}.")


def combine(x0: Tensor, eps: Tensor, kind: Prediction, alpha, sigma) -> Tensor:
    """Express ``(x0, eps)`` as a prediction of ``kind`` (the inverse of ``split``)."""
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "v":
        return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0
    if kind == "flow":
        return eps - x0
    raise ValueError(f"Unknown prediction kind {kind!r}; expected one of {PREDICTIONS}.")


def convert(pred: Tensor, src: Prediction, dst: Prediction, x_t: Tensor, alpha, sigma) -> Tensor:
    """Convert a prediction from kind ``src`` to kind ``dst`` at ``x_t`` with scales ``alpha, sigma``."""
    if src == dst:
        return pred
    x0, eps = split(pred, src, x_t, alpha, sigma)
    return combine(x0, eps, dst, alpha, sigma)


def add_noise(x0: Tensor, eps: Tensor, alpha, sigma) -> Tensor:
    """``x_t = alpha * x0 + sigma * eps``, with per-sample ``alpha, sigma`` ``[B]``."""
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps


def ddim_step(x0: Tensor, eps: Tensor, alpha_s, sigma_s) -> Tensor:
    """One deterministic DDIM step to time ``s``: re-noise the predicted ``x0`` with the predicted ``eps``.

    Eq. 12 of Song et al. 2021 (DDIM, arXiv 2010.02502) with eta = 0. For the flow schedule this is
    exactly one Euler step ``x_s = x_t + (s - t) (eps - x0)`` of the probability-flow ODE.
    ``alpha_s = 1, sigma_s = 0`` returns ``x0``.
    """
    return add_noise(x0, eps, alpha_s, sigma_s)


def two_step_target(x_t: Tensor, x_end: Tensor, scales_t, scales_end) -> Tensor:
    """The x0-target that makes ONE DDIM step from ``x_t`` at ``t`` land exactly on ``x_end`` at ``t''``.

    Algorithm 2 of Salimans & Ho 2022 (progressive distillation):
    ``x_target = (x_end - (sigma''/sigma) x_t) / (alpha'' - (sigma''/sigma) alpha)``. At a clean end
    (``sigma'' = 0``) it is ``x_end`` itself.

    Args:
        x_t, x_end: ``[B, ...]``; scales_t, scales_end: ``(alpha, sigma)`` pairs of ``[B]`` tensors.
    """
    (alpha, sigma), (alpha_end, sigma_end) = scales_t, scales_end
    ratio = _bcast(sigma_end / sigma, x_t)
    return (x_end - ratio * x_t) / (_bcast(alpha_end, x_t) - ratio * _bcast(alpha, x_t))


def boundary_scalings(
    schedule: Schedule, t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` ``[B]`` of a consistency function ``f = c_skip x_t + c_out x0``.

    LCM's scalings (Eq. 5 of Luo et al. 2023 with the timestep scaling of its code): with
    ``tau = timestep_scaling * timestep``, ``c_skip = sigma_data^2 / (tau^2 + sigma_data^2)`` and
    ``c_out = tau / sqrt(tau^2 + sigma_data^2)``; ``timestep`` is the backbone's value at ``t`` (0 at the clean
    end, where ``f(x) = x``).

    A rectified flow needs none: its ``x0 = x_t - t * flow`` already equals ``x_t`` at ``t = 0``, so its consistency
    function is the network's ``x0`` (``c_skip = 0``, ``c_out = 1``), the parameterisation that diffusers'
    ``FlowMatchEulerDiscreteScheduler`` with ``stochastic_sampling`` samples (x0 at each sigma, re-noised to the
    next). LCM's scalings there would give ``c_skip = 0.25 / 200^2`` one solver step above the clean end, which no
    flow scheduler applies, so the student could not be exported.
    """
    if schedule.kind == "flow":
        return torch.zeros_like(t), torch.ones_like(t)
    tau = schedule.model_timestep(t).clamp_min(0) * timestep_scaling
    norm = tau * tau + sigma_data * sigma_data
    return sigma_data * sigma_data / norm, tau / norm.sqrt()


def lcm_times(schedule: Schedule, num_steps: int, solver_steps: int = 50) -> Tensor:
    """The ``num_steps`` sampling times of a consistency model trained on a ``solver_steps`` grid.

    The same timesteps as diffusers' ``LCMScheduler.set_timesteps(num_steps)`` with
    ``original_inference_steps = solver_steps``: evenly spaced points (floor of a linspace over indices) of
    the solver grid, from the noisiest one down.
    """
    big_t = schedule.num_train_timesteps
    if not 1 <= num_steps <= solver_steps:
        raise ValueError(f"num_steps must be in [1, solver_steps={solver_steps}], got {num_steps}.")
    grid = torch.arange(1, solver_steps + 1, dtype=torch.float64) * (big_t // solver_steps)  # index + 1
    picks = torch.linspace(0, solver_steps, num_steps + 1, dtype=torch.float64)[:-1].floor().long()
    return grid.flip(0)[picks] / big_t


def phase_edges(schedule: Schedule, phases: int) -> Tensor:
    """The ``phases + 1`` increasing segment edges ``[0, e_1, ..., 1]`` of a phased consistency model.

    The edges are the trailing DDIM grid of ``phases`` steps (plus the clean end), so a phased student samples
    with diffusers' ``DDIMScheduler`` (trailing spacing) at exactly its segment tops.
    """
    tops = timestep_grid(schedule, phases, "trailing")
    return torch.cat([torch.zeros(1, dtype=tops.dtype), tops.flip(0)])


def consistency_pairs(schedule: Schedule, solver_steps: int, phases: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """The training points ``(t, s, edge)`` ``[M]`` of (phased) consistency distillation.

    Each segment ``(e_k, e_k+1]`` of ``phase_edges`` is walked down from its top in solver steps of
    ``T // solver_steps`` timesteps; ``t`` is a point, ``s = max(t - step, e_k)`` the point one teacher step
    earlier and ``edge = e_k`` the segment's lower edge, where the consistency function is the identity.
    With ``phases = 1`` these are LCM's skipping-step pairs (``t`` on the grid ``k * skip``, ``s = t - skip``).
    """
    big_t = schedule.num_train_timesteps
    skip = big_t // solver_steps
    if skip < 1:
        raise ValueError(f"solver_steps ({solver_steps}) exceeds the schedule's {big_t} training timesteps.")
    edges = (phase_edges(schedule, phases) * big_t).round().long().tolist()
    rows = []
    for low, top in zip(edges[:-1], edges[1:]):
        rows += [(t, max(t - skip, low), low) for t in range(top, low, -skip)]
    return tuple(torch.tensor(col, dtype=torch.float64) / big_t for col in zip(*rows))


# ------------------------------------------------------------------------------------- timestep grids
def timestep_grid(schedule: Schedule, num_steps: int, spacing: Spacing = "trailing", steps_offset: int = 0) -> Tensor:
    """Decreasing times ``[num_steps]`` in (0, 1] for an N-step sampler; the sampler ends at ``t = 0``.

    The grid is laid on the schedule's ``T`` training indices exactly as diffusers' ``DDIMScheduler``
    lays its ``timestep_spacing`` options (Table 2 of Lin et al. 2024, arXiv 2305.08891), then mapped to
    ``t = (index + 1) / T``. ``"trailing"`` always starts at the noisiest time ``t = 1``; ``"leading"``
    (SD 1.5's default, with ``steps_offset = 1``) does not, which is why few-step samplers want trailing.

    Returns:
        float64 tensor ``[num_steps]``, strictly decreasing.
    """
    big_t = schedule.num_train_timesteps
    if not 1 <= num_steps <= big_t:
        raise ValueError(f"num_steps must be in [1, {big_t}], got {num_steps}.")
    if spacing == "trailing":
        index = torch.arange(big_t, 0, -big_t / num_steps, dtype=torch.float64).round() - 1
    elif spacing == "leading":
        index = (torch.arange(num_steps, dtype=torch.float64) * (big_t // num_steps)).round().flip(0)
        index = index + steps_offset
    elif spacing == "linspace":
        index = torch.linspace(0, big_t - 1, num_steps, dtype=torch.float64).round().flip(0)
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; expected trailing, leading or linspace.")
    if index.max() > big_t - 1 or index.min() < 0:
        raise ValueError(f"steps_offset={steps_offset} pushes the grid outside [0, {big_t - 1}].")
    return schedule.index_time(index)


def karras_sigma(u: Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM noise levels ``(sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`` for ``u`` in [0, 1]
    (Eq. 5 of Karras et al. 2022, arXiv 2206.00364, read from the clean end): u = 0 is ``sigma_min``, 1 ``sigma_max``."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + u.to(torch.float64) * (hi - lo)) ** rho


def time_at_edm_sigma(schedule: Schedule, edm_sigma: Tensor | float) -> Tensor:
    """The time ``t`` (float64, any shape) at which the schedule's ``sigma / alpha`` (EDM's noise level) equals
    ``edm_sigma``, by bisection on that increasing function; levels beyond the schedule's ends map to 0 or 1."""
    target = torch.as_tensor(edm_sigma, dtype=torch.float64)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(60):  # 2^-60: exact to float64 rounding
        mid = (lo + hi) / 2
        alpha, sigma = schedule.alpha_sigma(mid)
        above = sigma > target * alpha
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    return hi
