"""Image data: Fashion-MNIST style idx files and the preprocessing shared by training and evaluation.

Images live in [-1, 1] as ``[N, C, H, W]`` float tensors everywhere in the library; ``to_uint8`` and
``from_uint8`` convert at the edges (files, classifiers, FID networks).
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .hf_datasets import DatasetImages, load_dataset_images

# Fashion-MNIST's class names, index = label (Xiao et al. 2017, arXiv 1708.07747).
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"idx file {path!r} does not exist.")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path!r} is not an idx file of unsigned bytes (bad magic number).")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path!r} is truncated: header says {shape}, found {body.size} bytes.")
    return body.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped idx file (the inverse of ``read_idx``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(os.fspath(path), "wb", mtime=0) as f:  # mtime=0: byte-identical reruns
        f.write(header + array.tobytes())


def load_fashion_mnist(folder: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images [N, 28, 28] uint8, labels [N] int64)`` from a folder of Fashion-MNIST idx files.

    The folder holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` as distributed by the dataset
    (Debian: ``apt-get install dataset-fashion-mnist``, files in /usr/share/datasets/fashion-mnist/).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}.")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Data folder {folder!r} does not exist. Install Fashion-MNIST with "
            "`apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist) or use assets/fashion-mnist."
        )
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        stem = f"{_SPLITS[split]}-{kind}-ubyte"
        for name in (stem + ".gz", stem):
            if os.path.isfile(os.path.join(folder, name)):
                arrays.append(read_idx(os.path.join(folder, name)))
                break
        else:
            raise FileNotFoundError(f"{folder!r} has no {stem}[.gz] for the {split!r} split.")
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"{folder!r}: {len(images)} images but {len(labels)} labels in the {split!r} split.")
    return images, labels.astype(np.int64)


def from_uint8(images: np.ndarray | Tensor, resolution: int | None = None) -> Tensor:
    """uint8 ``[N, H, W]`` or ``[N, C, H, W]`` -> float ``[N, C, R, R]`` in [-1, 1], area-resized to ``resolution``.

    Antialiased bilinear resizing, so that downsampled training and reference images match.
    """
    x = images.float() if isinstance(images, Tensor) else torch.from_numpy(np.array(images)).float()
    if x.ndim == 3:
        x = x[:, None]
    x = x / 127.5 - 1.0
    if resolution is not None and x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """float ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, C, H, W]`` (rounded, clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(x: Tensor, nrow: int) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in [-1, 1] into one uint8 array ``[rows*H, nrow*W(, C)]`` with 1-px white gaps
    (torchvision's ``make_grid``; greyscale stays one channel)."""
    from torchvision.utils import make_grid

    images = to_uint8(x).cpu()
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=255).permute(1, 2, 0).numpy()
    return grid[..., 0] if images.shape[1] == 1 else grid


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int, scale: int = 1) -> None:
    """Save ``image_grid(x, nrow)`` as a PNG, nearest-upscaled by ``scale`` for small images."""
    from PIL import Image

    img = Image.fromarray(image_grid(x, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str | os.PathLike) -> tuple[list[str], np.ndarray | None]:
    """Sorted image paths under ``folder``, and labels from integer-named class subfolders (``0/``, ``1/``, ...;
    ``None`` when the subfolders are not all integers)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"Image folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    parents = [os.path.basename(os.path.dirname(p)) for p in paths]
    labels = np.array([int(p) for p in parents]) if all(p.isdigit() for p in parents) else None
    return paths, labels


def read_image(path, name: str | None = None) -> np.ndarray:
    """One image (a path, or a binary file object called ``name``) as uint8 ``[H, W]`` (greyscale) or
    ``[H, W, 3]``; ``ValueError`` naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16", "I") else "RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Cannot read image {name or path!r}: {err}") from err


def load_image_folder(folder: str | os.PathLike, limit: int | None = None) -> tuple[Tensor, np.ndarray | None]:
    """Load every image under ``folder`` as uint8 ``[N, C, H, W]``, with labels if it has class subfolders.

    Class subfolders named by integers (``0/``, ``1/``, ...) give labels; otherwise labels are ``None``.
    Files are read in sorted order; all images must share one size and mode.
    """
    paths, labels = list_images(folder)
    paths = paths[:limit] if limit else paths
    labels = labels[: len(paths)] if labels is not None else None
    return stack_images((path, read_image(path)) for path in paths), labels


def stack_images(named) -> Tensor:
    """uint8 ``[N, C, H, W]`` of ``(name, [H, W] or [H, W, 3] array)`` pairs, which must share one size and mode
    (the first that differs is named, with the first image)."""
    arrays, first = [], None
    for name, array in named:
        if first is None:
            first = (name, array.shape)
        elif array.shape != first[1]:
            raise ValueError(
                f"Images differ in size or channels: {first[0]!r} is {first[1]}, {name!r} is {array.shape}; "
                "resize them to one size first (or train with --stream-data, which skips them)."
            )
        arrays.append(array)
    images = torch.from_numpy(np.stack(arrays))
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous()


def load_images(path: str | os.PathLike, limit: int | None = None) -> tuple[Tensor, Tensor | None]:
    """uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` (or ``None``) from a folder of Fashion-MNIST idx
    files (its training split, or ``FOLDER:test`` for the test split), a folder of images (see
    ``load_image_folder``) or of webdataset ``.tar`` shards (``streams.read_shards``), at most ``limit`` of them."""
    path = os.fspath(path)
    split = "train"
    if path.endswith((":train", ":test")) and os.path.isdir(path.rsplit(":", 1)[0]):
        path, split = path.rsplit(":", 1)
    if os.path.isdir(path) and any(n.startswith(f"{_SPLITS[split]}-images-idx3-ubyte") for n in os.listdir(path)):
        images, labels = load_fashion_mnist(path, split)
        return torch.from_numpy(images[:limit].copy())[:, None], torch.from_numpy(labels[:limit].copy())
    from .streams import read_shards, shard_files

    shards = shard_files(path) if os.path.isdir(path) else []
    images, labels = read_shards(shards, limit) if shards else load_image_folder(path, limit)
    return images, None if labels is None else torch.from_numpy(labels).long()


MIN_IMAGE_SIZE = 8


def check_images(
    images: Tensor,
    labels: Tensor | None,
    where: str,
    channels: int | None = None,
    num_classes: int | None = None,
    training: bool = False,
) -> None:
    """Raise ``ValueError`` for images a square-image model cannot use: non-square, smaller than
    ``MIN_IMAGE_SIZE``, another channel count, or labels outside ``[0, num_classes)``; with ``training``, also
    unlabelled images for a class-conditional model."""
    _, c, h, w = images.shape
    if h != w:
        raise ValueError(
            f"{where}: images are {h}x{w} (height x width); square images are needed. Crop or resize them."
        )
    if h < MIN_IMAGE_SIZE:
        raise ValueError(f"{where}: images are {h}x{w}, too small to train on or score (at least {MIN_IMAGE_SIZE}px).")
    if channels is not None and c != channels:
        raise ValueError(f"{where}: images have {c} channel(s), the model takes {channels}; convert them first.")
    if training and num_classes and labels is None:
        raise ValueError(
            f"{where}: the images have no class labels, and the teacher is class-conditional ({num_classes} "
            f"classes): put each image in a class subfolder named 0 to {num_classes - 1} (or give .tar shards KEY.cls "
            "members)."
        )
    if labels is not None and len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{where}: class {int(labels.min())} is negative; labels are class indices from 0.")
    if labels is not None and num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(
            f"{where}: class {int(labels.max())} (a class subfolder) is outside the model's {num_classes} classes "
            f"(0 to {num_classes - 1})."
        )


def load_training_data(
    path: str | os.PathLike | DatasetImages,
    resolution: int,
    limit: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
) -> dict[str, Tensor]:
    """Training tensors ``{"x0": [N, C, R, R] in [-1, 1], "labels": [N]}`` from an idx folder, an image folder or a
    ``hf_datasets.DatasetImages``, checked with ``check_images`` against the model's channels and classes."""
    if isinstance(path, DatasetImages):  # a --dataset
        (images, labels), where = load_dataset_images(path, limit), f"training dataset {path.name!r}"
    else:
        (images, labels), where = load_images(path, limit), f"training data {os.fspath(path)!r}"
    check_images(images, labels, where, channels, num_classes, training=True)
    out = {"x0": from_uint8(images, resolution)}
    if labels is not None:
        out["labels"] = labels
    return out
