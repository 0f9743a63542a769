"""Write Fashion-MNIST as a captioned image folder in diffusers' imagefolder layout: one PNG per image and a
``metadata.jsonl`` line ``{"file_name": "train/00000.png", "text": "a photo of an ankle boot", "label": 9}``
each, with the captions the bundled text-to-image teacher was trained on (a template drawn per image, seeded).
It is the ``--data`` of distilling that teacher:

    python train/captioned_fashion.py --out data/fashion-captioned
    python train/consistency.py --preset fashion-lora --teacher assets/fashion-text-teacher \\
        --data data/fashion-captioned --output-dir outputs/lcm-lora-text

The images are unflipped and unaugmented, at their native 28 px (the train scripts resize them to the teacher's
resolution when they encode them), or with ``--resolution 16`` already resized the way the bundled teachers saw
their training images (antialiased bilinear, ``stepdistill.data.from_uint8``), which the benchmarks use.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from stepdistill.cli import run_cli
from stepdistill.data import from_uint8, load_fashion_mnist, to_uint8
from stepdistill.io import atomic_dir

try:
    from train.text_teacher import NAMES, TEMPLATES
except ImportError:  # run as a script from the repository root
    from text_teacher import NAMES, TEMPLATES


def write_captioned(
    data: str, out: str, split: str = "train", limit: int | None = None, seed: int = 0, resolution: int | None = None
) -> int:
    """Write ``split`` of the Fashion-MNIST idx files in ``data`` to ``out`` (resized to ``resolution`` if given);
    returns the number of images."""
    images, labels = load_fashion_mnist(data, split)
    images, labels = images[:limit], labels[:limit]
    if resolution is not None:
        images = to_uint8(from_uint8(images, resolution))[:, 0].numpy()
    templates = np.random.default_rng(seed).integers(len(TEMPLATES), size=len(labels))
    with atomic_dir(out) as tmp:
        os.makedirs(os.path.join(tmp, split))
        with open(os.path.join(tmp, "metadata.jsonl"), "w") as f:
            for i, (image, label) in enumerate(tqdm(zip(images, labels), total=len(labels), desc="writing")):
                name = f"{split}/{i:05d}.png"
                Image.fromarray(np.asarray(image)).save(os.path.join(tmp, name))
                caption = TEMPLATES[templates[i]].format(NAMES[int(label)])
                f.write(json.dumps({"file_name": name, "text": caption, "label": int(label)}) + "\n")
    return len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="assets/fashion-mnist", help="folder of Fashion-MNIST idx files")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption templates")
    parser.add_argument("--resolution", type=int, default=None, help="resize to R x R (default: the native 28 px)")
    args = parser.parse_args()
    n = write_captioned(args.data, args.out, args.split, args.limit, args.seed, args.resolution)
    print(f"{n} captioned images in {args.out}")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
