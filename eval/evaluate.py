"""Score diffusion models by FD and class-accuracy over a sweep of step counts and guidance scales.

    python eval/evaluate.py --model teacher=assets/fashion-teacher --steps 1 2 4 8 50 --guidance 1 2 \\
        --num-samples 5000 --real assets/fashion-mnist --out outputs/eval/teacher

For each (model, steps, guidance) it generates N class-balanced samples with a fixed seed (DDIM), quantises
them to uint8, and compares their features under the domain classifier with the reference statistics of
real test images. ``--real`` adds the real-vs-real floor: FD of N real training images against the same
reference. Writes results.json (every number and its settings), table.md, fd_vs_steps.png and one
sample grid per setting, and prints the table.
"""

import argparse
import json
import os
import platform
import time

import torch

from stepdistill.data import from_uint8, load_fashion_mnist, save_grid
from stepdistill.denoiser import Denoiser
from stepdistill.evaluation import DomainScorer, sweep
from stepdistill import ASSETS
from stepdistill.cli import run_cli
from stepdistill.reporting import plot_metric_vs_steps, results_table


def parse_model(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (os.path.basename(os.path.normpath(spec)), spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="NAME=PATH of a model folder (unet/ + scheduler/); repeat to compare models")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 50], help="sampling step counts")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales (1 = none)")
    parser.add_argument("--num-samples", type=int, default=5000, help="samples per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--classifier", default=os.path.join(ASSETS, "fashion-classifier"), help="domain classifier folder")
    parser.add_argument("--reference", default=None, help="reference statistics npz (default: the classifier's)")
    parser.add_argument("--real", default=None, help="folder of real idx files for the real-vs-real FD floor")
    parser.add_argument("--out", default="outputs/eval", help="output folder")
    args = parser.parse_args()
    if args.num_samples < 2:
        parser.error("--num-samples must be at least 2 (FD needs a covariance).")

    os.makedirs(os.path.join(args.out, "grids"), exist_ok=True)
    scorer = DomainScorer.from_folder(args.classifier, args.reference)
    models = {name: Denoiser.from_pretrained(path).frozen() for name, path in map(parse_model, args.model)}
    result = {"settings": {**vars(args), "feature_network": args.classifier, "reference": scorer.reference,
                           "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}}
    start = time.time()
    if args.real:
        images, labels = load_fashion_mnist(args.real, "train")
        real = from_uint8(images[:args.num_samples], scorer.classifier.resolution)
        result["real_floor"] = {**scorer.score(real, torch.from_numpy(labels[:args.num_samples])),
                                "source": args.real}

    def save_samples(row, images):
        name = f"{row['model']}-{row['steps']}steps-w{row['guidance']:g}.png"
        save_grid(images[:100], os.path.join(args.out, "grids", name), nrow=10, scale=2)

    result["results"] = sweep(models, scorer, args.steps, args.guidance, args.num_samples, args.seed,
                              args.batch_size, on_samples=save_samples)
    result["wall_time_s"] = round(time.time() - start, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = results_table(result)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    plot_metric_vs_steps(result["results"], "fd", os.path.join(args.out, "fd_vs_steps.png"),
                         floor=result.get("real_floor", {}).get("fd"))
    print(table)
    print(f"wrote {args.out}/results.json in {result['wall_time_s']:.0f} s")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
