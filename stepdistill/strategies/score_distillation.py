"""What the score-distillation methods (DMD/DMD2, SiD) share: a generator and a fake score built from the teacher
(full copies or LoRA adapters), the teacher as the real score, the generator's few-step sampler and its export (the
last in ``ReNoisingGenerator``, which LADD's generator stands on too).

The generator maps noise at ``times[0]`` to an image in ``len(times)`` steps; between steps its x0 is re-noised
with fresh noise to the next time (``sampling.multistep_sample``), which diffusers' LCMScheduler reproduces when its
boundary scalings are made the identity (``scheduler_spec``). Subclasses set ``self.times`` and write ``losses``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..backbones import adapter_for
from ..denoiser import Condition, Denoiser
from ..export import IDENTITY_TIMESTEP_SCALING
from ..sampling import multistep_sample, renoising_loop
from ..schedules import karras_sigma, time_at_edm_sigma, timestep_grid
from .base import Strategy, unwrap


class ReNoisingGenerator(Strategy):
    """Base of the strategies whose student is a one- or few-step generator that re-noises between its steps (DMD,
    SiD, LADD; not registered itself): the step trained at each optimizer step, backward simulation of a step's
    input, the sampler and its export. Subclasses set ``self.times``."""

    times: Tensor  # [K] the generator's decreasing sampling times, set by the subclass

    def _draw_step(self, step: int) -> int:
        """The generator step trained at optimizer step ``step``: uniform, the same on every rank."""
        return int(torch.randint(len(self.times), (1,), generator=torch.Generator().manual_seed(step)))

    def _simulated_input(self, noise: Tensor, cond: Condition | None, k: int) -> Tensor:
        """Step ``k``'s input made by the generator's own first ``k`` steps from ``noise`` (no gradient): DMD2's
        backward simulation, few-step SiD's detached earlier steps."""
        if k == 0:
            return noise
        return multistep_sample(self.student, noise, cond, self.times, until=k)

    def scheduler_spec(self) -> dict:
        """``export.configure_scheduler`` arguments reproducing ``sample``. From the top time: diffusers' LCMScheduler
        at the generator's times (its ``original_inference_steps`` grid is exactly the trailing grid), with the
        boundary scalings made the identity (``timestep_scaling`` so large that ``c_skip < 1e-13``), so each step
        takes the generator's x0 and re-noises it with fresh noise. From a lower input time (``generator_times``):
        one step is diffusers' DDIMScheduler with ``leading`` spacing offset to that timestep (one DDIM step from
        there to the clean end returns the x0); several steps are the same LCMScheduler with a grid of every index
        up to the input time, which ``num_inference_steps=K`` subsamples to exactly the generator's times."""
        big_t = self.teacher.schedule.num_train_timesteps
        top = self.teacher.schedule.time_index(self.times[0])
        if len(self.times) == 1 and top < big_t - 1:
            options = {"timestep_spacing": "leading", "steps_offset": top}
            return {"scheduler_class": "DDIMScheduler", "times": self.times, "scheduler_options": options}
        return {
            "scheduler_class": "LCMScheduler",
            "times": self.times,
            "scheduler_options": {
                "original_inference_steps": len(self.times) if top == big_t - 1 else top + 1,
                "timestep_scaling": IDENTITY_TIMESTEP_SCALING,
            },
        }

    @torch.no_grad()
    def sample(
        self,
        noise: Tensor,
        cond: Condition | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples of the generator's few-step sampler; the teacher's guidance is baked in, so a ``guidance_scale``
        other than 1 is refused."""
        if guidance_scale not in (None, 1, 1.0):
            raise ValueError(
                f"A distilled generator has its guidance baked in; it samples at guidance 1, not {guidance_scale}."
            )
        return self.generate(noise, cond, generator)

    def generate(self, noise: Tensor, cond: Condition | None, generator: torch.Generator | None) -> Tensor:
        """The sampler behind ``sample``: ``multistep_sample`` at ``self.times`` (a subclass with another sampler,
        MeanFlow's deterministic jumps, overrides this)."""
        return multistep_sample(self.student, noise, cond, self.times, generator=generator)


class ScoreDistillationStrategy(ReNoisingGenerator):
    """Base of DMD and SiD (not registered itself).

    The config is a ``ScoreDistillationOptions``.

    Args:
        config: the method's options.
        teacher: the frozen teacher (the real score).
        student: the initial generator (default: a copy of the teacher, or the teacher + LoRA).
        fake_score: the initial fake score (default: a copy of the teacher, + LoRA with ``fake_lora_rank``).
    """

    def __init__(self, config, teacher: Denoiser, student: Denoiser | None = None, fake_score: Denoiser | None = None):
        super().__init__(config, teacher)
        if fake_score is None:  # copied before the teacher gets any adapter
            fake_score = teacher.trainable_copy()
            if config.fake_lora_rank:
                fake_score.add_lora(config.fake_lora_rank, config.lora_alpha, config.lora_target_modules)
        self.student, self.fake_score = self.initial_student(student), fake_score

    def check_compatible(self) -> None:
        if self.config.real_guidance_scale != 1 and not self.teacher.can_guide:
            raise ValueError("real_guidance_scale != 1 needs a teacher with a null class or empty-prompt embeddings.")

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student, "fake_score": self.fake_score}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.adamw(self.student), "fake_score": self.adamw(self.fake_score, self.config.fake_lr)}

    def _fake_score_bottleneck(self, fix: str) -> int:
        """The channels of the fake score's bottleneck features (a UNet's mid block), which DMD2's GAN head and
        SiDA's critic read; a ValueError ending in ``fix`` when it has none."""
        backbone = self.fake_score.backbone
        if backbone is None:
            raise ValueError(
                f"The GAN term reads the fake score's bottleneck features, and it has no backbone: {fix}."
            )
        adapter = adapter_for(backbone)
        if adapter.feature_module(backbone) is None:
            raise ValueError(
                f"The GAN term reads the fake score's bottleneck features, and this {type(backbone).__name__} has no "
                f"middle block: {fix}."
            )
        return adapter.feature_channels(backbone)

    def _real_x0(self, x_t: Tensor, t: Tensor, cond: Condition | None) -> Tensor:
        """The real score's x0 (guided at ``real_guidance_scale``); for a LoRA generator its base network with the
        adapters off. Gradient reaches ``x_t`` if it has one (SiD), never the teacher's weights."""
        w = self.config.real_guidance_scale if cond is not None else 1.0
        with self.teacher_network() as teacher:
            return teacher(x_t, t, cond, guidance_scale=w)

    def student_samples(
        self,
        noise: Tensor,
        cond: Condition | None,
        step: int,
        with_grad: bool,
        make_input: Callable[[Tensor, int], Tensor] | None = None,
        forward: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The generator's samples ``[B, ...]`` at optimizer step ``step``, what both DMD's and SiD's losses are
        computed on: with ``unroll`` the whole K-step sampler's output, else the output of one step ``k`` (drawn per
        optimizer step, the same on every rank) from its input ``make_input(noise, k)`` (default: the generator's own
        first k steps from ``noise``). ``with_grad``: through the distributed wrapper (the generator's loss; one
        step's forward is ``forward(x_in, t_in)`` when given), else without gradient (the fake score's data)."""
        if self.config.unroll:
            if with_grad:
                return self._unrolled_sample(noise, cond)
            with torch.no_grad():
                return multistep_sample(self.student, noise, cond, self.times)
        k = self._draw_step(step)
        x_in = make_input(noise, k) if make_input is not None else self._simulated_input(noise, cond, k)
        t_in = self.times[k].to(noise).expand(len(noise))
        if with_grad:
            return forward(x_in, t_in) if forward is not None else self.student(x_in, t_in, cond)
        with torch.no_grad():
            return unwrap(self.student)(x_in, t_in, cond)

    def _unrolled_sample(self, noise: Tensor, cond: Condition | None) -> Tensor:
        """The K-step sampler with gradient through every step and re-noising (the ``unroll`` option of SiD and
        DMD): the generator trained as one network from noise to its last step's output. The earlier steps call the
        bare generator and the last one its distributed wrapper: each weight's gradient is the sum over all K calls,
        reduced once when backward reaches it."""
        last = len(self.times) - 1
        x_in = renoising_loop(
            lambda x, t: unwrap(self.student)(x, t, cond), noise, self.times, self.teacher.schedule, until=last
        )
        return self.student(x_in, self.times[last].to(noise).expand(len(noise)), cond)

    def _uniform_index_times(self, b: int, like: Tensor, t_range: list[float]) -> Tensor:
        """``uniform_index_times`` on the teacher's schedule."""
        return uniform_index_times(self.teacher.schedule, b, like, t_range)

    def _loss_times(self, b: int, like: Tensor, sampling: str, t_range: list[float]) -> Tensor:
        """``[B]`` noise levels of the score losses: uniform training indices in ``t_range`` (``"uniform"``), or EDM's
        rho-7 Karras ramp over ``t_range`` mapped onto the schedule (``"karras"``: SiD, and DMD2's ImageNet-64 runs,
        whose 1,000 indices are that ramp on an EDM teacher), never below the first training index."""
        if sampling == "uniform":
            return self._uniform_index_times(b, like, t_range)
        schedule, (lo, hi) = self.teacher.schedule, t_range
        u = lo + (hi - lo) * torch.rand(b, device=like.device, dtype=torch.float64)
        t = time_at_edm_sigma(schedule, karras_sigma(u))
        return t.clamp(1 / schedule.num_train_timesteps, 1.0).to(like.dtype)


