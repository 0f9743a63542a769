"""Sample generation and scoring shared by the evaluation command, the demo and training callbacks.

A sweep generates ``N`` samples per (model, steps, guidance) with a fixed seed (the noise of sample ``i``
does not depend on the batch size), quantises them to uint8 as an image file would, and scores them
against reference statistics of real images with a feature network (``DomainScorer``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data import from_uint8, to_uint8
from .denoiser import Condition, Denoiser
from .features import DomainClassifier
from .metrics import feature_stats, frechet_distance
from .sampling import ddim_sample


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """Labels ``[N]`` cycling through the classes, so every class gets N / num_classes samples."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def generate(denoiser: Denoiser, num_samples: int, num_steps: int, guidance_scale: float = 1.0, seed: int = 0,
             labels: Tensor | None = None, batch_size: int = 500, shape: tuple[int, ...] | None = None,
             progress: bool = True, desc: str = "sampling") -> Tensor:
    """Generate ``[N, C, H, W]`` samples in [-1, 1], quantised to the uint8 grid, with DDIM.

    The noise of all N samples is drawn at once from ``seed``, so results do not depend on ``batch_size``.
    """
    if shape is None:
        config = denoiser.backbone.config
        shape = (config.in_channels, config.sample_size, config.sample_size)
    noise = torch.randn(num_samples, *shape, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in tqdm(range(0, num_samples, batch_size), desc=desc, disable=not progress, leave=False):
        cond = None if labels is None else Condition(labels=labels[i:i + batch_size])
        x = ddim_sample(denoiser, noise[i:i + batch_size], cond, num_steps, guidance_scale)
        out.append(from_uint8(to_uint8(x)))
    return torch.cat(out)


@dataclass
class DomainScorer:
    """FD and class-accuracy in the feature space of a ``DomainClassifier``.

    Attributes:
        classifier: the feature network (eval mode).
        ref_mu, ref_sigma: reference feature statistics of real images.
        reference: where the reference came from (recorded in results).
    """

    classifier: DomainClassifier
    ref_mu: np.ndarray
    ref_sigma: np.ndarray
    reference: str = ""

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, reference: str | os.PathLike | None = None) -> DomainScorer:
        """Load a classifier folder and its reference statistics (default ``<folder>/reference-test.npz``)."""
        reference = os.fspath(reference or os.path.join(folder, "reference-test.npz"))
        if not os.path.isfile(reference):
            raise FileNotFoundError(f"Reference statistics {reference!r} not found; train/classifier.py writes them.")
        stats = np.load(reference)
        return cls(DomainClassifier.from_pretrained(folder), stats["mu"], stats["sigma"], reference)

    @torch.no_grad()
    def features_and_logits(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """Features ``[N, D]`` and logits ``[N, K]`` of images ``[N, C, H, W]`` in [-1, 1]."""
        expected = self.classifier.config["in_channels"]
        if images.ndim != 4 or images.shape[1] != expected:
            raise ValueError(f"The domain classifier takes [N, {expected}, H, W] images, got {tuple(images.shape)}.")
        res = self.classifier.resolution
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            if x.shape[-1] != res or x.shape[-2] != res:
                x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", antialias=True)
            f = self.classifier.features(x)
            feats.append(f)
            logits.append(self.classifier.head(f))
        return torch.cat(feats), torch.cat(logits)

    def score(self, images: Tensor, labels: Tensor | None = None) -> dict:
        """``{"fd", "accuracy" (if labels), "n"}`` of images ``[N, C, H, W]`` in [-1, 1]."""
        feats, logits = self.features_and_logits(images)
        mu, sigma = feature_stats(feats)
        result = {"fd": frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma), "n": len(images)}
        if labels is not None:
            result["accuracy"] = (logits.argmax(1) == labels).float().mean().item()
        return result


def sweep(models: dict[str, Denoiser], scorer: DomainScorer, steps: list[int], guidance: list[float],
          num_samples: int, seed: int = 0, batch_size: int = 500, num_classes: int | None = None,
          on_samples=None) -> list[dict]:
    """Score every (model, steps, guidance) setting; ``on_samples(row, images)`` sees each setting's samples."""
    rows = []
    for name, den in models.items():
        classes = num_classes if num_classes is not None else (den.null_class or 0)
        labels = balanced_labels(num_samples, classes) if classes else None
        for w in guidance:
            for n in steps:
                start = time.time()
                images = generate(den, num_samples, n, w, seed, labels, batch_size, desc=f"{name} {n} steps w={w}")
                row = {"model": name, "steps": n, "guidance": w, "seed": seed, **scorer.score(images, labels)}
                row["seconds"] = round(time.time() - start, 1)
                rows.append(row)
                if on_samples is not None:
                    on_samples(row, images)
    return rows
