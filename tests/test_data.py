import numpy as np
import pytest
import torch

from stepdistill.data import (
    from_uint8,
    image_grid,
    load_fashion_mnist,
    load_training_data,
    read_idx,
    to_uint8,
    write_idx,
)

ASSET_DATA = "assets/fashion-mnist"


def test_idx_round_trip_and_errors(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing.gz")


def test_bundled_subset_loads_with_labels(tmp_path):
    images, labels = load_fashion_mnist(ASSET_DATA, "train")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9 and len(np.unique(labels)) == 10
    test_images, test_labels = load_fashion_mnist(ASSET_DATA, "test")  # the first 1,000 of the test split
    assert test_images.shape == (1000, 28, 28) and len(np.unique(test_labels)) == 10
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("no/such/folder")


def test_uint8_conversions_and_grid():
    x = torch.from_numpy(np.arange(256, dtype=np.uint8).reshape(1, 16, 16))
    f = from_uint8(x)
    assert f.shape == (1, 1, 16, 16) and f.min() == -1 and f.max() == 1
    torch.testing.assert_close(to_uint8(f)[:, 0], x)
    small = from_uint8(x, resolution=8)
    assert small.shape == (1, 1, 8, 8)
    grid = image_grid(torch.zeros(5, 1, 4, 4), nrow=3)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    # each image in its cell, row-major, 1-px white gaps and a white empty cell; RGB keeps its channels
    images = torch.linspace(-1, 1, 5 * 3 * 16).reshape(5, 3, 4, 4)
    rgb = image_grid(images, nrow=3)
    assert rgb.shape == (11, 16, 3) and (rgb[0] == 255).all() and (rgb[:, 0] == 255).all()
    for i in range(5):
        r, k = divmod(i, 3)
        cell = rgb[1 + 5 * r : 5 + 5 * r, 1 + 5 * k : 5 + 5 * k]
        assert np.array_equal(cell, to_uint8(images[i]).permute(1, 2, 0).numpy())
    assert (rgb[6:10, 11:15] == 255).all()


def test_load_images_reads_either_split_of_an_idx_folder():
    from stepdistill.data import load_fashion_mnist, load_images

    train, _ = load_images("assets/fashion-mnist", 3)
    test, labels = load_images("assets/fashion-mnist:test", 3)
    expected, expected_labels = load_fashion_mnist("assets/fashion-mnist", "test")
    assert test.shape == (3, 1, 28, 28) and torch.equal(test[:, 0], torch.from_numpy(expected[:3].copy()))
    assert torch.equal(labels, torch.from_numpy(expected_labels[:3]).long()) and not torch.equal(train, test)


@pytest.mark.parametrize(
    "shape,labels,message",
    [
        ((4, 1, 32, 16), None, "32x16 .*square"),
        ((4, 1, 1, 1), None, "too small"),
        ((4, 3, 16, 16), None, "3 channel.*takes 1"),
        ((4, 1, 16, 16), [0, 1, 15, 2], "class 15 .*10 classes"),
    ],
)
def test_images_a_model_cannot_use_are_refused(shape, labels, message):
    from stepdistill.data import check_images

    images = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        check_images(images, None if labels is None else torch.tensor(labels), "data", channels=1, num_classes=10)
    check_images(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.tensor([0, 9, 3, 2]), "data", 1, 10)


def write_image_folder(folder, images, labels):
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(int(label)) / f"{i:04d}.png")


def test_folder_stream_gives_the_in_memory_batches_resumes_and_skips_bad_files(tmp_path):
    """Streaming from disk (2 loader workers) yields exactly the in-memory stream's batches, resumes mid-epoch, and
    skips an unreadable file with a counted warning."""
    from stepdistill.streams import DataStream, ImageFolderData

    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    write_image_folder(tmp_path / "data", images[:40], labels[:40])
    data = ImageFolderData(str(tmp_path / "data"), 16, 1, num_classes=10)
    memory = load_training_data(tmp_path / "data", 16)
    disk, ram = data.stream(6, seed=3, num_workers=2), DataStream(memory, 6, seed=3)
    for _ in range(8):  # crosses an epoch boundary (6 batches of 6 per 40 images)
        a, b = disk.next(), ram.next()
        assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["x0"], b["x0"])
    state = disk.state_dict()
    after = [disk.next()["labels"] for _ in range(3)]
    again = data.stream(6, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(x, again.next()["labels"]) for x in after)
    bad = sorted((tmp_path / "data").rglob("*.png"))[5]
    bad.write_bytes(b"not an image")
    broken = ImageFolderData(str(tmp_path / "data"), 16, 1, num_classes=10).stream(40, seed=0)
    with pytest.warns(UserWarning, match=r"Skipped 1 .*1 skipped so far"):
        assert len(broken.next()["x0"]) == 39


