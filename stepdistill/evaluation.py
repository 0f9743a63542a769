"""Sample generation and scoring shared by the evaluation command, the demo and training callbacks.

A sweep generates ``N`` samples per (model, steps, guidance) with a fixed seed (the noise of sample ``i``
does not depend on the batch size or the number of processes), quantises them to uint8 as an image file
would, and scores them:

* Frechet distance in the space of a feature network, accumulated with torchmetrics'
  ``FrechetInceptionDistance`` (a custom feature extractor; its states are summed across processes)
  against cached reference statistics of real images: the TF-FID Inception network (``InceptionFeatures``),
  the domain classifier shipped in ``assets/`` (``DomainFeatures``) or CLIP image features (``ClipModel``);
* class-accuracy of class-conditional samples by the domain classifier;
* CLIP score ``100 * max(cos(image, prompt), 0)`` averaged over samples (Hessel et al. 2021, arXiv 2104.08718).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import from_uint8, load_images, to_uint8
from .denoiser import Condition, Denoiser
from .features import DomainClassifier
from .metrics import feature_stats
from .sampling import ddim_sample


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """Labels ``[N]`` cycling through the classes, so every class gets N / num_classes samples."""
    return torch.arange(num_samples) % num_classes


def seeded_noise(num_samples: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """The initial noise ``[N, *shape]`` of an evaluation: sample ``i`` gets the same noise whatever the batch
    size or the number of processes (each process slices its own shard)."""
    return torch.randn(num_samples, *shape, generator=torch.Generator().manual_seed(seed))


def shard(num_samples: int, rank: int, world: int) -> slice:
    """The contiguous block of sample indices that process ``rank`` of ``world`` handles."""
    per, extra = divmod(num_samples, world)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (rank < extra))


# ------------------------------------------------------------------------------------ feature networks
class DomainFeatures(nn.Module):
    """The domain classifier as a feature network on uint8 images ``[N, C, H, W]`` (resized to its resolution)."""

    def __init__(self, classifier: DomainClassifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.config["feature_dim"]
        self.input_size = (classifier.config["in_channels"], classifier.resolution, classifier.resolution)

    def _prepare(self, images: Tensor) -> Tensor:
        expected = self.input_size[0]
        if images.ndim != 4 or images.shape[1] != expected:
            raise ValueError(f"The domain classifier takes [N, {expected}, H, W] images, got {tuple(images.shape)}.")
        return from_uint8(images.cpu(), self.classifier.resolution).to(next(self.classifier.parameters()).device)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(self._prepare(images))

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        return self.classifier(self._prepare(images))


@dataclass
class ReferenceStats:
    """Feature statistics of a real image set: mean ``[D]``, covariance ``[D, D]``, count and provenance."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Reference statistics {path!r} not found.")
        try:
            data = np.load(path)
            return cls(data["mu"], data["sigma"], int(data["n"]), str(data["source"]) if "source" in data else path)
        except Exception as err:  # a damaged or foreign file: zip, pickle or key errors
            raise ValueError(
                f"{path!r} is not a reference-statistics .npz (mu, sigma, n): {type(err).__name__}: {err}"
            ) from None

    def save(self, path: str | os.PathLike) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"  # one per process: two runs may fill the same cache at once
        np.savez(tmp, mu=self.mu, sigma=self.sigma, n=self.n, source=self.source)
        os.replace(tmp, path)

    @classmethod
    def of(cls, net: nn.Module, images: Tensor, source: str, batch_size: int = 250) -> ReferenceStats:
        """Statistics of ``net`` features of uint8 ``images``."""
        feats = torch.cat(
            [
                net(images[i : i + batch_size]).double().cpu()
                for i in tqdm(range(0, len(images), batch_size), desc="reference features", leave=False)
            ]
        )
        mu, sigma = feature_stats(feats)
        return cls(mu, sigma, len(images), source)


