"""Distillation strategies; importing this package registers every built-in method."""

from .base import REGISTRY, Strategy, get_strategy, register
from .consistency import ConsistencyConfig, ConsistencyStrategy
from .dmd import DMDConfig, DMDStrategy
from .progressive import ProgressiveConfig, ProgressiveStrategy

__all__ = [
    "ConsistencyConfig",
    "ConsistencyStrategy",
    "DMDConfig",
    "DMDStrategy",
    "REGISTRY",
    "ProgressiveConfig",
    "ProgressiveStrategy",
    "Strategy",
    "get_strategy",
    "register",
]
