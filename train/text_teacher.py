"""Train the bundled text-to-image teacher: a tiny latent diffusion model of Fashion-MNIST in the
StableDiffusionPipeline layout (AutoencoderKL, CLIPTextModel + an offline CLIP tokenizer, UNet2DConditionModel
with cross-attention, DDIM scheduler), captioned from the class names ("a photo of an ankle boot", ...).

    python train/text_teacher.py --data /usr/share/datasets/fashion-mnist --out assets/fashion-text-teacher

Two stages: the VAE learns to reconstruct the images (MSE + a small KL term), then the UNet and the text encoder
learn the denoising loss (v-prediction, cosine schedule) on the VAE's latents, with 10 % of the captions replaced
by the empty prompt for classifier-free guidance. No augmentation (Fashion-MNIST is not mirror-symmetric). The
result loads with ``StableDiffusionPipeline.from_pretrained(OUT)`` and with ``--teacher OUT`` in every train script.
"""

from __future__ import annotations

import stepdistill  # noqa: F401  (first: it quiets bitsandbytes, which importing diffusers can load)

# isort: split
import argparse
import os
import tempfile
import time

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from stepdistill.cli import run_cli
from stepdistill.data import save_grid
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.ema import EMA
from stepdistill.io import atomic_dir, write_training_record
from stepdistill.losses import denoising_loss
from stepdistill.sampling import ddim_sample
from stepdistill.schedules import Schedule
from stepdistill.teacher_training import batches, fashion_training_data, fit, teacher_scheduler, warmup_cosine
from stepdistill.text import LatentCodec, write_clip_tokenizer

TEMPLATES = ("a photo of {}", "{}", "an image of {}", "a picture of {}", "a product photo of {}")
NAMES = (
    "a T-shirt",
    "trousers",
    "a pullover",
    "a dress",
    "a coat",
    "a sandal",
    "a shirt",
    "a sneaker",
    "a bag",
    "an ankle boot",
)  # FASHION_CLASSES in caption form, in class order


def captions() -> tuple[list[str], torch.Tensor]:
    """Every caption (template x class) and its class."""
    pairs = [(t.format(name), c) for c, name in enumerate(NAMES) for t in TEMPLATES]
    return [p for p, _ in pairs], torch.tensor([c for _, c in pairs])


def write_prompt_file(path: str) -> None:
    """The evaluation prompts: the first template for each class, with its label (``eval/evaluate.py --prompts``
    gives class-balanced samples and their class accuracy from it)."""
    with open(path, "w") as f:
        f.write("caption,label\n" + "".join(f"{TEMPLATES[0].format(name)},{c}\n" for c, name in enumerate(NAMES)))


