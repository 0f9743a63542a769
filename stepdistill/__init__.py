"""stepdistill: distil many-step diffusion teachers into one- to few-step students that load in diffusers."""

import logging
import os

# bitsandbytes (which peft imports on start-up whenever it is installed, as for --optimizer adamw8bit) tries to fetch a
# 4-bit CPU kernel from the Hugging Face Hub on AVX512-BF16 CPUs and logs an error-like warning when it cannot
# (offline, or a publisher it cannot verify; with HF_HUB_OFFLINE the `kernels` package warns that it skips the
# publisher check). No code here uses 4-bit kernels, so those two loggers only report errors.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"

# The repository's assets/ folder (bundled teacher, domain classifier, data subset), for default paths.
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")

from .denoiser import Condition, Denoiser
from .schedules import Schedule

__all__ = ["ASSETS", "Condition", "Denoiser", "Schedule", "__version__"]
