"""The Strategy interface shared by every distillation method, and the registry of methods.

A strategy owns its networks (built from the teacher with the Denoiser roles), declares its optimizers,
and computes a dict of losses for a batch. The trainer knows nothing else about it:

* ``trainable()`` names the networks that optimizers update (``"student"``, ``"fake_score"``, ``"disc"``);
  the trainer wraps them for distributed training and puts the wrapped modules back under the same names,
  so a strategy always calls its networks through ``self.<name>(...)``.
* ``optimizers()`` returns one optimizer per name (several names for methods such as DMD2).
* ``losses(batch, step)`` returns ``{name: loss}``; each key names the optimizer whose parameters receive
  that loss on this step, so alternating or multi-rate updates (DMD2's critic steps) are just a matter of
  which keys a step returns. A loss must only produce gradients for its own optimizer's parameters.
  Keys starting with ``log/`` are logged, not optimised.
* ``sample(noise, cond)`` for grids and evaluation, and ``scheduler_spec()``: the diffusers scheduler that samples
  the same way in an exported pipeline (``export_spec(step)`` adds the model card's text; one function,
  ``export.export_spec``, writes every kind of folder).
* hooks: ``on_step_end(step)`` (EMA targets, stage switches), ``sampling_network()`` and ``export_modules()``
  (what is sampled and exported), ``extra_state()``/``load_extra_state()`` for exact resume.

``trainable()`` and ``optimizers()`` default to the student and the config's AdamW (``options.StrategyOptions``), and
``sample()`` to DDIM at a ``DDIMScheduler`` spec's times, so a new method is a config dataclass, ``losses``,
``scheduler_spec`` and ``@register``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import Condition, Denoiser
from ..distributed import frozen, unwrap
from ..export import ExportSpec
from ..sampling import ddim_sample
from .options import LoRAOptions, TeacherGuidanceOptions

REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str):
    """Class decorator: register a Strategy under a lowercase ``name`` (as PEFT registers methods)."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in REGISTRY:
            raise ValueError(f"Strategy {name!r} is already registered by {REGISTRY[name].__name__}.")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_strategy(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise ValueError(f"Unknown strategy {name!r}; registered: {sorted(REGISTRY)}.")
    return REGISTRY[name]


class Strategy(nn.Module, metaclass=abc.ABCMeta):
    """Base class of distillation strategies (see the module docstring for the contract).

    Args:
        config: the strategy's config dataclass (``config_class``).
        teacher: the frozen teacher. It is kept outside the module tree, so that checkpoints and
            ``.to()``/``prepare`` never touch it; the trainer places it on the device.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # the trainable network whose outputs are the samples (the generator): the one the trainer's EMA averages
    output: ClassVar[str] = "student"

    def __init__(self, config: Any, teacher: Denoiser):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config
        self.__dict__["teacher"] = teacher.frozen()  # not a registered submodule

    # ------------------------------------------------------------------------------------ contract
    def trainable(self) -> dict[str, nn.Module]:
        """Networks updated by an optimizer, by optimizer name (default: the student)."""
        return {"student": self.student}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per name of ``trainable()`` (default: the config's AdamW on the student)."""
        return {"student": self.adamw(self.student)}

    @abc.abstractmethod
    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Losses for ``batch`` at optimizer step ``step`` (see the module docstring)."""

    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Condition | None = None) -> Tensor:
        """Images ``[B, C, H, W]`` from the current student, for grids and evaluation. Default: deterministic DDIM
        through ``sampling_network`` at the times of a ``DDIMScheduler`` ``scheduler_spec`` (what its export runs);
        a strategy whose sampler is another one implements its own."""
        spec = self.scheduler_spec()
        if spec.get("scheduler_class") != "DDIMScheduler" or spec.get("times") is None:
            raise NotImplementedError(f"{type(self).__name__} samples with another scheduler: implement sample().")
        return ddim_sample(self.sampling_network(), noise, cond, times=spec["times"])

    def scheduler_spec(self) -> dict:
        """``export.configure_scheduler``'s keyword arguments (``scheduler_class``, ``times``,
        ``scheduler_options``): the diffusers scheduler with which an exported pipeline reproduces ``sample``. Every
        exported strategy implements it."""
        raise NotImplementedError(f"{type(self).__name__} has no scheduler_spec(): it cannot be exported.")

    def export_spec(self, step: int) -> ExportSpec:
        """What to export after ``step`` optimizer steps (``export.export_spec`` writes it). Default: the
        ``scheduler_spec`` at its times, guidance baked in, the card's method line from the class docstring."""
        spec = self.scheduler_spec()
        method = (type(self).__doc__ or type(self).__name__).strip().split("\n")[0].rstrip(".")
        return ExportSpec(len(spec["times"]), spec, method, f"Trained {step} optimizer steps.")

    def sampling_network(self) -> Denoiser:
        """The network whose samples are the strategy's output (unwrapped): what ``sample`` runs, the sample grids read
        their shape from, and export writes (default: the student). The trainer's EMA averages the trained network
        ``output`` instead; the two differ for a strategy with a target of its own (consistency's EMA target)."""
        return unwrap(self.student)

    # ------------------------------------------------------------------------------------ networks
    @property
    def lora_rank(self) -> int:
        """The student's LoRA rank (0: a full student); from the config's ``LoRAOptions``."""
        return self.config.lora_rank if isinstance(self.config, LoRAOptions) else 0

    def initial_student(self, student: Denoiser | None) -> Denoiser:
        """The student to train: ``student`` if given, else a trainable copy of the teacher; with a LoRA rank, the
        teacher's own network with a trainable adapter (no second copy in memory), which is the teacher again with
        its adapters off (``teacher_network``). Anything copied from the teacher must be copied before this."""
        if self.lora_rank and student is not None:
            raise ValueError(
                "A LoRA student adapts the teacher's own weights, so an initial --student cannot be used with "
                "--lora-rank: drop one of them (or pass the student as the --teacher)."
            )
        if self.lora_rank:
            return self.teacher.add_lora(self.lora_rank, self.config.lora_alpha, self.config.lora_target_modules)
        return student if student is not None else self.teacher.trainable_copy()

    @contextmanager
    def teacher_network(self) -> Iterator[Denoiser]:
        """Context: the network to call as the teacher: the frozen teacher, or for a LoRA student its own network
        with the adapters off (the same frozen base weights). Gradient reaches the inputs if they carry one (SiD),
        never the teacher's weights."""
        if not self.lora_rank:
            yield self.teacher
            return
        network = unwrap(self.student)
        with network.adapters_disabled():
            yield network

    def adamw(self, network: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """AdamW over ``network``'s trainable parameters with the config's ``StrategyOptions`` (``lr`` overrides
        its learning rate)."""
        cfg = self.config
        params = [p for p in network.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr or cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    # --------------------------------------------------------------------------------------- hooks
    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step (EMA targets, stage switches)."""

    def lr_factor(self, step: int) -> float:
        """A multiplier on every optimizer's LR at ``step``, on top of the trainer's schedule (default 1). Methods
        with stages restart their own schedule per stage (progressive distillation anneals within each round)."""
        return 1.0

    def export_modules(self) -> dict[str, nn.Module]:
        """Networks to export, unwrapped (default: ``sampling_network``). ``Trainer.export_modules`` substitutes the
        trainer's EMA weights for the live network when an EMA is kept."""
        return {"student": self.sampling_network()}

    def frozen(self, name: str):
        """Context: the network ``name`` with its parameters frozen (see ``stepdistill.distributed.frozen``), for a
        loss that must pass gradient through another optimizer's network without training it::

            with self.frozen("fake_score") as fake_score:
                loss = score_identity_loss(fake_score(x_t, t, cond), ...)
        """
        return frozen(getattr(self, name))

    def extra_state(self) -> dict:
        """State outside the trainable networks and optimizers that resume needs (e.g. the current round)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore ``extra_state()``."""

    def check_compatible(self) -> None:
        """Raise ``ValueError`` before training if the teacher does not suit the method. Default: a teacher guidance
        scale (``TeacherGuidanceOptions``) needs a teacher that can do classifier-free guidance; an override adds its
        own checks to ``super().check_compatible()``."""
        cfg = self.config
        if isinstance(cfg, TeacherGuidanceOptions) and cfg.guidance_scale != 1 and not self.teacher.can_guide:
            raise ValueError("guidance_scale != 1 needs a teacher with a null class or an empty prompt for CFG.")
