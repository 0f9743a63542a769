"""Write a sample grid from a model folder: one row per class, DDIM with classifier-free guidance.

python eval/sample.py --model assets/fashion-teacher --steps 50 --guidance 2 --out outputs/teacher.png
"""

import argparse
import time

import torch

from stepdistill.cli import run_cli
from stepdistill.data import save_grid
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.sampling import ddim_sample


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with unet/ and scheduler/")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--per-class", type=int, default=10, help="samples per class (grid columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of the PNG")
    parser.add_argument("--out", required=True, help="PNG path")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()

    den = Denoiser.from_pretrained(args.model).frozen()
    if den.null_class is None:
        parser.error(f"{args.model} is not class-conditional; this grid has one row per class.")
    cfg = den.backbone.config
    labels = torch.arange(den.null_class).repeat_interleave(args.per_class)
    noise = torch.randn(
        len(labels),
        cfg.in_channels,
        cfg.sample_size,
        cfg.sample_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    start = time.time()
    images = ddim_sample(den, noise, Condition(labels=labels), args.steps, args.guidance, progress=True)
    save_grid(images, args.out, nrow=args.per_class, scale=args.scale)
    print(
        f"wrote {args.out} ({len(labels)} samples, {args.steps} steps, w={args.guidance:g}, "
        f"{time.time() - start:.1f} s)"
    )


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
