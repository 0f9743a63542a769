"""Backbone adapters: how each model family is called with a ``Condition``.

The Denoiser knows the process (schedule, prediction type, guidance); an adapter knows one family of networks:
which keyword carries class labels, text embeddings, SDXL's added conditions or a guidance embedding, and where
its bottleneck features are (DMD2's GAN head reads them). Strategies see neither: a new family is one adapter
registered here, with no change to any strategy.

Families: diffusers ``UNet2DModel`` (class labels only) and ``UNet2DConditionModel`` (class labels, text
cross-attention, SDXL ``text_embeds``/``time_ids``, ``timestep_cond``), the SD3 transformer
``SD3Transformer2DModel`` (``encoder_hidden_states`` + ``pooled_projections``; its bottleneck features are the image
tokens of its middle joint-attention block, laid out on the patch grid), and FLUX.1's ``FluxTransformer2DModel``
(packed latents and position ids inside the adapter; FLUX.1-dev's guidance scale is an input).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .denoiser import Condition

ADAPTERS: dict[str, type[BackboneAdapter]] = {}


def register_backbone(*class_names: str):
    """Class decorator: the adapter for backbones whose class is named one of ``class_names``."""

    def wrap(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
        for name in class_names:
            ADAPTERS[name] = cls
        return cls

    return wrap


def supported_backbones() -> tuple[str, ...]:
    return tuple(ADAPTERS)


def adapter_for(backbone: nn.Module) -> BackboneAdapter:
    """The adapter of ``backbone``'s family; ``TypeError`` naming the supported ones otherwise."""
    name = type(backbone).__name__
    if name not in ADAPTERS:
        raise TypeError(f"Unsupported backbone {name}: expected one of {supported_backbones()}.")
    return ADAPTERS[name]()


def call_inputs(args: tuple, kwargs: dict) -> dict:
    """A backbone call's inputs for ``BackboneAdapter.feature_map``: its keyword inputs, and its first input (a
    UNet's ``sample``, a transformer's ``hidden_states``) also as ``"x_t"``."""
    return {**kwargs, "x_t": args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))}


class FeaturesRead(Exception):
    """Raised by ``captured_levels(..., stop=True)`` once every named block has run: the rest of the forward pass
    (a UNet's up blocks, about half its cost) is skipped."""


