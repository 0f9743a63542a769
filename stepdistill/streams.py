"""Training batches: seeded, resumable, split across processes; from tensors in memory or from image files on disk.

Both streams visit epoch ``e`` in ``randperm(seed + e)`` order and give process ``rank`` its own slice of every global
batch, so they yield exactly the same batches for the same data, and ``state_dict`` (epoch, position of the last
batch *consumed*) resumes either exactly. ``ImageFolderData`` reads images lazily in ``num_workers`` loader
processes, for data that does not fit in memory, from an image folder or from webdataset-style ``.tar`` shards; an
unreadable or odd-shaped file is skipped and counted, with a warning, never silently.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings

import numpy as np
import torch
from torch import Tensor

from .data import IMAGE_EXTENSIONS, check_images, from_uint8, list_images, read_image, stack_images
from .hf_datasets import DatasetImages


def shard_files(folder: str) -> list[str]:
    """The webdataset-style shards (``*.tar``) under ``folder``, sorted (empty for a plain image folder)."""
    return sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if name.endswith(".tar")
    )


def index_shards(shards: list[str], extensions: tuple[str, ...] = ()) -> list[tuple[tuple[str, int, int, str], dict]]:
    """The samples of the webdataset-style ``shards`` (see ``shard_files``), in shard and member order.

    A sample is the members that share a key (the member name up to the first dot of its base name): one image
    (``.png``, ``.jpg``, ...) and small text members such as ``.cls`` (a label) or ``.txt`` (a caption). Returns,
    per image, its ``(shard, offset, size, name)`` (read later with one seek) and ``{extension: text}`` of the
    sample's members with one of ``extensions``. Shards are indexed once, up front.
    """
    samples = []
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                images, texts = {}, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = shard_key(member.name)  # webdataset's own rule: KEY.EXT, EXT from the first dot
                    if key is None:
                        continue
                    if ("." + ext.lower()) in IMAGE_EXTENSIONS:
                        images[key] = (shard, member.offset_data, member.size, member.name)
                    elif ext in extensions:
                        texts.setdefault(key, {})[ext] = tar.extractfile(member).read().decode().strip()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"Cannot read the shard {shard!r} ({err}); re-write or remove it.") from err
        samples += [(images[k], texts.get(k, {})) for k in images]
    if not samples:
        raise ValueError(f"The shards {shards[0]!r}... hold no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return samples


def shard_key(path: str) -> tuple[str | None, str | None]:
    """A shard member's ``(key, extensions)`` as webdataset splits it (the path up to the first dot of the base
    name), without the library where it is not installed."""
    try:
        from webdataset.tariterators import base_plus_ext as split
    except ImportError:
        head, base = os.path.split(path)
        stem, dot, ext = base.partition(".")
        return (os.path.join(head, stem), ext) if dot and stem else (None, None)
    return split(path)


def read_shards(shards: list[str], limit: int | None = None) -> tuple[Tensor, np.ndarray | None]:
    """Every image of the webdataset ``shards`` (``KEY.png`` and an optional ``KEY.cls``), read in order by the
    ``webdataset`` library, as uint8 ``[N, C, H, W]`` with their labels (``None`` unless every sample has one); at
    most ``limit``. All images must share one size and mode, as for an image folder."""
    try:
        import webdataset as wds
    except ImportError:
        raise ImportError(
            "Loading .tar shards into memory reads them with the `webdataset` package: pip install "
            "'stepdistill[data]' (or stream them with --stream-data, which does not need it)."
        ) from None

    def whole(urls):  # every process and loader worker reads every shard (the data is held in memory)
        return urls

    samples = wds.WebDataset(shards, shardshuffle=False, nodesplitter=whole, workersplitter=whole, empty_check=False)
    named, labels = [], []
    for sample in samples:  # undecoded: each image is read as data.read_image reads a file (greyscale stays so)
        ext = next((k for k in sample if "." + k.lower() in IMAGE_EXTENSIONS), None)
        if ext is None:
            continue
        name = f"{sample['__url__']}:{sample['__key__']}.{ext}"
        named.append((name, read_image(io.BytesIO(sample[ext]), name)))
        label = sample.get("cls", b"").decode().strip()
        if label and not label.isdigit():
            raise ValueError(f"Label of {name!r} is {label[:20]!r}, not a class index (an integer from 0).")
        labels.append(int(label) if label else None)
        if limit and len(named) == limit:
            break
    if not named:
        raise ValueError(f"The shards {shards[0]!r}... hold no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return stack_images(named), None if None in labels else np.array(labels)


def list_shard_images(shards: list[str]) -> tuple[list[tuple[str, int, int, str]], np.ndarray | None]:
    """The images of ``shards`` (``index_shards``) and their ``.cls`` integer labels (``None`` unless every sample
    has one)."""
    samples = index_shards(shards, ("cls",))
    labels = []
    for item, texts in samples:
        text = texts.get("cls")
        if text is not None and not text.strip().isdigit():
            raise ValueError(
                f"Label {item[3]!r} in shard {item[0]!r} is {text[:20]!r}, not a class index (an integer from 0)."
            )
        labels.append(None if text is None else int(text))
    return [item for item, _ in samples], None if None in labels else np.array(labels)


def shard_member(item: tuple[str, int, int, str]) -> io.BytesIO:
    """The bytes of one shard member of ``index_shards`` (``(shard, offset, size, name)``), read with one seek."""
    shard, offset, size, _ = item
    with open(shard, "rb") as f:
        f.seek(offset)
        return io.BytesIO(f.read(size))


def read_shard_image(item: tuple[str, int, int, str]) -> np.ndarray:
    """One image of ``list_shard_images`` as ``read_image`` returns it."""
    return read_image(shard_member(item), f"{item[0]}:{item[3]}")


class BatchOrder:
    """The index order shared by the streams: ``next_indices()`` -> this rank's indices of the next global batch."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if size < batch_size * world:
            raise ValueError(f"The data has {size} samples, fewer than one global batch ({batch_size * world}).")
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))

    def _step(self, epoch: int, position: int, order: Tensor) -> tuple[int, int, Tensor, Tensor]:
        """The batch after state ``(epoch, position)``: its indices, and the state and order after it."""
        global_batch = self.batch_size * self.world
        if position + global_batch > self.size:
            epoch, position = epoch + 1, 0
            order = self._permutation(epoch)
        start = position + self.rank * self.batch_size
        return epoch, position + global_batch, order, order[start : start + self.batch_size]

    def next_indices(self) -> Tensor:
        self.epoch, self.position, self._order, idx = self._step(self.epoch, self.position, self._order)
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


