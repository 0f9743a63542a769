"""LoRA adapters on diffusers backbones through peft (Hu et al. 2021, arXiv 2106.09685; LCM-LoRA, Luo et al. 2023,
arXiv 2311.05556): add with checked targets and rank, switch off (the frozen base is the teacher), fuse.

The Denoiser's ``add_lora`` / ``adapters_disabled`` / ``merged_copy`` call these; export of the adapter in
diffusers' format lives in ``export.export_lora``.
"""

from __future__ import annotations

import contextlib

from torch import nn

# LoRA targets of LCM-LoRA: attention, feed-forward and ResNet convs.
DEFAULT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _min_width(module: nn.Module) -> int:
    """The smaller of a Linear/Conv layer's input and output widths (0 for other modules)."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    if isinstance(module, nn.Conv2d):
        return min(module.in_channels, module.out_channels)
    return 0


def add_lora(
    backbone: nn.Module,
    rank: int,
    alpha: float | None = None,
    target_modules: list[str] | None = None,
    adapter_name: str = "default",
) -> None:
    """Freeze ``backbone``'s weights and add a trainable peft LoRA adapter to it, in place.

    Args:
        rank: LoRA rank ``r``.
        alpha: ``lora_alpha`` (scale ``alpha / r``); defaults to ``rank``.
        target_modules: module names to adapt; every name must exist. Default: those of ``DEFAULT_LORA_TARGETS``
            that the backbone has.

    Raises:
        TypeError: the backbone has no peft adapter support. ValueError: unknown targets, or a rank wider than a
            targeted layer.
    """
    if not hasattr(backbone, "add_adapter"):
        raise TypeError(
            f"{type(backbone).__name__} has no PEFT adapter support; LoRA needs a UNet2DConditionModel backbone."
        )
    from peft import LoraConfig

    names = [name for name, _ in backbone.named_modules()]
    if target_modules is None:
        target_modules = [m for m in DEFAULT_LORA_TARGETS if any(_matches(n, m) for n in names)]
    missing = [m for m in target_modules if not any(_matches(n, m) for n in names)]
    if missing or not target_modules:
        raise ValueError(f"LoRA target modules {missing} do not exist in {type(backbone).__name__}.")
    widths = {n: _min_width(mod) for n, mod in backbone.named_modules() if any(_matches(n, m) for m in target_modules)}
    too_small = {n: w for n, w in widths.items() if 0 < w < rank}
    if too_small:
        name, width = min(too_small.items(), key=lambda item: item[1])
        raise ValueError(
            f"LoRA rank {rank} exceeds the width {width} of {name!r} ({len(too_small)} targeted layers "
            "are narrower than the rank); choose a smaller rank or other target modules."
        )
    backbone.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, target_modules=list(target_modules), init_lora_weights="gaussian"
    )
    backbone.add_adapter(config, adapter_name=adapter_name)


def has_lora(backbone: nn.Module) -> bool:
    return bool(getattr(backbone, "_hf_peft_config_loaded", False))


def lora_rank(backbone: nn.Module, adapter_name: str = "default") -> int:
    """The rank of adapter ``adapter_name``."""
    return int(backbone.peft_config[adapter_name].r)


def merge_lora(backbone: nn.Module) -> None:
    """Fuse the adapters into the base weights and remove them, in place (a plain full network remains)."""
    if not hasattr(backbone, "fuse_lora") or not has_lora(backbone):
        raise ValueError("Merging needs a network with LoRA adapters (see add_lora).")
    backbone.fuse_lora()
    backbone.unload_lora()


@contextlib.contextmanager
def adapters_disabled(backbone: nn.Module):
    """Run the base network without its adapters (LCM-LoRA's teacher, no second copy in memory)."""
    backbone.disable_adapters()
    try:
        yield backbone
    finally:
        backbone.enable_adapters()
