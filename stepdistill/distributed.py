"""Helpers for networks that may sit inside a distributed wrapper (DDP, FSDP, DeepSpeed).

Strategies call trainable networks through the module the trainer handed back (the wrapper), so that the
wrapper sees every forward and synchronises gradients; attributes (``schedule``, ``prediction``, adapters)
are read through ``unwrap``. A network that a loss must *not* train (the fake score inside a generator loss,
as in SiD and DMD2) is evaluated inside ``frozen``: its parameters do not require gradient for the duration,
and the call bypasses the wrapper, whose gradient hooks would otherwise wait for a backward that never comes.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a distributed wrapper (DDP/FSDP ``.module``, nested wrappers too), or the module itself."""
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    return module


@contextmanager
def frozen(module: nn.Module):
    """Evaluate ``module`` with its parameters frozen: yields the unwrapped network with ``requires_grad`` off,
    and restores every parameter's flag afterwards (also on error).

    Gradient still flows *through* the network to its inputs (a generator loss through the fake score), but
    none is accumulated into its parameters.
    """
    net = unwrap(module)
    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