def train_vae(data: torch.Tensor, args) -> tuple[AutoencoderKL, torch.Tensor]:
    """The VAE trained on ``data`` (scaling_factor: 1 / std of its latents) and the scaled latents of ``data``."""
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=tuple(args.vae_channels),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=args.resolution,
    )

    def loss_fn(idx):
        posterior = vae.encode(data[idx]).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return (recon - data[idx]).pow(2).mean() + args.kl_weight * posterior.kl().mean()

    steps = batches(len(data), args.batch_size, args.vae_iterations)
    lr_factor = warmup_cosine(args.warmup, args.vae_iterations)
    fit(
        loss_fn, list(vae.parameters()), steps, args.vae_iterations, args.lr, lr_factor, max_grad_norm=None, desc="vae"
    )
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(data[i : i + 1000]).latent_dist.mode() for i in range(0, len(data), 1000)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, latents * vae.config.scaling_factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default="/usr/share/datasets/fashion-mnist", help="folder of Fashion-MNIST idx files"
    )
    parser.add_argument("--out", default="assets/fashion-text-teacher", help="output folder (replaced atomically)")
    parser.add_argument("--resolution", type=int, default=16, help="image size (latents are half of it)")
    parser.add_argument("--vae-channels", type=int, nargs="+", default=[32, 64], help="VAE block widths")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="UNet block widths")
    parser.add_argument("--text-width", type=int, default=32, help="CLIP text encoder width (2 layers)")
    parser.add_argument("--vae-iterations", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=3000, help="UNet + text encoder iterations")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up iterations")
    parser.add_argument("--kl-weight", type=float, default=1e-6, help="KL weight of the VAE loss")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="probability of the empty prompt")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def build_text_networks(args, tokenizer) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    """The 2-layer CLIP text encoder and the latent UNet that cross-attends to it."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_width,
        intermediate_size=2 * args.text_width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(
        sample_size=args.resolution // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(args.channels),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=args.text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return text_encoder, unet


def main():
    args = build_parser().parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    data, labels = fashion_training_data(args.data, args.resolution)
    vae, latents = train_vae(data, args)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, max_merges=2000))
    text_encoder, unet = build_text_networks(args, tokenizer)
    scheduler = teacher_scheduler()
    denoiser = Denoiser(unet, Schedule.from_scheduler_config(dict(scheduler.config)), "v")
    texts, text_class = captions()
    ids = tokenizer([*texts, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    per_class = torch.stack([torch.nonzero(text_class == c).flatten() for c in range(len(NAMES))])  # [10, T]

    def loss_fn(idx):
        # a random template of each sample's class, or the empty prompt (index len(texts))
        which = per_class[labels[idx], torch.randint(len(TEMPLATES), (len(idx),))]
        which = torch.where(torch.rand(len(idx)) < args.caption_dropout, len(texts), which)
        embeddings = text_encoder(ids)[0]  # all captions at once: [T + 1, 77, D]
        return denoising_loss(denoiser, latents[idx], Condition(text=embeddings[which]))

    ema = {unet: EMA(unet, args.ema_decay), text_encoder: EMA(text_encoder, args.ema_decay)}
    params = [*unet.parameters(), *text_encoder.parameters()]
    steps = batches(len(latents), args.batch_size, args.iterations)
    lr_factor = warmup_cosine(args.warmup, args.iterations)
    loss = fit(loss_fn, params, steps, args.iterations, args.lr, lr_factor, ema, desc="unet")
    for network, average in ema.items():
        average.copy_to(network)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_text_teacher(args, pipe, denoiser, ids, per_class, texts, loss, time.time() - start)


def save_text_teacher(args, pipe, denoiser, ids, per_class, texts, loss: float, wall: float) -> None:
    """Write the pipeline folder (atomically) with a 50-step sample grid, the evaluation prompts and the record."""
    text_encoder = pipe.text_encoder
    with torch.no_grad():
        cond = Condition(text=text_encoder(ids[per_class[:, 0].repeat_interleave(8)])[0])
        denoiser.null_text = text_encoder(ids[-1:])[0]
        noise = torch.randn(
            len(cond), 4, args.resolution // 2, args.resolution // 2, generator=torch.Generator().manual_seed(0)
        )
        samples = LatentCodec(pipe.vae).decode(
            ddim_sample(denoiser.frozen(), noise, cond, num_steps=50, guidance_scale=2.0)
        )
    with atomic_dir(args.out) as tmp:
        pipe.save_pretrained(tmp)
        save_grid(samples, os.path.join(tmp, "samples.png"), nrow=8, scale=3)
        write_prompt_file(os.path.join(tmp, "prompts.csv"))
        info = {
            **vars(args),
            "captions": texts,
            "augmentation": "none",
            "num_parameters": {
                name: sum(p.numel() for p in getattr(pipe, name).parameters())
                for name in ("unet", "text_encoder", "vae")
            },
            "train_wall_time_s": round(wall, 1),
            "final_loss": loss,
            "torch": torch.__version__,
        }
        write_training_record(tmp, args.out, info)
    print(f"trained in {wall:.0f} s; wrote {args.out}")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
