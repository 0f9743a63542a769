"""Train the bundled class-conditional pixel diffusion teacher on Fashion-MNIST.

    python train/teacher.py --data /usr/share/datasets/fashion-mnist --out assets/fashion-teacher

A diffusers UNet2DConditionModel (PEFT-adapter capable, so that LoRA students export in diffusers'
format) with 10 garment classes plus a null class (id 10) for classifier-free guidance, trained by
v-prediction denoising score matching on the discrete cosine schedule (``squaredcos_cap_v2``, 1000 steps).
Writes ``unet/`` and ``scheduler/`` (diffusers format), ``training.json`` and ``samples.png``.
"""

import stepdistill  # noqa: F401  (first: it quiets bitsandbytes, which importing diffusers can load)

# isort: split
import argparse
import os
import time

import torch
from diffusers import UNet2DConditionModel

from stepdistill.cli import run_cli
from stepdistill.data import FASHION_CLASSES, save_grid
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.ema import EMA
from stepdistill.io import atomic_dir, write_training_record
from stepdistill.losses import denoising_loss, drop_labels
from stepdistill.sampling import ddim_sample
from stepdistill.schedules import Schedule
from stepdistill.teacher_training import batches, fashion_training_data, fit, teacher_scheduler, warmup_cosine


def build_unet(resolution: int, channels: list[int], layers_per_block: int, num_classes: int) -> UNet2DConditionModel:
    """A small class-conditional UNet: attention at the lowest resolution only, no cross-attention."""
    down = ["DownBlock2D"] * (len(channels) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(channels) - 1)
    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2D",
        layers_per_block=layers_per_block,
        num_class_embeds=num_classes + 1,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default="/usr/share/datasets/fashion-mnist", help="folder of Fashion-MNIST idx files"
    )
    parser.add_argument("--out", default="assets/fashion-teacher", help="output folder (replaced atomically)")
    parser.add_argument("--resolution", type=int, default=16, help="training image size (28 = native)")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="UNet block widths")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up iterations")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--label-dropout", type=float, default=0.1, help="probability of the null class")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main():
    args = build_parser().parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    data, labels = fashion_training_data(args.data, args.resolution)
    num_classes = len(FASHION_CLASSES)
    unet = build_unet(args.resolution, args.channels, args.layers_per_block, num_classes)
    scheduler = teacher_scheduler()
    denoiser = Denoiser(unet, Schedule.from_scheduler_config(dict(scheduler.config)), "v", null_class=num_classes)
    ema = EMA(unet, args.ema_decay)

    def loss_fn(idx):
        # No augmentation: a flip would not keep the data's distribution (Fashion-MNIST shoes all face one way).
        cond = drop_labels(Condition(labels=labels[idx]), args.label_dropout, num_classes)
        return denoising_loss(denoiser, data[idx], cond)

    steps = batches(len(data), args.batch_size, args.iterations)
    lr_factor = warmup_cosine(args.warmup, args.iterations, delay_decay=False)
    loss = fit(
        loss_fn, list(unet.parameters()), steps, args.iterations, args.lr, lr_factor, {unet: ema}, desc="teacher"
    )
    ema.copy_to(unet)
    save_teacher(args, unet, scheduler, denoiser.frozen(), loss, time.time() - start)


def save_teacher(args, unet, scheduler, denoiser: Denoiser, loss: float, wall: float) -> None:
    """Write the teacher folder (atomically): its UNet and scheduler, a 50-step sample grid and its training record."""
    num_classes = denoiser.null_class
    grid_labels = torch.arange(num_classes).repeat_interleave(8)
    noise = torch.randn(
        len(grid_labels), 1, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0)
    )
    samples = ddim_sample(denoiser, noise, Condition(labels=grid_labels), num_steps=50, guidance_scale=2.0)
    with atomic_dir(args.out) as tmp:
        unet.save_pretrained(os.path.join(tmp, "unet"))
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        save_grid(samples, os.path.join(tmp, "samples.png"), nrow=8, scale=3)
        info = {
            **vars(args),
            "augmentation": "none",
            "num_parameters": sum(p.numel() for p in unet.parameters()),
            "train_wall_time_s": round(wall, 1),
            "final_loss": loss,
            "torch": torch.__version__,
        }
        write_training_record(tmp, args.out, info)
    print(f"trained {args.iterations} iterations in {wall:.0f} s; wrote {args.out}")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
