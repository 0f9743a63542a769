"""The loop that trains the bundled teachers from scratch (``train/teacher.py``, ``train/text_teacher.py``).

Distillation runs use ``trainer.Trainer`` (accelerate, checkpoints, resume); a teacher of the bundled benchmark is a
few minutes of single-process training with no checkpoint, so it gets this small loop instead: shuffled index
batches (a new permutation each epoch), AdamW with a warm-up and cosine decay, gradient clipping and EMA copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .ema import EMA


def teacher_scheduler():
    """The bundled teachers' diffusers scheduler: v-prediction on the 1000-step cosine schedule
    (``squaredcos_cap_v2``), trailing DDIM spacing for sampling."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def fashion_training_data(folder: str, resolution: int) -> tuple[Tensor, Tensor]:
    """The Fashion-MNIST training split at ``resolution`` (images in [-1, 1], ``[N, 1, R, R]``) and its labels
    ``[N]``, unaugmented: a flip would not keep the data's distribution (its shoes all face one way)."""
    from .data import from_uint8, load_fashion_mnist

    images, labels = load_fashion_mnist(folder, "train")
    return from_uint8(images, resolution), torch.from_numpy(labels)


def batches(n: int, batch_size: int, iterations: int) -> Iterator[Tensor]:
    """Indices of ``iterations`` shuffled batches of ``n`` items (a new permutation each epoch)."""
    order, pos = torch.randperm(n), 0
    for _ in range(iterations):
        if pos + batch_size > n:
            order, pos = torch.randperm(n), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def warmup_cosine(warmup: int, iterations: int, delay_decay: bool = True) -> Callable[[int], float]:
    """The LR factor at iteration ``i``: linear warm-up over ``warmup`` iterations times a cosine decay to 0 by
    ``iterations``. ``delay_decay``: the decay starts after the warm-up (the trainer's own ``lr_lambda``, the text
    teacher's schedule); else at iteration 0, in float32 as the bundled pixel teacher was trained."""
    if delay_decay:
        from .trainer import TrainerConfig, lr_lambda

        return lr_lambda(TrainerConfig(max_steps=iterations, lr_warmup_steps=warmup, lr_schedule="cosine"))

    def factor(i: int) -> float:
        warm = min(1.0, (i + 1) / warmup) if warmup else 1.0
        return warm * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / iterations)).item())

    return factor


def fit(
    loss_fn: Callable[[Tensor], Tensor],
    params: list[nn.Parameter],
    batch_indices: Iterator[Tensor],
    iterations: int,
    lr: float,
    lr_factor: Callable[[int], float],
    ema: dict[nn.Module, EMA] | None = None,
    max_grad_norm: float | None = 1.0,
    desc: str = "train",
) -> float:
    """Minimise ``loss_fn(indices)`` over ``batch_indices`` with AdamW (no weight decay) at ``lr * lr_factor(i)``,
    clipping the gradient norm of ``params`` to ``max_grad_norm`` and updating each ``ema[network]`` after every
    step. Returns the last loss."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(batch_indices, total=iterations, desc=desc)
    loss = torch.zeros(())
    for idx in bar:
        loss = loss_fn(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()
        for network, average in (ema or {}).items():
            average.update(network)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return loss.item()
