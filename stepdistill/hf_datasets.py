"""Training images from the Hugging Face ``datasets`` library (``--dataset``).

A dataset is a Hub id (``user/name``), a local folder in ``datasets``' imagefolder layout (images with class
subfolders, or with a ``metadata.jsonl`` of ``file_name`` and caption), or a folder written by ``save_to_disk``.
``datasets`` keeps it as memory-mapped Arrow and reads any row by index, so it goes through the same seeded,
per-process, exactly resumable batch order as an image folder (``streams.BatchOrder``): loaded into memory, or
read batch by batch with ``--stream-data``.

Labels: an integer column, or a ``ClassLabel`` whose names are the class indices (imagefolder's ``0/``, ``1/``, ...
subfolders) read as those integers (the names sort as text: ``10`` before ``2``), so a dataset built from the same
folders as ``--data`` gives the same labels.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

CAPTION_COLUMNS = ("text", "caption", "prompt")


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "--dataset reads Hugging Face datasets with the `datasets` package: pip install 'stepdistill[data]'."
        ) from None
    return datasets


def is_saved_dataset(path: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return any(os.path.isfile(os.path.join(path, n)) for n in ("state.json", "dataset_dict.json"))


class DatasetImages:
    """The rows of one split of a ``datasets`` dataset: images by index, with labels or captions.

    Args:
        name: a Hub id, a local imagefolder-layout folder or a ``save_to_disk`` folder.
        split: the split to read (``train``).
        image_column: the column of images (an ``Image`` feature).
        label_column: the column of class labels (default: ``label`` when the dataset has it).
        caption_column: the column of captions (default: the first of ``text``, ``caption``, ``prompt`` it has).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        image_column: str = "image",
        label_column: str | None = None,
        caption_column: str | None = None,
    ):
        datasets = _import_datasets()
        self.name = name
        if os.path.isdir(name) and is_saved_dataset(name):
            data = datasets.load_from_disk(name)
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise ValueError(
                        f"Dataset {name!r} has the splits {sorted(data)}, not {split!r}: pass --dataset-split."
                    )
                data = data[split]
        elif name.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(name)):
            raise FileNotFoundError(f"Dataset folder {name!r} does not exist.")
        else:
            try:
                data = datasets.load_dataset(name, split=split)
            except ValueError as err:  # an unknown split names the known ones
                raise ValueError(f"Dataset {name!r}: {err}") from None
        columns = data.column_names
        if image_column not in columns:
            raise ValueError(
                f"Dataset {name!r} has no image column {image_column!r}; its columns are {columns}: pass "
                "--image-column."
            )
        for option, column in (("--label-column", label_column), ("--caption-column", caption_column)):
            if column is not None and column not in columns:
                raise ValueError(f"Dataset {name!r} has no column {column!r} ({option}); its columns are {columns}.")
        label_column = label_column or ("label" if "label" in columns else None)
        caption_column = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
        self.data, self.image_column = data, image_column
        self.labels = None if label_column is None else self._labels(label_column)
        self.captions = None if caption_column is None else [str(c) for c in data[caption_column]]
        self.fingerprint = getattr(data, "_fingerprint", None) or name

    def _labels(self, column: str) -> np.ndarray:
        feature = self.data.features[column]
        values = self.data[column]
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(
                f"Dataset {self.name!r}: the label column {column!r} holds {type(values[0]).__name__} values, "
                "not class indices (integers from 0)."
            )
        names = getattr(feature, "names", None)
        if names and all(n.isdigit() for n in names):  # imagefolder's class subfolders 0/, 1/, ...: their numbers
            return np.array([int(names[v]) for v in values], dtype=np.int64)
        return np.array(values, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data)

    def where(self, i: int) -> str:
        """Row ``i`` as messages name it."""
        return f"{self.name}[{i}]"

    def pil(self, i: int):
        """Row ``i``'s image as a PIL image."""
        try:
            image = self.data[int(i)][self.image_column]
        except (OSError, SyntaxError) as err:  # PIL: a truncated or unreadable image
            raise ValueError(f"Cannot read image {self.where(i)}: {err}") from err
        if not hasattr(image, "convert"):
            raise ValueError(
                f"{self.where(i)}: the column {self.image_column!r} holds no image ({type(image).__name__})."
            )
        return image

    def image(self, i: int) -> np.ndarray:
        """Row ``i``'s image as uint8 ``[H, W]`` (greyscale) or ``[H, W, 3]``, as ``data.read_image`` reads files."""
        img = self.pil(i)
        return np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16", "I") else "RGB"))

    def item(self, i: int) -> DatasetItem:
        return DatasetItem(self, int(i))


class DatasetItem(NamedTuple):
    """One row of a ``DatasetImages``, where the text-to-image path takes an image path or a shard member."""

    images: DatasetImages
    index: int

    @property
    def name(self) -> str:
        return self.images.where(self.index)


def load_dataset_images(images: DatasetImages, limit: int | None = None):
    """uint8 ``[N, C, H, W]`` and int64 labels ``[N]`` (or ``None``) of the first ``limit`` rows; every image must
    have the first one's size and mode, as for an image folder."""
    import torch

    from .data import stack_images  # data imports this module

    count = len(images) if limit is None else min(limit, len(images))
    stacked = stack_images((images.where(i), images.image(i)) for i in range(count))
    labels = None if images.labels is None else torch.from_numpy(images.labels[:count]).long()
    return stacked, labels
