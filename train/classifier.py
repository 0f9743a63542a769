"""Train the domain classifier used for FD and class-accuracy on Fashion-MNIST, and its reference statistics.

    python train/classifier.py --data /usr/share/datasets/fashion-mnist --out assets/fashion-classifier

Writes the classifier (config.json + model.safetensors), the feature statistics of the real test split
(``reference-test.npz``: mu, sigma, n, accuracy) and a README with the measured test accuracy.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stepdistill.cli import run_cli
from stepdistill.data import from_uint8, load_fashion_mnist
from stepdistill.features import DomainClassifier
from stepdistill.metrics import batched, feature_stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default="/usr/share/datasets/fashion-mnist", help="folder of Fashion-MNIST idx files"
    )
    parser.add_argument("--out", default="assets/fashion-classifier", help="output folder")
    parser.add_argument("--resolution", type=int, default=16, help="image size the classifier sees")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    start = time.time()
    train_x, train_y = load_fashion_mnist(args.data, "train")
    test_x, test_y = load_fashion_mnist(args.data, "test")
    train_x, test_x = from_uint8(train_x, args.resolution), from_uint8(test_x, args.resolution)
    train_y, test_y = torch.from_numpy(train_y), torch.from_numpy(test_y)

    model = DomainClassifier(resolution=args.resolution)
    steps = args.epochs * (len(train_x) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    bar = tqdm(total=steps, desc="classifier")
    for _ in range(args.epochs):
        order = torch.randperm(len(train_x))
        for i in range(len(train_x) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            # No augmentation: a feature network trained with flips (or shifts) cannot see a generator that makes
            # those errors, and Fashion-MNIST is not flip-symmetric (shoes all face one way).
            x = train_x[idx]
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    model.eval()
    logits = batched(model, test_x)
    accuracy = (logits.argmax(1) == test_y).float().mean().item()
    mu, sigma = feature_stats(batched(model.features, test_x))
    model.save_pretrained(args.out)
    np.savez(os.path.join(args.out, "reference-test.npz"), mu=mu, sigma=sigma, n=len(test_x), accuracy=accuracy)
    wall = time.time() - start
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(
            {**vars(args), "augmentation": "none", "test_accuracy": accuracy, "wall_time_s": round(wall, 1)},
            f,
            indent=2,
        )
    print(f"test accuracy {accuracy:.4f} at {args.resolution}px, wall time {wall:.0f} s")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
