"""Distillation strategies; importing this package registers every built-in method."""

from .base import REGISTRY, Strategy, get_strategy, register
from .consistency import ConsistencyConfig, ConsistencyStrategy
from .dmd import DMDConfig, DMDStrategy
from .knowledge import KnowledgeDistillationConfig, KnowledgeDistillationStrategy
from .ladd import LADDConfig, LADDStrategy
from .meanflow import MeanFlowConfig, MeanFlowStrategy
from .progressive import ProgressiveConfig, ProgressiveStrategy
from .scm import SCMConfig, SCMStrategy
from .sid import SiDConfig, SiDStrategy

__all__ = [
    "REGISTRY",
    "ConsistencyConfig",
    "ConsistencyStrategy",
    "DMDConfig",
    "DMDStrategy",
    "KnowledgeDistillationConfig",
    "KnowledgeDistillationStrategy",
    "LADDConfig",
    "LADDStrategy",
    "MeanFlowConfig",
    "MeanFlowStrategy",
    "ProgressiveConfig",
    "ProgressiveStrategy",
    "SCMConfig",
    "SCMStrategy",
    "SiDConfig",
    "SiDStrategy",
    "Strategy",
    "get_strategy",
    "register",
]
