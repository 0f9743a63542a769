"""Distillation strategies; importing this package registers every built-in method."""

from .base import REGISTRY, Strategy, get_strategy, register
from .progressive import ProgressiveConfig, ProgressiveStrategy

__all__ = ["REGISTRY", "ProgressiveConfig", "ProgressiveStrategy", "Strategy", "get_strategy", "register"]