@contextmanager
def captured_levels(backbone: nn.Module, names: list[str], stop: bool = False):
    """Within the block, ``store[name]`` receives the features ``[B, C, h, w]`` (``BackboneAdapter.feature_map``) of
    block ``name`` of every call (forward hooks; the backbone's code is not forked): the bottleneck that DMD2's GAN
    head reads, or the levels of a discriminator. ``stop``: a call ends, with ``FeaturesRead``, as soon as
    every named block has run (the caller wants the features, not the output)."""
    adapter = adapter_for(backbone)
    store: dict[str, Tensor] = {}

    def remember_input(_module, args, kwargs):
        for name in names:
            store.pop(name, None)
        store["inputs"] = call_inputs(args, kwargs)

    def hook_for(name):
        def hook(_module, _inputs, output):
            store[name] = adapter.feature_map(backbone, output, store["inputs"])
            if stop and all(n in store for n in names):
                raise FeaturesRead

        return hook

    handles = [backbone.register_forward_pre_hook(remember_input, with_kwargs=True)]
    handles += [backbone.get_submodule(name).register_forward_hook(hook_for(name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class BackboneAdapter:
    """Maps ``(x_t, timestep, Condition)`` to one family's call and returns its raw output ``[B, C, H, W]``."""

    takes_guidance_embedding: ClassVar[bool] = False

    def __call__(
        self,
        backbone: nn.Module,
        x_t: Tensor,
        timestep: Tensor,
        cond: Condition,
        timestep_cond: Tensor | None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        if guidance is not None:
            raise TypeError(f"{type(backbone).__name__} takes no guidance input: it is guided by two passes.")
        dtype = next(backbone.parameters()).dtype
        kwargs = self.condition_kwargs(backbone, cond, dtype)
        if timestep_cond is not None:
            if not self.takes_guidance_embedding:
                raise TypeError(f"{type(backbone).__name__} cannot take a guidance-scale embedding.")
            kwargs["timestep_cond"] = timestep_cond.to(dtype)
        return backbone(x_t.to(dtype), timestep, return_dict=False, **kwargs)[0]

    def guidance_distilled(self, backbone: nn.Module) -> bool:
        """Whether the backbone takes the guidance scale as an input (FLUX.1-dev): guided in one pass, with no
        unconditional branch."""
        return False

    def sample_shape(self, backbone: nn.Module) -> tuple[int, int, int]:
        """``(C, H, W)`` of the samples (pixels or latents) the backbone denoises at its default size."""
        config = backbone.config
        return (config.in_channels, config.sample_size, config.sample_size)

    def condition_kwargs(self, backbone: nn.Module, cond: Condition, dtype: torch.dtype) -> dict:
        raise NotImplementedError

    def feature_module(self, backbone: nn.Module) -> str | None:
        """The name of the bottleneck block, whose features DMD2's GAN head reads (``None``: there is none)."""
        return "mid_block" if getattr(backbone, "mid_block", None) is not None else None

    def feature_channels(self, backbone: nn.Module) -> int:
        """Channels ``C`` of the bottleneck's features (``feature_module``)."""
        return backbone.config.block_out_channels[-1]

    def feature_map(self, backbone: nn.Module, output, inputs: dict) -> Tensor:
        """The output of ``feature_module`` as features ``[B, C, h, w]``; ``inputs``: the backbone call's keyword
        inputs, its first one (the noisy input as the backbone takes it) also as ``"x_t"`` (``call_inputs``)."""
        return output[0] if isinstance(output, tuple) else output


@register_backbone("UNet2DModel")
class UNet2DAdapter(BackboneAdapter):
    """diffusers ``UNet2DModel``: unconditional or class-conditional (``class_labels``) pixel models."""

    def condition_kwargs(self, backbone, cond, dtype):
        if cond.text is not None or cond.pooled is not None:
            raise ValueError("A UNet2DModel takes no text condition; use a UNet2DConditionModel teacher.")
        return {"class_labels": cond.labels}


@register_backbone("UNet2DConditionModel")
class UNet2DConditionAdapter(BackboneAdapter):
    """diffusers ``UNet2DConditionModel``: class labels, text cross-attention (SD 1.x/2.x), SDXL's added
    conditions (``text_embeds`` = pooled, ``time_ids``), and a guidance embedding (``timestep_cond``)."""

    takes_guidance_embedding = True

    def condition_kwargs(self, backbone, cond, dtype):
        kwargs = {
            "class_labels": cond.labels,
            "encoder_hidden_states": None if cond.text is None else cond.text.to(dtype),
        }
        if cond.pooled is not None or cond.time_ids is not None:
            if cond.pooled is None or cond.time_ids is None:
                raise ValueError("SDXL conditioning needs both pooled text embeddings and time_ids.")
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)}
        return kwargs


@register_backbone("SD3Transformer2DModel")
class SD3TransformerAdapter(BackboneAdapter):
    """diffusers ``SD3Transformer2DModel`` (Stable Diffusion 3): joint attention over the prompt's token embeddings
    (``encoder_hidden_states``) and the pooled CLIP embeddings (``pooled_projections``), timestep ``sigma * 1000``."""

    def feature_module(self, backbone):
        return f"transformer_blocks.{len(backbone.transformer_blocks) // 2}"  # the middle joint-attention block

    def feature_channels(self, backbone):
        return backbone.config.num_attention_heads * backbone.config.attention_head_dim

    def feature_map(self, backbone, output, inputs):
        """The middle block's image tokens ``[B, h*w, C]`` (it returns ``(context, image)``) on the patch grid."""
        tokens = output[1]
        patch = backbone.config.patch_size
        h, w = inputs["x_t"].shape[-2] // patch, inputs["x_t"].shape[-1] // patch
        return tokens.transpose(1, 2).reshape(len(tokens), -1, h, w)

    def __call__(self, backbone, x_t, timestep, cond, timestep_cond, guidance=None):
        if timestep_cond is not None or guidance is not None:
            raise TypeError("SD3Transformer2DModel takes no guidance input: it is guided by two passes.")
        dtype = next(backbone.parameters()).dtype
        kwargs = self.condition_kwargs(backbone, cond, dtype)
        return backbone(hidden_states=x_t.to(dtype), timestep=timestep, return_dict=False, **kwargs)[0]

    def condition_kwargs(self, backbone, cond, dtype):
        if cond.text is None or cond.pooled is None:
            raise ValueError("An SD3 transformer needs prompt embeddings and pooled embeddings (text and pooled).")
        return {"encoder_hidden_states": cond.text.to(dtype), "pooled_projections": cond.pooled.to(dtype)}


def pack_latents(latents: Tensor) -> Tensor:
    """FLUX's packing: latents ``[B, C, H, W]`` -> tokens ``[B, (H/2)(W/2), 4C]`` of 2x2 patches (as
    ``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: the latents' height and width must be even, got {h}x{w}.")
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """``pack_latents``' inverse: tokens ``[B, (H/2)(W/2), 4C]`` -> latents ``[B, C, H, W]``."""
    b, _, d = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, d // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=None) -> Tensor:
    """FLUX's image position ids ``[(H/2)(W/2), 3]`` of a ``height`` x ``width`` latent: ``(0, row, column)`` of
    each packed patch (as ``FluxPipeline._prepare_latent_image_ids``)."""
    rows = torch.arange(height // 2, dtype=torch.float32)[:, None].expand(-1, width // 2)
    cols = torch.arange(width // 2, dtype=torch.float32)[None, :].expand(height // 2, -1)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


@register_backbone("FluxTransformer2DModel")
class FluxTransformerAdapter(SD3TransformerAdapter):
    """diffusers ``FluxTransformer2DModel`` (FLUX.1): packed 2x2 latent patches with image and text position ids,
    the T5 token embeddings (``encoder_hidden_states``) and the pooled CLIP embedding (``pooled_projections``),
    timestep ``sigma`` (``sigma * 1000 / 1000``); FLUX.1-dev (``guidance_embeds``) takes the guidance scale as an
    input (``guidance``) and has no unconditional branch. The latents stay ``[B, C, H, W]`` outside the adapter."""

    def guidance_distilled(self, backbone):
        return bool(backbone.config.guidance_embeds)

    def sample_shape(self, backbone):
        """FLUX's latents before packing: a quarter of the packed channels, at FluxPipeline's default 128 x 128 (1024
        pixels); the transformer itself takes any even latent size."""
        return (backbone.config.in_channels // 4, 128, 128)

    def feature_map(self, backbone, output, inputs):
        """The middle double-stream block's image tokens ``[B, h*w, C]`` on the grid of packed patches (read from
        the call's image position ids)."""
        tokens, ids = output[1], inputs["img_ids"]
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        return tokens.transpose(1, 2).reshape(len(tokens), -1, h, w)

    def __call__(self, backbone, x_t, timestep, cond, timestep_cond, guidance=None):
        if timestep_cond is not None:
            raise TypeError("FluxTransformer2DModel takes no guidance-scale embedding (timestep_cond).")
        distilled = self.guidance_distilled(backbone)
        if distilled and guidance is None:
            raise ValueError("This FLUX transformer is guidance-distilled: it needs the guidance scale as an input.")
        if guidance is not None and not distilled:
            raise TypeError("This FLUX transformer has no guidance input (guidance_embeds=False, as FLUX.1-schnell).")
        dtype = next(backbone.parameters()).dtype
        kwargs = self.condition_kwargs(backbone, cond, dtype)
        h, w = x_t.shape[-2:]
        text_ids = torch.zeros(kwargs["encoder_hidden_states"].shape[1], 3, device=x_t.device, dtype=dtype)
        out = backbone(
            hidden_states=pack_latents(x_t.to(dtype)),
            timestep=(timestep / 1000).to(dtype),
            guidance=None if guidance is None else guidance.to(torch.float32),
            img_ids=latent_image_ids(h, w, x_t.device, dtype),
            txt_ids=text_ids,
            return_dict=False,
            **kwargs,
        )[0]
        return unpack_latents(out, h, w)

    def condition_kwargs(self, backbone, cond, dtype):
        if cond.text is None or cond.pooled is None:
            raise ValueError("A FLUX transformer needs T5 prompt embeddings and the pooled CLIP embedding.")
        return {"encoder_hidden_states": cond.text.to(dtype), "pooled_projections": cond.pooled.to(dtype)}
