"""Backbone adapters: how each model family is called with a ``Condition``.

The Denoiser knows the process (schedule, prediction type, guidance); an adapter knows one family of networks:
which keyword carries class labels, text embeddings, SDXL's added conditions or a guidance embedding, and where
its bottleneck features are (DMD2's GAN head reads them). Strategies see neither: a new family is one adapter
registered here, with no change to any strategy.

Families: diffusers ``UNet2DModel`` (class labels only) and ``UNet2DConditionModel`` (class labels, text
cross-attention, SDXL ``text_embeds``/``time_ids``, ``timestep_cond``), and the SD3 transformer
``SD3Transformer2DModel`` (``encoder_hidden_states`` + ``pooled_projections``, no convolutional bottleneck).
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


class BackboneAdapter:
    """Maps ``(x_t, timestep, Condition)`` to one family's call and returns its raw output ``[B, C, H, W]``."""

    feature_module: ClassVar[str | None] = "mid_block"  # the bottleneck whose output ``capture_features`` returns
    takes_guidance_embedding: ClassVar[bool] = False

    def __call__(
        self, backbone: nn.Module, x_t: Tensor, timestep: Tensor, cond: Condition, timestep_cond: Tensor | None
    ) -> Tensor:
        dtype = next(backbone.parameters()).dtype
        kwargs = self.condition_kwargs(backbone, cond, dtype)
        if timestep_cond is not None:
            if not self.takes_guidance_embedding:
                raise TypeError(f"{type(backbone).__name__} cannot take a guidance-scale embedding.")
            kwargs["timestep_cond"] = timestep_cond.to(dtype)
        return backbone(x_t.to(dtype), timestep, return_dict=False, **kwargs)[0]

    def condition_kwargs(self, backbone: nn.Module, cond: Condition, dtype: torch.dtype) -> dict:
        raise NotImplementedError

    @contextmanager
    def capture_features(self, backbone: nn.Module):
        """Within the block, ``store["features"]`` receives the output ``[B, C, h, w]`` of the bottleneck
        (``feature_module``) of every call, through a forward hook (no fork of the backbone's code)."""
        if self.feature_module is None:
            raise ValueError(
                f"{type(backbone).__name__} has no convolutional bottleneck for a GAN head on its features: "
                "set both GAN weights to 0."
            )
        module = backbone.get_submodule(self.feature_module)
        store: dict[str, Tensor] = {}

        def hook(_module, _inputs, output):
            store["features"] = output[0] if isinstance(output, tuple) else output

        handle = module.register_forward_hook(hook)
        try:
            yield store
        finally:
            handle.remove()


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

    feature_module = None

    def __call__(self, backbone, x_t, timestep, cond, timestep_cond):
        if timestep_cond is not None:
            raise TypeError("SD3Transformer2DModel cannot take a guidance-scale embedding.")
        dtype = next(backbone.parameters()).dtype
        kwargs = self.condition_kwargs(backbone, cond, dtype)
        return backbone(hidden_states=x_t.to(dtype), timestep=timestep, return_dict=False, **kwargs)[0]

    def condition_kwargs(self, backbone, cond, dtype):
        if cond.text is None or cond.pooled is None:
            raise ValueError("An SD3 transformer needs prompt embeddings and pooled embeddings (text and pooled).")
        return {"encoder_hidden_states": cond.text.to(dtype), "pooled_projections": cond.pooled.to(dtype)}
