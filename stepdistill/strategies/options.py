"""The option dataclasses that strategy configs inherit: each shared option is declared once, with one name.

* ``StrategyOptions``: the student's optimizer (every strategy).
* ``GuidedStudentOptions``: the guidance input of a w-conditioned student (progressive and consistency distillation).
* ``TeacherGuidanceOptions``: the teacher's guidance scale baked into the student (progressive and knowledge
  distillation).
* ``LoRAOptions``: a LoRA student on the teacher's own weights (consistency, DMD, SiD).
* ``AdversarialOptions``: an adversarial term (a critic on the fake score's bottleneck, DMD2's, or on the frozen
  teacher's features at several depths, ``stepdistill.discriminator``).
* ``ScoreDistillationOptions``: what DMD and SiD share: the generator's steps and input time, the real score's
  guidance, the fake score's learning rate and LoRA, and the noise levels of the score losses.

A method's config subclasses the one that fits and re-declares a field only to give it another default (its learning
rate, SiD's Adam betas); ``tests/test_config.py`` walks the dataclasses to keep it so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIME_SAMPLINGS = ("uniform", "karras")
GAN_FEATURES = ("fake_score", "teacher")
from ..discriminator import CRITIC_TIME_SAMPLINGS
from ..discriminator import LOSSES as GAN_LOSSES


@dataclass
class StrategyOptions:
    """The student's AdamW optimizer."""

    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the student (SiD CIFAR-10: 1e-5)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})

    def __post_init__(self):
        name = type(self).__name__
        if not self.lr > 0:
            raise ValueError(f"{name}.lr must be positive, got {self.lr}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"{name}.weight_decay must be >= 0, got {self.weight_decay}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{name}.betas must be two numbers in [0, 1), got {self.betas}.")
        _chain_post_init(super())  # options mixed in beside this base (AdversarialOptions, FakeScoreOptions)


@dataclass
class GuidedStudentOptions(StrategyOptions):
    """The guidance input of a w-conditioned student."""

    guidance_embedding_dim: int | None = field(
        default=256,
        metadata={"help": "width of the w-conditioned student's guidance embedding (none: guidance is baked in)"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.guidance_embedding_dim is not None and self.guidance_embedding_dim < 1:
            raise ValueError(
                f"{type(self).__name__}.guidance_embedding_dim must be >= 1 or none, got {self.guidance_embedding_dim}."
            )


@dataclass
class TeacherGuidanceOptions(StrategyOptions):
    """The teacher's classifier-free guidance in the targets, baked into the student."""

    guidance_scale: float = field(
        default=1.0,
        metadata={
            "help": "the teacher's CFG scale in the targets, baked into the student (guided PD: the w its grids and "
            "export use)"
        },
    )


@dataclass
class LoRAOptions(StrategyOptions):
    """A LoRA student: adapters on the teacher's own network, which with adapters off is the teacher."""

    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank of the student on the teacher's own weights (0: a full copy)"}
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names to adapt (default: every conv, attention and MLP layer)"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 0:
            raise ValueError(f"{type(self).__name__}.lora_rank must be >= 0, got {self.lora_rank}.")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(
                f"lora_alpha must be positive (it scales the adapter; 0 does nothing), got {self.lora_alpha}."
            )
        given = [n for n in ("lora_alpha", "lora_target_modules") if getattr(self, n) is not None]
        if given and not self.adapted():
            flags = " and ".join("--" + n.replace("_", "-") for n in given)
            raise ValueError(f"{flags} shape a LoRA adapter, but no LoRA rank is set: add --lora-rank R or drop them.")

    def adapted(self) -> bool:
        """Whether any network of the strategy gets a LoRA adapter."""
        return self.lora_rank > 0


@dataclass
class GeneratorOptions(LoRAOptions):
    """A one- or few-step generator that re-noises between steps (DMD, SiD, LADD): its steps and input time."""

    generator_steps: int = field(
        default=1, metadata={"help": "generator sampling steps (trailing grid from the top: 4 -> 999/749/499/249)"}
    )
    init_timestep: int | None = field(
        default=None,
        metadata={
            "help": "training index of the generator's input time (SiD's sigma_init 2.5 is 755 on the bundled "
            "teacher; SiD-LSG: 625); K steps go evenly below it"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.generator_steps < 1:
            raise ValueError(f"{type(self).__name__}.generator_steps must be >= 1, got {self.generator_steps}.")


@dataclass
class FakeScoreOptions:
    """A fake score trained beside the student (DMD, SiD, rCM): its learning rate."""

    fake_lr: float | None = field(default=None, metadata={"help": "learning rate of the fake score (default: lr)"})

    def __post_init__(self):
        if self.fake_lr is not None and not self.fake_lr > 0:
            raise ValueError(f"{type(self).__name__}.fake_lr must be positive, got {self.fake_lr}.")
        _chain_post_init(super())


@dataclass
class TwoTimeScaleOptions(FakeScoreOptions):
    """A fake score that takes several updates per student update (DMD2's two time-scale rule, rCM's alternation)."""

    fake_updates_per_generator: int = field(
        default=5,
        metadata={"help": "two time-scale update rule: fake-score updates per student update (DMD2, rCM: 5; DMD: 1)"},
    )

    def __post_init__(self):
        if self.fake_updates_per_generator < 1:
            raise ValueError(f"{type(self).__name__}.fake_updates_per_generator must be >= 1.")
        super().__post_init__()


@dataclass
class TrigFlowOptions:
    """Training in TrigFlow time with a JVP of the student (sCD, rCM, MeanFlow; ``stepdistill.trigflow``)."""

    sigma_d: float = field(default=0.5, metadata={"help": "TrigFlow's data standard deviation (sCM: 0.5)"})
    jvp: str = field(
        default="forward",
        metadata={
            "help": "'forward' (forward-mode AD, math attention kernel) or 'finite_difference' (for fused kernels "
            "and sharded networks)"
        },
    )
    jvp_eps: float = field(default=1e-3, metadata={"help": "step of the finite-difference JVP, in TrigFlow time"})

    def __post_init__(self):
        from ..trigflow import JVP_METHODS

        name = type(self).__name__
        if not self.sigma_d > 0:
            raise ValueError(f"{name}.sigma_d must be positive, got {self.sigma_d}.")
        if self.jvp not in JVP_METHODS:
            raise ValueError(f"{name}.jvp must be one of {JVP_METHODS}, got {self.jvp!r}.")
        if not self.jvp_eps > 0:
            raise ValueError(f"{name}.jvp_eps must be positive, got {self.jvp_eps}.")
        _chain_post_init(super())


def _chain_post_init(parent) -> None:
    """Run the next ``__post_init__`` in the MRO, if any (options mixed in beside one another)."""
    mixin = getattr(parent, "__post_init__", None)
    if mixin is not None:
        mixin()


@dataclass
class ScoreDistillationOptions(GeneratorOptions, FakeScoreOptions):
    """What DMD and SiD share (networks, sampler and times in ``score_distillation.ScoreDistillationStrategy``)."""

    unroll: bool = field(
        default=False,
        metadata={
            "help": "few-step generators (not in the papers): train the K-step sampler end to end, the losses and the "
            "fake score on the last step's output and the generator's gradient through every step"
        },
    )
    real_guidance_scale: float = field(default=1.0, metadata={"help": "CFG scale of the real score (the teacher)"})
    fake_lora_rank: int = field(default=0, metadata={"help": "LoRA fake score on a frozen copy (0: full copy)"})
    time_sampling: str = field(
        default="uniform",
        metadata={
            "help": "noise levels of the score losses: 'uniform' (training indices in t_range) or 'karras' (EDM's "
            "rho-7 ramp over t_range)"
        },
    )
    t_range: list[float] = field(
        default_factory=lambda: [0.02, 0.98],
        metadata={"help": "range of the score losses' time draw, of [0, 1] (DMD2: 0.02 0.98; SiD: 0 0.8 Karras)"},
    )

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.fake_lora_rank < 0:
            raise ValueError(f"{name}.fake_lora_rank must be >= 0, got {self.fake_lora_rank}.")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"{name}.time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}.")
        lo, hi = self.t_range if len(self.t_range) == 2 else (-1, -1)
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"t_range must be 't_min t_max' with 0 <= t_min < t_max <= 1, got {self.t_range}.")
        if self.unroll and self.generator_steps == 1:
            raise ValueError("unroll trains a few-step sampler end to end: set generator_steps > 1 or drop unroll.")

    def adapted(self) -> bool:
        return self.lora_rank > 0 or self.fake_lora_rank > 0


@dataclass
class AdversarialOptions:
    """An adversarial term: a critic tells noisy real images from noisy generated ones, and the generator follows it.
    ``gan_features``: ``"fake_score"``, DMD2's head on the fake score's bottleneck, trained inside the fake score's
    loss; ``"teacher"``, heads on the frozen teacher's down and mid blocks (``discriminator.Discriminator``), trained
    by their own optimizer ``disc``."""

    gan_generator_weight: float = field(
        default=0.0, metadata={"help": "GAN weight in the generator loss (DMD2: 3e-3)"}
    )
    gan_critic_weight: float = field(
        default=0.0, metadata={"help": "GAN weight in the critic's loss (DMD2: 1e-2; the fake score's share)"}
    )
    gan_t_max: float = field(
        default=1.0,
        metadata={
            "help": "highest noise level of the critic's inputs, of [0, 1] (DMD2's diffusion_gan_max_timestep / T); "
            "with fake-score features, 1 keeps the fake score's noise levels"
        },
    )
    gan_features: str = field(
        default="fake_score",
        metadata={
            "help": "the critic: 'fake_score' (DMD2's head on its bottleneck) or 'teacher' (heads on its levels)"
        },
    )
    gan_t_sampling: str = field(
        default="uniform",
        metadata={
            "help": "teacher-feature critic: noise levels 'uniform', 'low' (t_max u^2) or 'logit_normal' (LADD)"
        },
    )
    gan_loss: str = field(default="non_saturating", metadata={"help": "'non_saturating' or 'hinge'"})
    gan_r1_weight: float = field(
        default=0.0, metadata={"help": "teacher-feature critic: weight of the approximate R1 penalty (0: off)"}
    )
    gan_warmup_steps: int = field(
        default=0, metadata={"help": "optimizer steps before the generator's GAN term switches on (the critic trains)"}
    )
    gan_lr: float | None = field(
        default=None,
        metadata={
            "help": "teacher-feature critic: its learning rate (default: fake_lr, else lr); the probe of "
            "eval/gan_probe.py separates samples from real images at 1e-3, not at 1e-4"
        },
    )

    def __post_init__(self):
        if min(self.gan_generator_weight, self.gan_critic_weight, self.gan_r1_weight, self.gan_warmup_steps) < 0:
            raise ValueError("GAN weights, gan_r1_weight and gan_warmup_steps must be >= 0.")
        if self.gan_lr is not None and not self.gan_lr > 0:
            raise ValueError(f"gan_lr must be positive, got {self.gan_lr}.")
        if (self.gan_generator_weight > 0) != (self.gan_critic_weight > 0):
            raise ValueError("Set both gan_generator_weight and gan_critic_weight (the GAN term), or neither.")
        if not 0 < self.gan_t_max <= 1:
            raise ValueError(f"gan_t_max must be in (0, 1], got {self.gan_t_max}.")
        for name, allowed in (
            ("gan_features", GAN_FEATURES),
            ("gan_t_sampling", CRITIC_TIME_SAMPLINGS),
            ("gan_loss", GAN_LOSSES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.gan_features == "fake_score" and (
            self.gan_t_sampling != "uniform" or self.gan_loss != "non_saturating" or self.gan_r1_weight or self.gan_lr
        ):
            raise ValueError(
                "gan_t_sampling, gan_loss, gan_r1_weight and gan_lr shape the teacher-feature critic: add --gan-features "
                "teacher, or keep DMD2's head with their defaults."
            )

    @property
    def gan(self) -> bool:
        return self.gan_critic_weight > 0
