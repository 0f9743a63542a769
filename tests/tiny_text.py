"""Tiny Stable Diffusion 1.5-, SDXL-, SD3- and FLUX.1-shaped pipelines built locally: the real diffusers/transformers classes and
hub file layout with random weights, and an offline CLIP tokenizer made from open_clip's BPE merges, so that the
text-to-image code paths run without the network."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
from conftest import tiny_text_unet

from stepdistill.text import write_clip_tokenizer

PROMPTS = ["a photo of an ankle boot", "a photo of a bag", "a sneaker", "a dress", "a shirt", "a coat"]


def _text_encoder(tokenizer, projection: bool, hidden: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(seed: int, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )


def _unet(cross_attention_dim: int, sdxl: bool, seed: int):
    sdxl_conditions = {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 4,
        "projection_class_embeddings_input_dim": 6 * 4 + cross_attention_dim // 2,
    }
    return tiny_text_unet(cross_attention_dim, seed, channels=4, **(sdxl_conditions if sdxl else {}))


def _transformer(seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=8,
    )


def t5_tokenizer():
    """A T5 tokenizer made offline: a SentencePiece-style unigram vocabulary of the words of ``PROMPTS`` (an unknown
    word maps to ``<unk>``) with T5's special tokens and its ``</s>`` after each prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w for p in PROMPTS for w in p.split()})
    tokenizer = Tokenizer(
        models.Unigram([(t, -1.0) for t in ["<pad>", "</s>", "<unk>", *("\u2581" + w for w in words)]], 2)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def _t5_encoder(vocab: int, width: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    return T5EncoderModel(config)


def build_sd3(folder, seed: int = 0, t5: bool = False) -> str:
    """A tiny SD3-shaped pipeline (rectified-flow transformer, two CLIP encoders, and a T5 encoder if ``t5``) in hub
    layout."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, max_merges=2000))
    vae = _vae(seed)
    vae.register_to_config(shift_factor=0.1, scaling_factor=1.5)
    pipe = StableDiffusion3Pipeline(
        transformer=_transformer(seed + 3),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_text_encoder(tokenizer, True, 16, seed + 1),
        tokenizer=tokenizer,
        text_encoder_2=_text_encoder(tokenizer, True, 16, seed + 2),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5_encoder(len(t5_tokenizer()), 32, seed + 4) if t5 else None,
        tokenizer_3=t5_tokenizer() if t5 else None,
    )
    pipe.save_pretrained(os.fspath(folder))
    return os.fspath(folder)


def tiny_flux_transformer(guidance_embeds: bool = True, seed: int = 0):
    """A FLUX-shaped transformer with random weights: 16 latent channels packed to 64, 2 double- and 1
    single-stream blocks, T5 width 32, pooled CLIP width 16, FLUX.1-dev's guidance input if ``guidance_embeds``."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def build_flux(folder, seed: int = 0, guidance_embeds: bool = True) -> str:
    """A tiny FLUX.1-shaped pipeline in hub layout: the transformer above (FLUX.1-dev's guidance input, or
    schnell's none), a 16-channel VAE with a shift and scale, a CLIP encoder (pooled output) and a T5 encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, max_merges=2000))
    vae = _vae(seed, latent_channels=16)
    vae.register_to_config(shift_factor=0.1, scaling_factor=1.5)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256
    )
    pipe = FluxPipeline(
        transformer=tiny_flux_transformer(guidance_embeds, seed + 3),
        scheduler=scheduler,
        vae=vae,
        text_encoder=_text_encoder(tokenizer, False, 16, seed + 1),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(t5_tokenizer()), 32, seed + 4),
        tokenizer_2=t5_tokenizer(),
    )
    pipe.save_pretrained(os.fspath(folder))
    return os.fspath(folder)


def build_pipeline(folder, sdxl: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> str:
    """Save a tiny SD 1.5- (or SDXL-) shaped pipeline in hub layout under ``folder``; returns the folder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = os.fspath(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, max_merges=2000))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    parts = {"vae": _vae(seed), "tokenizer": tokenizer, "scheduler": scheduler}
    if sdxl:
        parts.update(
            text_encoder=_text_encoder(tokenizer, False, 16, seed + 1),
            text_encoder_2=_text_encoder(tokenizer, True, 16, seed + 2),
            tokenizer_2=tokenizer,
            unet=_unet(32, True, seed + 3),
        )
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        parts.update(text_encoder=_text_encoder(tokenizer, False, 16, seed + 1), unet=_unet(16, False, seed + 3))
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.save_pretrained(folder)
    return folder


def captioned_folder(folder, n: int = 12, size: int = 16, seed: int = 0) -> str:
    """``n`` random RGB images with captions from ``PROMPTS`` in diffusers' imagefolder layout (metadata.jsonl)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for i in range(n):
            name = f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, name))
            f.write(json.dumps({"file_name": name, "text": PROMPTS[i % len(PROMPTS)]}) + "\n")
    return os.fspath(folder)
