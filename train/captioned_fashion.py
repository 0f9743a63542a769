"""Write Fashion-MNIST as a captioned image folder in diffusers' imagefolder layout: one PNG per image and a
``metadata.jsonl`` line ``{"file_name": "images/00000.png", "text": "a photo of an ankle boot", "label": 9}``
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
import io
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
    data: str,
    out: str,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
    shard_size: int = 0,
) -> int:
    """Write ``split`` of the Fashion-MNIST idx files in ``data`` to ``out`` (resized to ``resolution`` if given),
    or with ``shard_size`` as webdataset shards of that many samples; returns the number of images."""
    images, labels = load_fashion_mnist(data, split)
    images, labels = images[:limit], labels[:limit]
    if resolution is not None:
        images = to_uint8(from_uint8(images, resolution))[:, 0].numpy()
    templates = np.random.default_rng(seed).integers(len(TEMPLATES), size=len(labels))
    captions = [TEMPLATES[templates[i]].format(NAMES[int(label)]) for i, label in enumerate(labels)]
    if shard_size:
        write_shards(images, labels, captions, out, shard_size)
        return len(labels)
    with atomic_dir(out) as tmp:
        os.makedirs(os.path.join(tmp, "images"))  # not "train/": `datasets` would read that as a split name
        with open(os.path.join(tmp, "metadata.jsonl"), "w") as f:
            for i, (image, label) in enumerate(tqdm(zip(images, labels), total=len(labels), desc="writing")):
                name = f"images/{i:05d}.png"
                Image.fromarray(np.asarray(image)).save(os.path.join(tmp, name))
                f.write(json.dumps({"file_name": name, "text": captions[i], "label": int(label)}) + "\n")
    return len(labels)


def write_shards(images, labels, captions, out: str, shard_size: int) -> None:
    """The same samples as webdataset shards ``out/shard-NNNNNN.tar`` (``KEY.png``, ``KEY.txt``, ``KEY.cls``),
    written by webdataset's ``ShardWriter``."""
    import webdataset as wds

    with atomic_dir(out) as tmp:
        pattern = os.path.join(tmp, "shard-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
            for i, (image, label) in enumerate(tqdm(zip(images, labels), total=len(labels), desc="writing")):
                png = io.BytesIO()
                Image.fromarray(np.asarray(image)).save(png, format="PNG")
                sink.write({"__key__": f"{i:06d}", "png": png.getvalue(), "txt": captions[i], "cls": int(label)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="assets/fashion-mnist", help="folder of Fashion-MNIST idx files")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption templates")
    parser.add_argument("--resolution", type=int, default=None, help="resize to R x R (default: the native 28 px)")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="write webdataset .tar shards of this many samples (KEY.png, KEY.txt caption, KEY.cls label) instead "
        "of an image folder",
    )
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    n = write_captioned(args.data, args.out, args.split, args.limit, args.seed, args.resolution, args.shard_size)
    print(f"{n} captioned images in {args.out}")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