def input_grid(schedule, steps: int, init_timestep: int | None) -> Tensor:
    """``[steps]`` times of a generator: the trailing grid from the top time (999/749/499/249 for 4), or with
    ``init_timestep`` the ``generator_times`` below it."""
    if init_timestep is None:
        return timestep_grid(schedule, steps, "trailing")
    return generator_times(schedule, steps, init_timestep)


def generator_times(schedule, steps: int, top: int) -> Tensor:
    """``[steps]`` input times of a generator whose first step starts at training index ``top``: the indices
    ``top - floor(i (top + 1) / steps)``, as ``t = (index + 1) / T``. That is the grid of diffusers' LCMScheduler with
    ``original_inference_steps = top + 1`` (``ReNoisingGenerator.scheduler_spec``): the trailing grid
    999/749/499/249 from the top index, 755/566/377/188 from index 755 (EDM sigma 2.5 on the bundled teacher)."""
    big_t = schedule.num_train_timesteps
    if not 0 <= top < big_t:
        raise ValueError(f"The generator's input time must be a training index in [0, {big_t - 1}], got {top}.")
    if steps > 1 and 2 * (top + 1) <= big_t:
        raise ValueError(
            f"A {steps}-step generator must start above the middle training index (the exported LCMScheduler steps "
            f"on every index below its input time only from there), not at {top}: raise its input time."
        )
    index = torch.tensor([top - (i * (top + 1)) // steps for i in range(steps)], dtype=torch.float64)
    return schedule.index_time(index)


def uniform_index_times(
    schedule, b: int, like: Tensor, t_range: list[float], generator: torch.Generator | None = None
) -> Tensor:
    """``[B]`` times uniform over ``schedule``'s training indices in ``t_range`` (a fraction of them, e.g. [0.02, 0.98]
    for DMD2's and SiD-LSG's indices 20-980, [0, gan_t_max] for DMD2's GAN term), as ``t = (index + 1) / T`` in
    ``like``'s dtype; drawn from ``generator`` if given."""
    big_t = schedule.num_train_timesteps
    lo, hi = int(t_range[0] * big_t), int(t_range[1] * big_t)
    index = torch.randint(lo, max(hi, lo + 1), (b,), device=like.device, generator=generator)
    return schedule.index_time(index.to(like.dtype)).clamp(max=1.0)


def cat_conditions(a: Condition | None, b: Condition | None) -> Condition | None:
    """Two batches' conditions as one (``None`` for two unconditional batches)."""
    if a is None or b is None:
        if (a is None) != (b is None):
            raise ValueError("Cannot mix conditional and unconditional samples in one batch.")
        return None
    return a.cat(b)