def cached_reference(net: nn.Module, feature_name: str, images_fn, source: str, cache_dir: str) -> ReferenceStats:
    """Load reference statistics from ``cache_dir`` or compute them with ``images_fn()`` and cache them.

    The cache key is the feature network's name and the source description (path and sample count).
    """
    key = hashlib.sha1(f"{feature_name}|{source}".encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{feature_name}-{key}.npz")
    if os.path.isfile(path):
        return ReferenceStats.load(path)
    stats = ReferenceStats.of(net, images_fn(), source)
    stats.save(path)
    return stats


class FrechetDistance:
    """FD of generated images to fixed reference statistics, in the space of ``net``.

    torchmetrics' ``FrechetInceptionDistance`` with ``net`` as its custom feature extractor does the
    accumulation (float64 sums, summed across processes under torch.distributed); the reference is
    written into its real-image states once, so it is never recomputed.

    Args:
        net: a module mapping uint8 images ``[N, C, H, W]`` to features ``[N, D]``, with ``num_features``.
        reference: statistics of real images in the same feature space.
    """

    def __init__(self, net: nn.Module, reference: ReferenceStats):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if reference.mu.shape != (net.num_features,):
            raise ValueError(
                f"Reference statistics have {reference.mu.shape[0]} features; the network gives "
                f"{net.num_features}. Recompute them with this feature network."
            )
        self.metric = FrechetInceptionDistance(feature=net, reset_real_features=False, normalize=False)
        n = reference.n
        mu = torch.from_numpy(np.asarray(reference.mu, np.float64))
        sigma = torch.from_numpy(np.asarray(reference.sigma, np.float64))
        self.metric.real_features_sum = mu * n
        self.metric.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
        self.metric.real_features_num_samples = torch.tensor(n)

    def update(self, images: Tensor) -> None:
        self.metric.update(images, real=False)

    def compute(self) -> float:
        return float(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()


# --------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(
    denoiser: Denoiser,
    num_samples: int,
    num_steps: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    labels: Tensor | None = None,
    batch_size: int = 500,
    shape: tuple[int, ...] | None = None,
    indices: slice | None = None,
    progress: bool = True,
    desc: str = "sampling",
) -> Tensor:
    """Generate uint8 samples ``[n, C, H, W]`` with the toolkit's DDIM sampler.

    The noise of all ``num_samples`` is drawn at once from ``seed``; ``indices`` selects this process's
    share, so results depend neither on ``batch_size`` nor on the number of processes.
    """
    if shape is None:
        config = denoiser.backbone.config
        shape = (config.in_channels, config.sample_size, config.sample_size)
    indices = indices or slice(0, num_samples)
    noise = seeded_noise(num_samples, shape, seed)[indices]
    labels = None if labels is None else labels[indices]
    device = next(iter(denoiser.parameters()), torch.empty(0)).device
    out = []
    for i in tqdm(range(0, len(noise), batch_size), desc=desc, disable=not progress, leave=False):
        cond = None if labels is None else Condition(labels=labels[i : i + batch_size].to(device))
        x = ddim_sample(denoiser, noise[i : i + batch_size].to(device), cond, num_steps, guidance_scale)
        out.append(to_uint8(x).cpu())
    return torch.cat(out) if out else torch.empty(0, *shape, dtype=torch.uint8)


@torch.no_grad()
def generate_with_pipeline(
    pipe,
    num_samples: int,
    num_steps: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    labels: Tensor | None = None,
    prompts: list[str] | None = None,
    batch_size: int = 100,
    indices: slice | None = None,
    progress: bool = True,
    desc: str = "pipeline",
    call: dict | None = None,
) -> Tensor:
    """Generate uint8 samples ``[n, C, H, W]`` with a diffusers pipeline (class-conditional or text-to-image, UNet or
    SD3-style transformer).

    The initial noise comes from ``seed`` exactly as in ``generate`` and is passed as ``latents``. A stochastic
    sampler's fresh noise (LCM's re-noising) is seeded by ``seed`` and the batch's first sample index, through the
    pipeline's ``generator`` and, for schedulers that draw torch's global generator instead (SD3's pipeline does not
    hand ``generator`` to its scheduler), a forked global RNG, so a setting scores the same whatever was evaluated
    before it and the caller's RNG state is left as it was.

    Args:
        call: the pipeline's step and guidance arguments when they are not ``num_inference_steps=num_steps,
            guidance_scale=guidance_scale`` (an exported student's ``export.pipeline_call``: its ``sigmas`` or
            ``timesteps``, or a guidance-embedding offset).
    """
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer to sample.")
    size = net.config.sample_size
    shape = (net.config.in_channels, size, size)
    steps = {"num_inference_steps": num_steps, "guidance_scale": guidance_scale, **(call or {})}
    if "sigmas" in steps or "timesteps" in steps:  # the student's own times stand for the step count
        steps.pop("num_inference_steps")
    indices = indices or slice(0, num_samples)
    noise = seeded_noise(num_samples, shape, seed)[indices]
    inputs = _pipeline_inputs(pipe, params, num_samples, labels, prompts, indices)
    out = []
    for i in tqdm(range(0, len(noise), batch_size), desc=desc, disable=not progress, leave=False):
        batch = {k: v[i : i + batch_size] for k, v in inputs.items()}
        batch_seed = seed * 1_000_003 + (indices.start or 0) + i
        if "generator" in params:  # stochastic samplers (LCM's re-noising) draw from it, not the global RNG
            batch["generator"] = torch.Generator(pipe.device).manual_seed(batch_seed)
        with torch.random.fork_rng(devices=[pipe.device] if pipe.device.type == "cuda" else []):
            torch.manual_seed(batch_seed)  # for schedulers that draw the global RNG (SD3's stochastic FlowMatch)
            images = pipe(
                **batch, **steps, latents=noise[i : i + batch_size].to(pipe.device, net.dtype), output_type="np"
            ).images
        out.append(
            torch.from_numpy((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
        )
    return torch.cat(out)


def _pipeline_inputs(pipe, params, num_samples: int, labels, prompts, indices: slice) -> dict:
    """The conditions of samples ``indices`` of ``num_samples`` as the pipeline takes them: class labels, or prompts
    cycled over the samples."""
    if "class_labels" in params:
        if labels is None:
            raise ValueError("This pipeline is class-conditional: give class labels.")
        return {"class_labels": labels[indices]}
    if "prompt" in params:
        if not prompts:
            raise ValueError("This pipeline is text-to-image: give a prompt file (--prompts).")
        return {"prompt": [prompts[i % len(prompts)] for i in range(num_samples)][indices]}
    raise ValueError(
        f"Unknown pipeline type {type(pipe).__name__}: its __call__ takes neither class_labels nor prompt."
    )


# ---------------------------------------------------------------------------------- models and real data
def parse_named(spec: str) -> tuple[str, str]:
    """``NAME=PATH``, or a bare ``PATH`` named after its last folder."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (os.path.basename(os.path.normpath(spec)), spec)


def parse_model(spec: str, default_steps: list[int]) -> tuple[str, str, list[int]]:
    """``NAME=PATH[@S1,S2]``: a model, and the step counts to sample it at (default: --steps)."""
    spec, sep, steps = spec.rpartition("@") if "@" in spec else (spec, "", "")
    name, path = parse_named(spec)
    try:
        counts = [int(s) for s in steps.split(",")] if sep else default_steps
    except ValueError:
        raise ValueError(f"Bad step list in --model {spec}@{steps}: expected NAME=PATH@4 or NAME=PATH@2,4.") from None
    if min(counts) < 1:
        raise ValueError(f"Step counts must be >= 1, got {counts} for --model {spec}.")
    return name, path, counts


def portable_path(value):
    """A path inside the working directory as a relative one (the default classifier is absolute)."""
    if isinstance(value, str) and os.path.isabs(value) and value.startswith(os.getcwd() + os.sep):
        return os.path.relpath(value)
    return value


def load_real(path: str, limit: int | None, resolution: int | None):
    """Real images (see ``load_images``), resized to ``resolution`` with the training data's antialiased resize."""
    images, labels = load_images(path, limit)
    if resolution is not None and images.shape[-1] != resolution:
        images = to_uint8(from_uint8(images, resolution))
    return images, labels


def load_model(path, device, trust_remote_code=False):
    """A toolkit Denoiser (model folder) or a diffusers pipeline (folder with model_index.json). A pipeline whose
    folder carries its own code runs it only with ``trust_remote_code`` (``--trust-remote-code``)."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        from diffusers import DiffusionPipeline

        code = sorted(n for n in os.listdir(path) if n.endswith(".py"))
        if code and not trust_remote_code:
            raise ValueError(
                f"{path!r} carries its own pipeline code ({', '.join(code)}); read it, then pass --trust-remote-code "
                "to run it (stepdistill's exports carry pipeline_class_conditional.py)."
            )
        from .text import absent_components

        _check_components(path)
        try:  # components the pipeline leaves out (SD3 without T5) are passed as None, or diffusers refuses it
            absent = absent_components(path)
            pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=trust_remote_code, **absent).to(device)
        except (OSError, ValueError, AttributeError, ImportError) as err:
            raise ValueError(f"Cannot load the pipeline folder {path!r}: {err}") from err
        pipe.set_progress_bar_config(disable=True)
        return pipe
    refuse_headless_pipeline(path)
    return Denoiser.from_pretrained(path).frozen().to(device)


def _check_components(path: str) -> None:
    """Refuse a pipeline folder that lacks a component its model_index.json lists (diffusers' own error names a
    config.json, not the missing folder)."""
    import json

    with open(os.path.join(path, "model_index.json")) as f:
        try:
            index = json.load(f)
        except ValueError as err:
            raise ValueError(f"{path}/model_index.json is not valid JSON ({err}).") from None
    missing = [
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and value[0] is not None
        and not os.path.isdir(os.path.join(path, name))
    ]
    if missing:
        raise ValueError(
            f"The pipeline folder {path!r} lists {', '.join(missing)} in model_index.json but has no "
            f"{', '.join(m + '/' for m in missing)} folder: copy the whole pipeline folder, or export it again."
        )


# Schedulers whose sampler is not a DDIM update: a folder that carries one is a distilled student, not a teacher.
OWN_SAMPLER_SCHEDULERS = ("LCMScheduler", "TCDScheduler")


def refuse_headless_pipeline(path):
    """A folder without model_index.json is sampled with the toolkit's DDIM. That misreports an exported student
    whose model_index.json was lost (an LCM student scored 26.3 instead of 29.1): refuse it instead."""
    from .schedules import load_scheduler_config

    try:
        name = load_scheduler_config(os.path.join(path, "scheduler")).get("_class_name")
    except (OSError, ValueError):
        name = None  # Denoiser.from_pretrained reports a missing or unreadable scheduler
    if name in OWN_SAMPLER_SCHEDULERS or os.path.isfile(os.path.join(path, "stepdistill.json")):
        what = f"its scheduler is an {name}" if name in OWN_SAMPLER_SCHEDULERS else "it holds stepdistill.json"
        raise ValueError(
            f"{path!r} looks like an exported pipeline ({what}) but has no model_index.json, so it would be "
            "sampled with the toolkit's DDIM instead of its own scheduler; restore model_index.json (export it "
            "again) and pass the folder with --trust-remote-code."
        )


def class_count(model) -> int:
    """The class count of a class-conditional pipeline or model (0 for text-to-image and unconditional ones)."""
    net = getattr(model, "unet", None) or getattr(model, "transformer", None) or model.backbone
    n = getattr(net.config, "num_class_embeds", None)
    return n - 1 if n else 0


def sample_model(
    model,
    path: str,
    num_samples: int,
    steps: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
    labels: Tensor | None = None,
    prompts: list[str] | None = None,
    batch_size: int = 500,
    indices: slice | None = None,
    desc: str = "",
) -> Tensor:
    """uint8 samples ``[n, C, H, W]`` (samples ``indices`` of ``num_samples``) of a model from ``load_model``: a
    pipeline folder called as its export says (``export.pipeline_call``), in batches of at most 100, or a toolkit
    model folder with ``steps`` DDIM steps."""
    from .export import pipeline_call

    if not isinstance(model, Denoiser):
        call = pipeline_call(path, steps, guidance_scale)
        batch = min(batch_size, 100)
        return generate_with_pipeline(
            model, num_samples, steps, guidance_scale, seed, labels, prompts, batch, indices, desc=desc, call=call
        )
    return generate(model, num_samples, steps, guidance_scale, seed, labels, batch_size, indices=indices, desc=desc)


# ------------------------------------------------------------------------------------------- CLIP
class ClipModel(nn.Module):
    """An open_clip model for CLIP image features and CLIP score, loaded from a local checkpoint.

    Args:
        model_name: an open_clip architecture (``ViT-B-32``, ``ViT-g-14``, ...).
        checkpoint: local weights file (open_clip's format); nothing is downloaded.
        config_file: optional JSON model config for architectures open_clip does not ship.
    """

    def __init__(self, model_name: str, checkpoint: str, config_file: str | None = None):
        super().__init__()
        import open_clip

        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"CLIP checkpoint {checkpoint!r} does not exist; pass a local open_clip weights "
                "file with --clip-checkpoint (no weights are downloaded)."
            )
        if config_file is not None:
            open_clip.add_model_config(config_file)
        if model_name not in open_clip.list_models():
            raise ValueError(f"Unknown open_clip model {model_name!r}; give --clip-config for custom architectures.")
        model = open_clip.create_model(model_name, pretrained=checkpoint)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = model.visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1))
        self.num_features = model.text_projection.shape[-1] if hasattr(model, "text_projection") else None

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings ``[N, D]`` of uint8 images ``[N, C, H, W]`` (bicubic resize, CLIP norm)."""
        x = images.to(self.mean.device).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(
            x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
        emb = self.model.encode_image((x - self.mean) / self.std)
        return nn.functional.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.mean.device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Per-image CLIP score ``100 * max(cos, 0)``, ``[N]``."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts.")
        cos = (self(images) * self.encode_text(prompts)).sum(-1)
        return 100.0 * cos.clamp_min(0)


class Scorers:
    """Every metric of one evaluation setting, accumulated batch by batch and reduced across processes.

    Args:
        fds: ``{"fd_domain": FrechetDistance, "fid": ..., "fd_clip": ...}``.
        classifier: domain features whose logits give ``accuracy`` when labels are known.
        clip: a ``ClipModel`` for ``clip_score`` when prompts are known.
    """

    def __init__(
        self, fds: dict[str, FrechetDistance], classifier: DomainFeatures | None = None, clip: ClipModel | None = None
    ):
        self.fds, self.classifier, self.clip = fds, classifier, clip
        self.reset()

    def reset(self) -> None:
        for fd in self.fds.values():
            fd.reset()
        self.sums = {"n": 0.0, "correct": 0.0, "labelled": 0.0, "clip": 0.0, "prompted": 0.0}

    def update(self, images: Tensor, labels: Tensor | None = None, prompts: list[str] | None = None) -> None:
        """Add uint8 images ``[N, C, H, W]`` (with their labels / prompts)."""
        for fd in self.fds.values():
            fd.update(images)
        self.sums["n"] += len(images)
        if labels is not None and self.classifier is not None:
            self.sums["correct"] += float((self.classifier.logits(images).argmax(1).cpu() == labels.cpu()).sum())
            self.sums["labelled"] += len(images)
        if prompts is not None and self.clip is not None:
            self.sums["clip"] += float(self.clip.score(images, prompts).sum())
            self.sums["prompted"] += len(images)

    def compute(self) -> dict:
        sums = torch.tensor(list(self.sums.values()), dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        totals = dict(zip(self.sums, sums.tolist()))
        result = {name: fd.compute() for name, fd in self.fds.items()}
        result["n"] = int(totals["n"])
        if totals["labelled"]:
            result["accuracy"] = totals["correct"] / totals["labelled"]
        if totals["prompted"]:
            result["clip_score"] = totals["clip"] / totals["prompted"]
        return result


def fd_callback(
    scorers: Scorers,
    every: int,
    num_samples: int,
    num_classes: int,
    shape: tuple[int, ...],
    seed: int = 0,
    batch_size: int = 250,
):
    """A ``Trainer`` callback that scores ``trainer.sample`` (the EMA student, if kept) every ``every`` steps and logs ``eval/<metric>``.

    Samples are class-balanced when ``num_classes`` > 0; each process scores its own shard and the metrics
    are reduced across processes.
    """

    def callback(trainer) -> None:
        if trainer.step % every and trainer.step != trainer.config.max_steps:
            return
        acc = trainer.accelerator
        part = shard(num_samples, acc.process_index, acc.num_processes)
        noise = seeded_noise(num_samples, shape, seed)[part]
        labels = balanced_labels(num_samples, num_classes)[part] if num_classes else None
        scorers.reset()
        # stochastic samplers draw from the global RNG: fork it, so that evaluating never changes training
        with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
            torch.manual_seed(seed + acc.process_index)
            for i in range(0, len(noise), batch_size):
                cond = None if labels is None else Condition(labels=labels[i : i + batch_size].to(acc.device))
                images = to_uint8(trainer.sample(noise[i : i + batch_size].to(acc.device), cond)).cpu()
                scorers.update(images, None if labels is None else labels[i : i + batch_size])
        trainer.log({f"eval/{k}": v for k, v in scorers.compute().items() if k != "n"})

    return callback


def domain_scorers(classifier_folder: str | os.PathLike, device="cpu") -> Scorers:
    """FD in domain-classifier space against its shipped real test-set statistics, plus class accuracy."""
    net = DomainFeatures(DomainClassifier.from_pretrained(classifier_folder)).to(device)
    reference = ReferenceStats.load(os.path.join(classifier_folder, "reference-test.npz"))
    return Scorers({"fd_domain": FrechetDistance(net, reference)}, net)