def write_shards(folder, images, labels, per_shard):
    import io
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(images), per_shard):
        with tarfile.open(folder / f"shard-{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                png = io.BytesIO()
                Image.fromarray(images[i]).save(png, format="PNG")
                for name, payload in (
                    (f"{i:06d}.png", png.getvalue()),
                    (f"{i:06d}.cls", str(int(labels[i])).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_stream_like_the_folder_and_bad_shards_are_named(tmp_path):
    """Samples in .tar shards (key.png + key.cls) stream exactly as the same images in class folders, across
    processes (rank-aware slices) and loader workers; a truncated shard is refused with its name."""
    from stepdistill.streams import ImageFolderData

    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    write_image_folder(tmp_path / "folder", images[:40], labels[:40])
    write_shards(tmp_path / "shards", images[:40], labels[:40], per_shard=15)
    folder = ImageFolderData(str(tmp_path / "folder"), 16, 1, num_classes=10)
    shards = ImageFolderData(str(tmp_path / "shards"), 16, 1, num_classes=10)
    assert len(shards) == 40 and torch.equal(shards.labels, torch.from_numpy(labels[:40]).long())
    # the folder sorts by class subfolder, the shards by key: compare the same images through their labels' order
    order = np.argsort(labels[:40], kind="stable")
    assert torch.equal(folder.labels, shards.labels[order])
    for rank in (0, 1):
        a = shards.stream(4, seed=1, rank=rank, world=2, num_workers=2)
        for _ in range(6):
            batch = a.next()
            assert batch["x0"].shape == (4, 1, 16, 16) and batch["labels"].shape == (4,)
    x, y = shards[7]
    assert y == int(labels[7]) and torch.allclose(
        x, load_training_data(tmp_path / "folder", 16)["x0"][int(np.nonzero(order == 7)[0][0])]
    )
    blob = (tmp_path / "shards" / "shard-00001.tar").read_bytes()
    (tmp_path / "shards" / "shard-00001.tar").write_bytes(blob[:700])
    with pytest.raises(ValueError, match="shard-00001.tar"):
        ImageFolderData(str(tmp_path / "shards"), 16, 1, num_classes=10)


def test_shards_load_into_memory_through_webdataset_as_the_folder_does(tmp_path):
    """Shards in memory (read by the webdataset library) give the folder's images and labels, in key order."""
    pytest.importorskip("webdataset")
    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    write_shards(tmp_path / "shards", images[:30], labels[:30], per_shard=12)
    memory = load_training_data(tmp_path / "shards", 16, num_classes=10, channels=1)
    expected = load_training_data("assets/fashion-mnist", 16, limit=30)
    assert torch.equal(memory["labels"], expected["labels"]) and torch.allclose(memory["x0"], expected["x0"])
    assert len(load_training_data(tmp_path / "shards", 16, limit=7)["x0"]) == 7


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes its Arrow cache under tmp_path, not the user's home."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


def test_a_datasets_imagefolder_and_saved_dataset_give_the_folders_images_and_stream_resumes(tmp_path, datasets_cache):
    """--dataset on a local imagefolder (class subfolders 0-9, including class 10's sorting trap) and on its
    save_to_disk copy gives exactly the --data folder's images and labels, in memory and streamed per process, and
    the stream resumes exactly; a missing column or split is named."""
    from stepdistill.hf_datasets import DatasetImages
    from stepdistill.streams import DataStream, ImageFolderData

    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    labels = labels[:40].copy()
    labels[:3] = 10  # a class "10": sorted as text it would come before "2"
    write_image_folder(tmp_path / "folder", images[:40], labels)
    folder = load_training_data(tmp_path / "folder", 16, num_classes=11)
    hub = DatasetImages(str(tmp_path / "folder"))
    from_hub = load_training_data(hub, 16, num_classes=11)
    assert torch.equal(folder["labels"], from_hub["labels"]) and torch.equal(folder["x0"], from_hub["x0"])
    hub.data.save_to_disk(str(tmp_path / "saved"))
    saved = load_training_data(DatasetImages(str(tmp_path / "saved")), 16, num_classes=11)
    assert torch.equal(saved["labels"], folder["labels"]) and torch.equal(saved["x0"], folder["x0"])
    streamed = ImageFolderData(hub, 16, 1, num_classes=11)
    for rank in (0, 1):
        disk, ram = streamed.stream(6, seed=2, rank=rank, world=2, num_workers=2), DataStream(folder, 6, 2, rank, 2)
        for _ in range(5):  # crosses an epoch (40 images, global batches of 12)
            a, b = disk.next(), ram.next()
            assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["x0"], b["x0"])
        state, after = disk.state_dict(), [disk.next()["labels"] for _ in range(3)]
        again = streamed.stream(6, seed=2, rank=rank, world=2)
        again.load_state_dict(state)
        assert all(torch.equal(x, again.next()["labels"]) for x in after)
    with pytest.raises(ValueError, match=r"no image column 'picture'.*\['image', 'label'\]"):
        DatasetImages(str(tmp_path / "folder"), image_column="picture")
    with pytest.raises(ValueError, match="test"):
        DatasetImages(str(tmp_path / "folder"), split="test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DatasetImages(str(tmp_path / "missing"))
