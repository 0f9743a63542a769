"""stepdistill: distil many-step diffusion teachers into one- to few-step students that load in diffusers."""

import os

__version__ = "0.1.0"

# The repository's assets/ folder (bundled teacher, domain classifier, data subset), for default paths.
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")

from .denoiser import Condition, Denoiser
from .schedules import Schedule

__all__ = ["ASSETS", "Condition", "Denoiser", "Schedule", "__version__"]
