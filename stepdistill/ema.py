"""Exponential moving average of a network's parameters, kept in float32 whatever the network's dtype.

Why not torch's ``AveragedModel`` or diffusers' ``EMAModel``:

- both keep the average in the parameters' dtype; in bf16 an update of ``(1 - decay) = 1e-3`` of a weight's value is
  below bf16's relative resolution (2^-8, about 4e-3) and is rounded away, so a bf16 student's average would not
  move. Here the shadow is float32 always;
- ``AveragedModel`` deep-copies the whole module: for a LoRA student that is the frozen teacher network again (3.4
  GB for SD 1.5 in float32). Here only the trainable parameters are averaged, keyed by name, and a checkpoint's
  average is matched to the network by name on resume (an error names differing keys);
- the warm-up ``min(decay, (1 + n) / (10 + n))`` counts from update 0, as every kept student's recipe was measured
  with; ``EMAModel`` counts one update later (its first update copies the weights), so switching would change the
  measured results that exact resume and the kept recipes reproduce.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` over a module's trainable parameters.

    Args:
        module: the network to average.
        decay: the decay rate; ``warmup`` uses ``min(decay, (1 + n) / (10 + n))`` at update ``n``, as in
            common diffusion codebases, so that early averages are not dominated by the initialisation.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {k: p.detach().float().clone() for k, p in module.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.current_decay()
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (cast to its dtype)."""
        for k, p in module.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k].to(p.dtype))

    @contextmanager
    def swapped(self, module: nn.Module):
        """Within the block, ``module`` holds the averaged weights; its own are restored afterwards.

        Only for no-grad use (targets, sampling): the swap writes parameters in place.
        """
        with torch.no_grad():
            backup = {k: p.detach().clone() for k, p in module.named_parameters() if k in self.shadow}
            self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for k, p in module.named_parameters():
                    if k in backup:
                        p.copy_(backup[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the network: differing keys {sorted(missing)[:5]}.")
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}
