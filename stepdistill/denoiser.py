"""The Denoiser: one wrapper for teacher, student (generator) and fake-score networks.

``Denoiser.forward(x_t, t, cond) -> x0`` is EDM's ``D(x; sigma)`` (Karras et al. 2022, arXiv 2206.00364)
over this library's continuous time ``t`` in [0, 1]; ``kind=`` asks for any other prediction kind. The
wrapper hides the backbone's native prediction type, its timestep convention and classifier-free
guidance (Ho & Salimans 2022, arXiv 2207.12598, Eq. 6 in the standard form ``u + w (c - u)``), so that
strategies never look at any of them. Teacher, student and fake score are the same class and differ only
in their weights and ``requires_grad`` (see ``frozen``, ``trainable_copy`` and ``add_lora``).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from . import lora
from .backbones import adapter_for, captured_levels, supported_backbones
from .io import check_model_path, hub_errors
from .schedules import Prediction, Schedule, check_prediction, combine, load_scheduler_config, split

DEFAULT_LORA_TARGETS = lora.DEFAULT_LORA_TARGETS


@dataclass
class Condition:
    """What a denoiser is conditioned on; every field is optional and batched along dim 0.

    Attributes:
        labels: ``[B]`` int64 class ids (class-conditional pixel models).
        text: ``[B, L, D]`` text-encoder hidden states (text-to-image models).
        pooled: ``[B, D]`` pooled text embeddings (SDXL ``text_embeds``).
        time_ids: ``[B, 6]`` SDXL size/crop conditioning.
    """

    labels: Tensor | None = None
    text: Tensor | None = None
    pooled: Tensor | None = None
    time_ids: Tensor | None = None

    @classmethod
    def from_batch(cls, batch: dict[str, Tensor]) -> Condition | None:
        """The condition of a training batch: ``labels``, ``text`` (or ``encoder_hidden_states``), ``pooled`` and
        ``time_ids`` entries; ``None`` for an unconditional batch. The one place strategies get conditions from."""
        values = {
            "labels": batch.get("labels"),
            "text": batch.get("text", batch.get("encoder_hidden_states")),
            "pooled": batch.get("pooled"),
            "time_ids": batch.get("time_ids"),
        }
        return cls(**values) if any(v is not None for v in values.values()) else None

    def _items(self):
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def __len__(self) -> int:
        items = self._items()
        return len(items[0][1]) if items else 0

    def cat(self, other: Condition) -> Condition:
        """Concatenate two conditions along the batch (both must set the same fields)."""
        mine, theirs = dict(self._items()), dict(other._items())
        if mine.keys() != theirs.keys():
            raise ValueError(f"Cannot concatenate conditions with fields {sorted(mine)} and {sorted(theirs)}.")
        return Condition(**{k: torch.cat([v, theirs[k]]) for k, v in mine.items()})

    def map(self, fn) -> Condition:
        """Apply ``fn`` to every tensor (e.g. ``lambda v: v.to(device)`` or ``lambda v: v[idx]``)."""
        return replace(self, **{k: fn(v) for k, v in self._items()})


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of guidance scales ``w`` ``[B]`` (scaled by 1000, as in LCM).

    Section 4.1 of Luo et al. 2023 (LCM, arXiv 2310.04378): the student takes ``w`` through the same kind of
    Fourier features as the timestep, added to the timestep embedding (``timestep_cond`` in diffusers).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=w.device) / (half - 1))
    args = (w.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class Denoiser(nn.Module):
    """A diffusion backbone seen as ``x0 = D(x_t, t, cond)``.

    Args:
        backbone: a diffusers ``UNet2DConditionModel`` or ``UNet2DModel`` (``None`` for analytic subclasses
            that override ``native``).
        schedule: the forward process the backbone was trained on.
        prediction: the backbone's native output kind (diffusers' names accepted).
        null_class: the class id that means "no class" for classifier-free guidance, if class-conditional.
        guidance_embedding_dim: if set, the guidance scale is fed to the backbone as an embedding
            (``timestep_cond``) in one pass instead of combining a conditional and an unconditional pass.
        null_text: ``[1, L, D]`` text embeddings of the empty prompt, the unconditional branch of text models.
        null_pooled: ``[1, D]`` pooled embeddings of the empty prompt (SDXL).

    How the backbone is called with a ``Condition`` is its family's adapter (``stepdistill.backbones``).
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        schedule: Schedule,
        prediction: str,
        null_class: int | None = None,
        guidance_embedding_dim: int | None = None,
        null_text: Tensor | None = None,
        null_pooled: Tensor | None = None,
    ):
        super().__init__()
        if backbone is not None:
            adapter_for(backbone)  # raises for an unsupported family
        self.backbone = backbone
        self.null_text, self.null_pooled = null_text, null_pooled
        self.schedule = schedule
        self.prediction: Prediction = check_prediction(prediction)
        self.null_class = null_class
        self.guidance_embedding_dim = guidance_embedding_dim

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = "unet",
        scheduler: str | None = None,
        dtype: torch.dtype | None = None,
        null_class: int | None = None,
        **hub_kwargs,
    ) -> Denoiser:
        """Load a backbone and its schedule from a local folder or a Hub id.

        Args:
            path: a pipeline folder/id with ``unet/`` and ``scheduler/`` subfolders, or a model folder.
            subfolder: the backbone's subfolder (``None`` when ``path`` is the model folder itself).
            scheduler: a scheduler config (file or folder) if not ``path/scheduler``.
            dtype: load the weights in this dtype.
            null_class: override the null class; by default the last class embedding of a class-conditional
                model (``num_class_embeds - 1``), this library's convention for classifier-free guidance.
            hub_kwargs: passed to diffusers' ``from_pretrained`` (``revision``, ``variant``, ...).
        """
        import diffusers

        path = os.fspath(path)
        local = check_model_path(path)
        if local and subfolder and not os.path.isdir(os.path.join(path, subfolder)):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise FileNotFoundError(f"{path!r} has neither a {subfolder!r} subfolder nor a config.json.")
            subfolder = None  # the path is the model folder itself
        revision = {"revision": hub_kwargs["revision"]} if hub_kwargs.get("revision") else {}
        with hub_errors(path):
            config = diffusers.UNet2DConditionModel.load_config(path, subfolder=subfolder, **revision)
            _check_backbone_class(config.get("_class_name"), os.path.join(path, subfolder or ""))
            model_cls = getattr(diffusers, config["_class_name"])
            backbone = model_cls.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype, **hub_kwargs)
            if scheduler is None and not local:
                scheduler_config = diffusers.DDPMScheduler.load_config(path, subfolder="scheduler", **revision)
            else:
                scheduler_config = load_scheduler_config(scheduler or path)
        schedule = Schedule.from_scheduler_config(scheduler_config)
        # flow-matching schedulers carry no prediction_type: their models predict the velocity
        prediction = scheduler_config.get("prediction_type", "flow" if schedule.kind == "flow" else "epsilon")
        if null_class is None and getattr(backbone.config, "num_class_embeds", None):
            null_class = backbone.config.num_class_embeds - 1
        time_cond = getattr(backbone.config, "time_cond_proj_dim", None)
        return cls(backbone, schedule, prediction, null_class=null_class, guidance_embedding_dim=time_cond)

    # ------------------------------------------------------------------------------------------- roles
    def frozen(self, dtype: torch.dtype | None = None) -> Denoiser:
        """Make this the teacher role in place: eval mode, no gradients, optionally cast. Returns ``self``."""
        self.requires_grad_(False).eval()
        if dtype is not None:
            self.to(dtype)
        return self

    def trainable_copy(self, dtype: torch.dtype = torch.float32) -> Denoiser:
        """A trainable deep copy (student / generator / fake score initialised from this network)."""
        clone = copy.deepcopy(self).to(dtype)
        clone.requires_grad_(True).train()
        return clone

    def add_lora(
        self,
        rank: int,
        alpha: float | None = None,
        target_modules: list[str] | None = None,
        adapter_name: str = "default",
    ) -> Denoiser:
        """Freeze the base weights and add a trainable peft LoRA adapter (in place; see ``lora.add_lora``).
        Returns ``self``."""
        lora.add_lora(self.backbone, rank, alpha, target_modules, adapter_name)
        self.train()
        return self

    def with_guidance_embedding(self, dim: int) -> Denoiser:
        """Give the backbone a zero-initialised guidance-scale input (diffusers' ``time_cond_proj_dim``), in place.

        The UNet is rebuilt with ``time_cond_proj_dim=dim`` and its weights copied; the new projection
        ``time_embedding.cond_proj`` starts at zero, so the output is unchanged until trained: the
        initialisation of w-conditioned students (LCM Sec. 4.1, guided PD stage 1).
        """
        old = self.backbone
        if type(old).__name__ != "UNet2DConditionModel":
            raise TypeError(
                f"A guidance embedding needs a UNet2DConditionModel, not {type(old).__name__}: train this student "
                "at one fixed guidance scale instead (--guidance-embedding-dim none)."
            )
        param = next(old.parameters())
        new = type(old).from_config({**old.config, "time_cond_proj_dim": dim}).to(param.device, param.dtype)
        missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
        if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
            raise ValueError(f"Unexpected weights when adding a guidance embedding: {missing + unexpected}.")
        nn.init.zeros_(new.time_embedding.cond_proj.weight)
        new.requires_grad_(param.requires_grad).train(old.training)
        self.backbone, self.guidance_embedding_dim = new, dim
        return self

    def merged_copy(self) -> Denoiser:
        """A copy with its LoRA adapters fused into the base weights and removed (a plain full network)."""
        if not lora.has_lora(self.backbone):
            raise ValueError("merged_copy() needs a network with LoRA adapters (see add_lora).")
        clone = copy.deepcopy(self)
        lora.merge_lora(clone.backbone)
        return clone.requires_grad_(False)

    def adapters_disabled(self):
        """Context: the base network without its LoRA adapters (LCM-LoRA's teacher, no second copy in memory)."""
        return lora.adapters_disabled(self.backbone)

    def check_matches(self, other: Denoiser, role: str = "student") -> None:
        """Raise ``ValueError`` if ``other`` (e.g. a student loaded from disk) cannot stand in for this network:
        a different sample shape, class set, schedule or prediction type."""
        problems = []
        if self.schedule.kind != other.schedule.kind or (
            self.schedule.kind == "discrete"
            and not torch.allclose(self.schedule.alphas_cumprod, other.schedule.alphas_cumprod, atol=1e-6)
        ):
            problems.append("noise schedule")
        if None not in (self.null_class, other.null_class) and self.null_class != other.null_class:
            problems.append(f"null class ({self.null_class} vs {other.null_class})")
        if self.backbone is not None and other.backbone is not None:
            for key in ("sample_size", "in_channels", "out_channels", "num_class_embeds"):
                mine, theirs = getattr(self.backbone.config, key, None), getattr(other.backbone.config, key, None)
                if mine != theirs:
                    problems.append(f"{key} ({mine} vs {theirs})")
        if problems:
            raise ValueError(f"The {role} does not match the teacher: different {', '.join(problems)}.")

    # ------------------------------------------------------------------------------------------ calling
    def native(self, x_t: Tensor, t: Tensor, cond: Condition | None, w: Tensor | None = None) -> Tensor:
        """The backbone's raw output at ``(x_t, t)``, called through its family's adapter.

        Args:
            x_t: ``[B, C, H, W]``; t: ``[B]`` in [0, 1]; cond: batched like ``x_t``;
            w: ``[B]`` guidance scales, only for backbones with a guidance embedding.
        """
        # float32 timesteps (sCM: lower precision time embeddings make grad-norm spikes); float64 for float64 inputs
        time_dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        timestep = self.schedule.model_timestep(t).to(device=x_t.device, dtype=time_dtype)
        adapter = adapter_for(self.backbone)
        distilled = adapter.guidance_distilled(self.backbone)
        if (self.guidance_embedding_dim or distilled) and w is None:
            kind = "a guidance-scale embedding" if self.guidance_embedding_dim else "the guidance scale as an input"
            raise ValueError(f"This denoiser takes {kind}: pass guidance_scale.")
        timestep_cond = guidance_embedding(w, self.guidance_embedding_dim) if self.guidance_embedding_dim else None
        guidance = w if distilled else None
        out = adapter(self.backbone, x_t, timestep, cond or Condition(), timestep_cond, guidance=guidance)
        return out.to(x_t.dtype)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample this network denoises at its default size (latents for a latent model)."""
        if self.backbone is None:
            raise ValueError("This denoiser has no diffusers backbone, so no sample shape of its own.")
        return adapter_for(self.backbone).sample_shape(self.backbone)

    @property
    def guidance_distilled(self) -> bool:
        """Whether the backbone takes the guidance scale as an input and has no unconditional branch (FLUX.1-dev):
        guidance is then one pass at that input, never ``u + w (c - u)``."""
        return self.backbone is not None and adapter_for(self.backbone).guidance_distilled(self.backbone)

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional counterpart of ``cond``: the null class for class labels, the empty prompt's
        embeddings (``null_text`` / ``null_pooled``) for text; SDXL's ``time_ids`` are kept."""
        if self.guidance_distilled:
            raise ValueError(
                f"{type(self.backbone).__name__} is guidance-distilled (FLUX.1-dev): it has no unconditional branch "
                "for classifier-free guidance. Its guidance scale is an input: set the guidance scale alone, and "
                "leave out the options that guide by an unconditional pass."
            )
        if cond.text is not None:
            if self.null_text is None:
                raise ValueError(
                    "Classifier-free guidance on a text condition needs the empty prompt's embeddings: give the "
                    "Denoiser null_text (and null_pooled for SDXL), or pass `uncond` (negative embeddings)."
                )
            b = len(cond.text)
            text = self.null_text.to(cond.text.device, cond.text.dtype).expand(b, -1, -1)
            pooled = cond.pooled
            if pooled is not None:
                if self.null_pooled is None:
                    raise ValueError("SDXL guidance needs null_pooled, the empty prompt's pooled embeddings.")
                pooled = self.null_pooled.to(pooled.device, pooled.dtype).expand(b, -1)
            labels = None if cond.labels is None else torch.full_like(cond.labels, self._null_class())
            return replace(cond, text=text, pooled=pooled, labels=labels)
        if cond.labels is None:
            raise ValueError("Classifier-free guidance needs a class or text condition (or an explicit `uncond`).")
        return replace(cond, labels=torch.full_like(cond.labels, self._null_class()))

    @property
    def can_guide(self) -> bool:
        """Whether classifier-free guidance is possible: a null class, or the empty prompt's embeddings."""
        return self.null_class is not None or self.null_text is not None or self.guidance_distilled

    def _null_class(self) -> int:
        if self.null_class is None:
            raise ValueError("This denoiser has no null class, so it cannot do classifier-free guidance.")
        return self.null_class

    def guided_native(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Condition | None = None,
        guidance_scale=1.0,
        uncond: Condition | None = None,
    ) -> Tensor:
        """Native output with classifier-free guidance ``u + w (c - u)`` (one doubled batch).

        Guidance is applied to the native output; every conversion in ``schedules`` is affine in the
        prediction with the same coefficients for both halves, so this equals guidance on x0, eps or v.
        Scale 1 (or no condition) is a single unguided pass; a backbone that takes the scale as an input (a
        guidance embedding, or FLUX.1-dev's guidance-distilled transformer) is one pass at that input.
        """
        w = torch.as_tensor(guidance_scale, dtype=x_t.dtype, device=x_t.device).expand(len(x_t))
        if self.guidance_embedding_dim or self.guidance_distilled:
            return self.native(x_t, t, cond, w=w)
        if cond is None or not len(cond) or bool((w == 1).all()):
            return self.native(x_t, t, cond)
        uncond = uncond if uncond is not None else self.null_condition(cond)
        both = self.native(torch.cat([x_t, x_t]), torch.cat([t, t]), uncond.cat(cond))
        out_u, out_c = both.chunk(2)  # [B, ...] each
        return out_u + w.view(-1, *[1] * (x_t.ndim - 1)) * (out_c - out_u)

    def split(
        self, x_t: Tensor, t, cond: Condition | None = None, guidance_scale=1.0, uncond: Condition | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x0, eps)`` predicted at ``(x_t, t)``."""
        t = self._as_batch_t(t, x_t)
        alpha, sigma = self.schedule.alpha_sigma(t)
        out = self.guided_native(x_t, t, cond, guidance_scale, uncond)
        return split(out, self.prediction, x_t, alpha, sigma)

    def forward(
        self,
        x_t: Tensor,
        t,
        cond: Condition | None = None,
        guidance_scale=1.0,
        uncond: Condition | None = None,
        kind: Prediction = "x0",
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The prediction of ``kind`` (default the clean sample ``x0``) at ``(x_t, t)``, ``[B, C, H, W]``.

        Strategies call trainable denoisers only through this method, so that distributed wrappers
        (DDP/FSDP, which hook ``forward``) see every call.

        Args:
            x_t: ``[B, C, H, W]`` noisy input; t: ``[B]`` times in [0, 1] (or a scalar);
            cond: the condition; guidance_scale: ``w`` (float or ``[B]``); uncond: explicit negative
            condition; kind: ``"x0"``, ``"eps"``, ``"v"`` or ``"flow"``;
            return_features: also return the backbone's bottleneck features ``[B, C', h, w]`` (of the conditional
                half when guided), e.g. for DMD2's GAN head on the fake score.
        """
        t = self._as_batch_t(t, x_t)
        alpha, sigma = self.schedule.alpha_sigma(t)
        if return_features:
            name = adapter_for(self.backbone).feature_module(self.backbone)
            if name is None:
                raise ValueError(
                    f"{type(self.backbone).__name__} has no bottleneck for a GAN head on its features: "
                    "set both GAN weights to 0."
                )
            with captured_levels(self.backbone, [name]) as store:
                out = self.guided_native(x_t, t, cond, guidance_scale, uncond)
            features = store[name][-len(x_t) :]  # a doubled CFG batch holds [uncond, cond]
        else:
            out = self.guided_native(x_t, t, cond, guidance_scale, uncond)
        if kind != self.prediction:
            out = combine(*split(out, self.prediction, x_t, alpha, sigma), kind, alpha, sigma)
        return (out, features) if return_features else out

    @staticmethod
    def _as_batch_t(t, x_t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        return t.expand(len(x_t)) if t.ndim == 0 else t


def _check_backbone_class(name: str | None, where: str) -> None:
    if name not in supported_backbones():
        raise ValueError(
            f"{where!r} holds a {name or 'model with no _class_name'}, not a denoising UNet "
            f"({' or '.join(supported_backbones())}). Point at a pipeline folder with a 'unet/' subfolder, or at the "
            "UNet's own folder with subfolder=None."
        )
