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
* hooks: ``on_step_end(step)`` (EMA targets, stage switches), ``sample(noise, cond)`` for grids and
  evaluation, ``export_modules()`` and ``extra_state()``/``load_extra_state()`` for exact resume.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import Condition, Denoiser
from ..distributed import frozen, unwrap

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

    def __init__(self, config: Any, teacher: Denoiser):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config
        self.__dict__["teacher"] = teacher.frozen()  # not a registered submodule

    # ------------------------------------------------------------------------------------ contract
    @abc.abstractmethod
    def trainable(self) -> dict[str, nn.Module]:
        """Networks updated by an optimizer, by optimizer name."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per name of ``trainable()``."""

    @abc.abstractmethod
    def losses(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Losses for ``batch`` at optimizer step ``step`` (see the module docstring)."""

    @abc.abstractmethod
    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Condition | None = None) -> Tensor:
        """Images ``[B, C, H, W]`` from the current student, for grids and evaluation."""

    # --------------------------------------------------------------------------------------- hooks
    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step (EMA targets, stage switches)."""

    def lr_factor(self, step: int) -> float:
        """A multiplier on every optimizer's LR at ``step``, on top of the trainer's schedule (default 1). Methods
        with stages restart their own schedule per stage (progressive distillation anneals within each round)."""
        return 1.0

    def export_modules(self) -> dict[str, nn.Module]:
        """Networks to export, unwrapped (default: the student). ``Trainer.export_modules`` substitutes the
        trainer's EMA weights for the live student when an EMA is kept."""
        return {"student": unwrap(self.trainable()["student"])}

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
        """Raise ``ValueError`` before training if the teacher does not suit the method."""
