"""What every training script shares: loading the teacher, data and initial student from a ``ModelConfig``,
the sample-grid condition, and the periodic evaluation callback. Keeps the scripts in train/ thin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ModelConfig
from .data import load_training_data
from .denoiser import Condition, Denoiser
from .evaluation import domain_scorers, fd_callback
from .export import export_spec
from .streams import ImageFolderData
from .text import encode_captioned_folder, encode_prompt_set, is_text_to_image, load_text_to_image
from .trainer import Trainer, TrainerConfig

DATA_FREE_CONDITIONS = 60_000  # one "epoch" of conditions for data-free methods (shuffled per epoch)
MIN_PROMPT_EPOCH = 4096  # a shorter prompt set is repeated to at least this many conditions per epoch


@dataclass
class Setup:
    """The pieces a training script builds a strategy and a trainer from (``decode``: latents -> images, for the
    sample grids of a latent text-to-image teacher)."""

    teacher: Denoiser
    data: dict[str, Tensor] | ImageFolderData
    student: Denoiser | None
    grid: Condition | None
    decode: Callable[[Tensor], Tensor] | None = None


def training_source(model_cfg: ModelConfig):
    """Where the training images come from: ``--dataset`` (a ``hf_datasets.DatasetImages``) or the ``--data`` path."""
    if not model_cfg.dataset:
        return model_cfg.data
    from .hf_datasets import DatasetImages

    names = (model_cfg.image_column, model_cfg.label_column, model_cfg.caption_column)
    return DatasetImages(model_cfg.dataset, model_cfg.dataset_split, *names)


def _text_setup(model_cfg: ModelConfig, data_free: bool) -> Setup:
    """A text-to-image teacher (SD 1.x/2.x, SDXL): latents and prompt embeddings of a captioned folder, or only the
    prompts' embeddings of ``model_cfg.prompts`` for data-free methods; the grid shows the first 16 prompts."""
    model = load_text_to_image(model_cfg.teacher, model_cfg.revision, model_cfg.variant)
    if model.prompts.family == "flux":
        raise ValueError(
            f"{model_cfg.teacher!r} is a FLUX.1 pipeline: this version loads FLUX teachers (prompt embeddings, the "
            "guidance-distilled score) but does not train students of them yet; distil an SD 1.x/2.x, SDXL or SD3 "
            "teacher."
        )
    if data_free:
        if not model_cfg.prompts:
            raise ValueError(
                f"{model_cfg.teacher!r} is a text-to-image teacher: data-free training needs --prompts FILE "
                "(one prompt per line) to generate for."
            )
        data = encode_prompt_set(model, model_cfg.prompts, model_cfg.cache_dir)
        copies = -(-MIN_PROMPT_EPOCH // len(data["text"]))  # whole copies: each prompt equally often per epoch
        data = {k: v.repeat(copies, *([1] * (v.ndim - 1))) for k, v in data.items()}
    else:
        data = encode_captioned_folder(model, training_source(model_cfg), model_cfg.data_limit, model_cfg.cache_dir)
    student = Denoiser.from_pretrained(model_cfg.student).trainable_copy() if model_cfg.student else None
    grid = Condition.from_batch({k: v[:16] for k, v in data.items() if k != "x0"})
    return Setup(model.teacher, data, student, grid, model.codec.decode)


def load_setup(model_cfg: ModelConfig, data_free: bool = False) -> Setup:
    """Teacher (from a folder or Hub id), training data at the teacher's resolution, optional initial student.

    ``data_free``: no image is read; the "data" is only the conditions to generate for (class labels, balanced over
    the teacher's classes, or for an unconditional teacher a running index that sets the batch size)."""
    hub = {k: v for k, v in {"revision": model_cfg.revision, "variant": model_cfg.variant}.items() if v}
    if is_text_to_image(model_cfg.teacher, **hub):
        return _text_setup(model_cfg, data_free)
    teacher = Denoiser.from_pretrained(model_cfg.teacher, **hub)
    config = teacher.backbone.config
    args = (config.sample_size, model_cfg.data_limit, config.in_channels, teacher.null_class)
    if data_free:
        if teacher.null_class is None and getattr(config, "cross_attention_dim", None):
            raise ValueError(
                f"{model_cfg.teacher!r} is a text-conditional UNet without its pipeline: data-free training of a "
                "text-to-image teacher encodes --prompts with the teacher's text encoders, so pass the whole Stable "
                "Diffusion pipeline folder (model_index.json, text_encoder/, vae/) as --teacher."
            )
        count = DATA_FREE_CONDITIONS
        data = (
            {"labels": torch.arange(count) % teacher.null_class}
            if teacher.null_class
            else {"index": torch.arange(count)}
        )
    elif model_cfg.stream_data:
        if model_cfg.data_limit is not None:
            raise ValueError("--data-limit works on data held in memory; it cannot be combined with --stream-data.")
        data = ImageFolderData(training_source(model_cfg), config.sample_size, config.in_channels, teacher.null_class)
    else:
        data = load_training_data(training_source(model_cfg), *args)
    student = Denoiser.from_pretrained(model_cfg.student).trainable_copy() if model_cfg.student else None
    classes = teacher.null_class
    grid = Condition(labels=torch.arange(classes).repeat_interleave(8)) if classes else None
    return Setup(teacher, data, student, grid)


def build_strategy(cls, config, setup: Setup, seed: int):
    """Strategy ``cls`` with ``config`` on ``setup``'s teacher and initial student, built after every RNG is seeded
    with ``seed``: what a strategy initialises itself (DMD2's GAN head, LoRA adapters) is then fixed by ``--seed``, as
    the training noise is (the trainer seeds again before its first step)."""
    from accelerate.utils import set_seed

    set_seed(seed)
    return cls(config, setup.teacher, setup.student)


def build_trainer(
    trainer_cfg: TrainerConfig, model_cfg: ModelConfig, strategy, setup: Setup, resolved: dict, callbacks=()
) -> Trainer:
    """The Trainer of a training script: ``setup``'s data, sample-grid condition and decoder, the script's own
    ``callbacks`` and the periodic evaluation (``eval_callbacks``)."""
    callbacks = [*callbacks, *eval_callbacks(model_cfg, trainer_cfg, setup)]
    return Trainer(trainer_cfg, strategy, setup.data, resolved, setup.grid, callbacks, decode=setup.decode)


def eval_callbacks(model_cfg: ModelConfig, trainer_cfg: TrainerConfig, setup: Setup) -> list:
    """The periodic FD/accuracy evaluation with the domain classifier, if ``model_cfg.eval_every`` is set."""
    if not model_cfg.eval_every:
        return []
    if setup.decode is not None:
        raise ValueError(
            "--eval-every scores samples with the bundled pixel benchmark's domain classifier, which cannot score a "
            "latent text-to-image teacher: score the exported pipeline with eval/evaluate.py instead."
        )
    config = setup.teacher.backbone.config
    shape = (config.in_channels, config.sample_size, config.sample_size)
    scorers = domain_scorers(model_cfg.classifier)
    classes = setup.teacher.null_class or 0
    return [fd_callback(scorers, model_cfg.eval_every, model_cfg.eval_samples, classes, shape, trainer_cfg.seed)]


def export_trained(trainer, model_cfg: ModelConfig) -> list[str]:
    """The export of every train script: what the strategy specifies at the trainer's step
    (``Strategy.export_spec``), from the trainer's EMA weights when it keeps an EMA, written by
    ``export.export_spec`` on the main process. Prints and returns the folders written."""
    if not trainer.accelerator.is_main_process:
        return []
    student = trainer.export_modules()["student"]
    spec = trainer.strategy.export_spec(trainer.step)
    folders = export_spec(student, spec, trainer.config.output_dir, model_cfg.teacher, trainer.resolved_config)
    for folder in folders:
        print(f"exported {folder}")
    return folders
