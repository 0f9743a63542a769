"""A class-conditional few-step diffusion pipeline for diffusers (self-contained: imports only diffusers/torch).

Loads with plain diffusers, without stepdistill installed:

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)   # folder holds this file
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline="path/to/pipeline_class_conditional.py",
                                             trust_remote_code=True)
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=4, guidance_scale=2.0).images

Works with any diffusers scheduler whose ``step(model_output, t, sample)`` follows the usual contract
(DDIM, LCM, Euler, ...). Classifier-free guidance uses the UNet's last class embedding as the null class
and the standard form ``u + w (c - u)``; a UNet with ``time_cond_proj_dim`` (a guidance-conditioned student)
takes ``w`` as an embedding in a single pass instead.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor


def _guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``w * 1000`` (LCM's w-embedding), ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=w.device) / (half - 1))
    args = (w.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class ClassConditionalPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Class-conditional image generation with a ``UNet2DConditionModel`` (or ``UNet2DModel``) and a scheduler.

    LoRA adapters in diffusers' format (e.g. an LCM-LoRA) load with the usual ``load_lora_weights``,
    ``set_adapters``, ``fuse_lora`` / ``unfuse_lora`` and ``unload_lora_weights`` calls (UNet only).

    Args:
        unet: a class-conditional UNet whose last class embedding is the null (unconditional) class.
        scheduler: any diffusers scheduler configured for the model (its ``prediction_type`` is honoured).
    """

    model_cpu_offload_seq = "unet"
    text_encoder = None  # no text encoder: LoRA loading touches the UNet only

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def load_lora_into_text_encoder(cls, *args, text_encoder=None, **kwargs):
        if text_encoder is not None:  # there is none: skip diffusers' "no text-encoder keys" warning
            super().load_lora_into_text_encoder(*args, text_encoder=text_encoder, **kwargs)

    @property
    def null_class(self) -> int:
        return self.unet.config.num_class_embeds - 1

    def _model_output(self, x, t, labels, guidance_scale):
        unet = self.unet
        x_in = self.scheduler.scale_model_input(x, t)
        kwargs = {"encoder_hidden_states": None} if hasattr(unet.config, "cross_attention_dim") else {}
        if getattr(unet.config, "time_cond_proj_dim", None):
            w = torch.full((len(x),), guidance_scale, device=x.device)
            kwargs["timestep_cond"] = _guidance_embedding(w, unet.config.time_cond_proj_dim).to(unet.dtype)
            return unet(x_in, t, class_labels=labels, return_dict=False, **kwargs)[0]
        if guidance_scale == 1.0:
            return unet(x_in, t, class_labels=labels, return_dict=False, **kwargs)[0]
        null = torch.full_like(labels, self.null_class)
        both = unet(torch.cat([x_in, x_in]), t, class_labels=torch.cat([null, labels]), return_dict=False, **kwargs)[0]
        out_u, out_c = both.chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps: int = 4,
        guidance_scale: float = 1.0,
        generator=None,
        latents: torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate one image per class label.

        Args:
            class_labels: an int, a list of ints or a ``[B]`` tensor of class ids.
            num_inference_steps: sampler steps (ignored when ``timesteps`` is given).
            guidance_scale: classifier-free guidance scale ``w`` (1 = no guidance).
            generator: a ``torch.Generator`` (or list) for the initial noise and stochastic schedulers.
            latents: ``[B, C, H, W]`` initial noise instead of drawing it.
            timesteps: explicit training timesteps, for schedulers that accept them.
            eta: the stochasticity of schedulers whose ``step`` takes one (DDIM, TCD), as in diffusers' pipelines
                (0: deterministic).
            output_type: ``"pil"``, ``"np"`` (uint8-ready floats in [0, 1], NHWC) or ``"pt"`` (NCHW in [-1, 1]).
        """
        unet = self.unet
        labels = torch.as_tensor(class_labels, device=self._execution_device).long().reshape(-1)
        if labels.min() < 0 or labels.max() >= self.null_class:
            raise ValueError(f"class_labels must be in [0, {self.null_class - 1}], got {labels.tolist()}.")
        size = unet.config.sample_size
        shape = (len(labels), unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=unet.dtype)
        x = latents.to(self._execution_device, unet.dtype) * self.scheduler.init_noise_sigma
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=self._execution_device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        step_kwargs = {"eta": eta} if "eta" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self._model_output(x, t, labels, guidance_scale)
            x = self.scheduler.step(out, t, x, generator=generator, return_dict=False, **step_kwargs)[0]
        if output_type == "pt":
            images = x
        else:
            images = ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
            elif output_type != "np":
                raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