class DataStream(BatchOrder):
    """Batches of in-memory tensors (e.g. ``{"x0": [N, C, H, W], "labels": [N]}``)."""

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"All data tensors must have the same length, got {lengths}.")
        super().__init__(lengths.pop(), batch_size, seed, rank, world)
        self.tensors = tensors

    def next(self) -> dict[str, Tensor]:
        idx = self.next_indices()
        return {k: v[idx] for k, v in self.tensors.items()}


class _RowNames:
    """``ImageFolderData.paths`` of a dataset: row ``i``'s name, made when a message needs it."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> str:
        return self.images.where(i)


class ImageFolderData:
    """Images read from disk while training (``Trainer`` calls ``stream``).

    Args:
        folder: images, with integer-named class subfolders for labels; or webdataset-style ``.tar`` shards
            (``key.png`` + ``key.cls`` members, see ``list_shard_images``) when it holds any; or the rows of a
            ``hf_datasets.DatasetImages`` (``--dataset``), read by index.
        resolution: the square size the model trains at (images are resized as ``data.from_uint8`` does).
        channels: the model's input channels (1: greyscale, 3: RGB).
        num_classes: the model's classes (labels must lie below it), if class-conditional.
    """

    def __init__(self, folder, resolution: int, channels: int, num_classes: int | None = None):
        # items[i] is what reader(items[i]) reads: a dataset's row index, a shard member or an image path
        if isinstance(folder, DatasetImages):  # a --dataset: rows read by index
            self.items, self.reader, labels = range(len(folder)), folder.image, folder.labels
            self.paths = _RowNames(folder)
            where = f"training dataset {folder.name!r}"
        else:
            where = f"training data {folder!r}"
            shards = shard_files(folder)  # none for a missing folder: list_images then says it does not exist
            if shards:
                (self.items, labels), self.reader = list_shard_images(shards), read_shard_image
                self.paths = [f"{shard}:{name}" for shard, _, _, name in self.items]  # for messages
            else:
                (self.paths, labels), self.reader = list_images(folder), read_image
                self.items = self.paths
        self.labels = None if labels is None else torch.from_numpy(labels).long()
        self.resolution, self.channels = resolution, channels
        first = torch.from_numpy(np.array(self._read(0)))
        first = first[None, None] if first.ndim == 2 else first.permute(2, 0, 1)[None]
        check_images(first, self.labels, where, channels, num_classes, training=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int]:
        """``(x0 [C, R, R] in [-1, 1], label)``, or ``(None, i)`` for a file that cannot be used."""
        try:
            array = self._read(i)
        except ValueError:
            return None, i
        channels = 1 if array.ndim == 2 else array.shape[2]
        if array.shape[0] != array.shape[1] or channels != self.channels:
            return None, i
        image = torch.from_numpy(np.array(array))  # a copy: a decoded array may be read-only (datasets rows are)
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        return from_uint8(image[None], self.resolution)[0], -1 if self.labels is None else int(self.labels[i])

    def _read(self, i: int) -> np.ndarray:
        return self.reader(self.items[i])

    def stream(self, batch_size: int, seed: int, rank: int = 0, world: int = 1, num_workers: int = 0) -> FolderStream:
        return FolderStream(self, batch_size, seed, rank, world, num_workers)


def _collate(items):
    kept = [(x, y) for x, y in items if x is not None]
    skipped = [y for x, y in items if x is None]  # their indices
    batch = {"skipped": torch.tensor(skipped, dtype=torch.long)}
    if kept:
        batch["x0"] = torch.stack([x for x, _ in kept])
        if kept[0][1] >= 0:
            batch["labels"] = torch.tensor([y for _, y in kept], dtype=torch.long)
    return batch


def _index_lists(order: BatchOrder):
    """``order``'s batches of indices as lists, endlessly (a DataLoader's ``batch_sampler``)."""
    while True:
        yield order.next_indices().tolist()


class FolderStream(BatchOrder):
    """``ImageFolderData`` batches through a ``DataLoader`` with ``num_workers`` processes, in ``BatchOrder``."""

    def __init__(self, data: ImageFolderData, batch_size: int, seed: int, rank=0, world=1, num_workers: int = 0):
        super().__init__(len(data), batch_size, seed, rank, world)
        self.data, self.num_workers, self._batches, self.skipped = data, num_workers, None, set()

    def next(self) -> dict[str, Tensor]:
        if self._batches is None:
            # The loader reads ahead on a copy of the consumed state, not on this stream: no reference cycle, so a
            # dropped stream shuts its worker processes down at once rather than whenever the cyclic GC runs (which
            # could stall a later, unrelated step, or the interpreter's exit, for seconds).
            ahead = BatchOrder(self.size, self.batch_size, self.seed, self.rank, self.world)
            ahead.load_state_dict(self.state_dict())
            loader = torch.utils.data.DataLoader(
                self.data,
                batch_sampler=_index_lists(ahead),
                num_workers=self.num_workers,
                collate_fn=_collate,
                persistent_workers=False,
            )
            self._batches = iter(loader)
        while True:
            batch = next(self._batches)
            self.next_indices()  # advance the consumed state exactly as the loader did
            bad = set(batch.pop("skipped").tolist()) - self.skipped
            if bad:
                self.skipped |= bad
                warnings.warn(
                    f"Skipped {len(bad)} unreadable, non-square or {self.data.channels}-channel-mismatched image(s) "
                    f"(e.g. {self.data.paths[min(bad)]!r}); {len(self.skipped)} skipped so far.",
                    stacklevel=2,
                )
            if "x0" in batch:
                return batch

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._batches = None  # restart the loader from the restored state
