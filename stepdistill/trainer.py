"""One distributed training loop for every strategy, on ``accelerate``.

The trainer owns the ``Accelerator`` (single process, DDP, FSDP or DeepSpeed through accelerate configs),
mixed precision, gradient accumulation and clipping, LR warm-up and schedules, an EMA of the student kept
in float32, logging (a JSONL file always; accelerate trackers such as tensorboard/wandb when asked),
a progress bar, periodic sample grids, and atomic checkpoints with exact resume. It only sees the
``Strategy`` interface: no method-specific branches.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from . import checkpoints
from .config import to_dict
from .data import save_grid
from .denoiser import Condition
from .distributed import unwrap
from .ema import EMA
from .reporting import plot_training_log
from .strategies.base import Strategy
from .streams import DataStream, ImageFolderData


@dataclass
class TrainerConfig:
    """Options of the training loop, shared by every method."""

    output_dir: str = field(default="outputs/run", metadata={"help": "run folder: checkpoints, logs, grids, export"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer steps to train for (progressive distillation: default its whole round schedule)"},
    )
    batch_size: int = field(default=64, metadata={"help": "per-process micro-batch size"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "autocast precision"})
    teacher_dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata={"help": "dtype of the frozen teacher's weights"}
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear LR warm-up steps"})
    lr_schedule: Literal["constant", "cosine", "linear"] = field(
        default="constant", metadata={"help": "LR decay after warm-up"}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm (None: off)"})
    ema_decay: float | None = field(default=None, metadata={"help": "EMA decay of the student (None: no EMA)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise and initialisation"})
    log_every: int = field(default=10, metadata={"help": "steps between log lines"})
    sample_every: int = field(default=0, metadata={"help": "steps between sample grids (0: only at the end)"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder to resume from"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "start afresh in an output folder that holds another run (deletes its checkpoints)"},
    )
    report_to: str | None = field(default=None, metadata={"help": "accelerate tracker: tensorboard, wandb, all"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations (large UNets)"})
    attention: Literal["default", "sdpa", "xformers"] = field(
        default="default", metadata={"help": "attention kernel of diffusers UNets (xformers needs CUDA)"}
    )
    optimizer: Literal["adamw", "adamw8bit"] = field(
        default="adamw",
        metadata={
            "help": "adamw: the strategies' torch AdamW; adamw8bit: the same hyperparameters in bitsandbytes' 8-bit "
            "AdamW (moments of tensors with >= 4096 entries kept in 8 bits: about 6 of Adam's 8 bytes a parameter "
            "saved; needs `pip install bitsandbytes`)"
        },
    )
    num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    max_bad_steps: int = field(
        default=0,
        metadata={
            "help": "consecutive steps with a non-finite loss or gradient to skip (counted, logged, no update) "
            "before stopping with an error; 0 stops at the first"
        },
    )

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"TrainerConfig.ema_decay must be in (0, 1), got {self.ema_decay}.")
        for name in ("lr_warmup_steps", "sample_every", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainerConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainerConfig.max_grad_norm must be positive or none, got {self.max_grad_norm}.")
        if self.keep_checkpoints < 1:
            raise ValueError("TrainerConfig.keep_checkpoints must be >= 1.")
        if self.max_bad_steps < 0:
            raise ValueError(f"TrainerConfig.max_bad_steps must be >= 0, got {self.max_bad_steps}.")


def lr_lambda(config: TrainerConfig):
    """The LR multiplier at trainer step ``step`` (warm-up, then the decay of ``lr_schedule`` to ``max_steps``).

    Every optimizer follows it at the trainer's global step, whatever its own update count: with alternating
    updates (DMD2's 5 fake-score steps per generator step) all networks end their schedule together.
    """

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
        progress = min(1.0, max(0, step - config.lr_warmup_steps) / max(1, config.max_steps - config.lr_warmup_steps))
        if config.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if config.lr_schedule == "linear":
            return warm * (1 - progress)
        return warm

    return factor


def to_8bit(optimizer: torch.optim.Optimizer, name: str = "optimizer") -> torch.optim.Optimizer:
    """The bitsandbytes 8-bit AdamW with ``optimizer``'s parameter groups and hyperparameters (lr, betas, eps,
    weight decay, decoupled as in AdamW); ``optimizer`` must be a torch ``AdamW`` without amsgrad."""
    if type(optimizer) is not torch.optim.AdamW or any(g.get("amsgrad") for g in optimizer.param_groups):
        raise ValueError(f"--optimizer adamw8bit replaces an AdamW optimizer; {name} is {type(optimizer).__name__}.")
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ImportError(
            "--optimizer adamw8bit needs bitsandbytes: `pip install bitsandbytes` (or the stepdistill[8bit] extra), "
            "or use --optimizer adamw."
        ) from err
    keys = ("params", "lr", "betas", "eps", "weight_decay")
    return bnb.optim.AdamW8bit([{k: g[k] for k in keys} for g in optimizer.param_groups])


class Trainer:
    """Train ``strategy`` on ``data``: a dict of equal-length tensors (e.g. ``{"x0": ..., "labels": ...}``) or a
    ``streams.ImageFolderData`` read from disk by ``num_workers`` loader processes.

    Args:
        config: loop options.
        strategy: the method; its ``trainable()`` networks and ``optimizers()`` are prepared here.
        data: the training set, streamed in seeded shuffled batches.
        resolved_config: the full resolved config, written beside every checkpoint.
        grid_condition: condition of the periodic sample grid (default: none).
        callbacks: functions ``fn(trainer)`` called on every process after each optimizer step (and its
            EMA update), e.g. to export intermediate students or compute metrics; ``trainer.step`` tells when.
        decode: maps the sampler's output to images in [-1, 1] for the sample grids (a latent teacher's VAE decoder).
    """

    def __init__(
        self,
        config: TrainerConfig,
        strategy: Strategy,
        data: dict[str, Tensor] | ImageFolderData,
        resolved_config: dict | None = None,
        grid_condition: Condition | None = None,
        callbacks: list | None = None,
        decode=None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        if config.max_steps is None:
            raise ValueError("TrainerConfig.max_steps is not set: give --max-steps N (or a --preset that sets it).")
        self.config, self.strategy = config, strategy
        self.resolved_config = resolved_config or to_dict(config, strategy.config)
        strategy.check_compatible()
        set_seed(config.seed)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # lets torchrun start multi-process CPU runs
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=config.report_to,
            project_config=ProjectConfiguration(project_dir=config.output_dir),
        )
        acc = self.accelerator
        self.step = 0
        self._configure_networks()
        modules, optimizers = strategy.trainable(), strategy.optimizers()
        if set(modules) != set(optimizers):
            raise ValueError(
                f"{type(strategy).__name__}: trainable() {sorted(modules)} and optimizers() "
                f"{sorted(optimizers)} must name the same networks."
            )
        self.names = list(modules)
        self._prepare(modules, optimizers)
        self.bad_steps, self.consecutive_bad_steps, self._started = 0, 0, False
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.teacher_dtype]
        if any(strategy.teacher is acc.unwrap_model(m) for m in modules.values()):
            strategy.teacher.to(acc.device)  # LoRA students share the teacher's network: keep its trainable dtype
        else:
            strategy.teacher.to(acc.device, dtype)
        self.ema = EMA(self._output_network(), config.ema_decay) if config.ema_decay else None
        rank, world = acc.process_index, acc.num_processes
        if hasattr(data, "stream"):  # read from disk while training (streams.ImageFolderData)
            self.data = data.stream(config.batch_size, config.seed, rank, world, config.num_workers)
        else:
            self.data = DataStream(data, config.batch_size, config.seed, rank, world)
        self.grid_condition, self.decode = grid_condition, decode
        self.callbacks = list(callbacks or [])
        self.log_path = os.path.join(config.output_dir, "log.jsonl")

    def _prepare(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Wrap the strategy's networks and optimizers for distributed training; the strategy then calls the wrapped
        networks under the same names."""
        config, strategy = self.config, self.strategy
        # LRs are set from the global step (see lr_lambda), not by per-optimizer schedulers: those would count
        # their own optimizer's updates, and accelerate steps them once per process.
        if config.optimizer == "adamw8bit":
            optimizers = {n: to_8bit(opt, f"{type(strategy).__name__}.{n}") for n, opt in optimizers.items()}
        self.base_lrs = {n: [g["lr"] for g in optimizers[n].param_groups] for n in self.names}
        self.lr_factor = lr_lambda(config)
        prepared = self.accelerator.prepare(*[modules[n] for n in self.names], *[optimizers[n] for n in self.names])
        k = len(self.names)
        for i, n in enumerate(self.names):
            setattr(strategy, n, prepared[i])  # the strategy now calls the wrapped network
        self.optimizers = dict(zip(self.names, prepared[k:]))
        # each loss back-propagates into its own optimizer's parameters only (no gradient leaks between networks)
        self.params = {n: [p for p in getattr(strategy, n).parameters() if p.requires_grad] for n in self.names}

    def _output_network(self) -> nn.Module:
        """The trained network whose outputs are the strategy's samples (``Strategy.output``), unwrapped."""
        return unwrap(getattr(self.strategy, self.strategy.output))

    def _configure_networks(self) -> None:
        for module in self.strategy.trainable().values():
            backbone = getattr(module, "backbone", None)
            if backbone is None:
                continue
            if self.config.gradient_checkpointing:
                if not getattr(backbone, "_supports_gradient_checkpointing", False):
                    raise ValueError(f"{type(backbone).__name__} does not support gradient checkpointing.")
                backbone.enable_gradient_checkpointing()
            if self.config.attention == "xformers":
                if not torch.cuda.is_available():
                    raise ValueError("attention='xformers' needs a CUDA device and the xformers extra.")
                backbone.enable_xformers_memory_efficient_attention()
            elif self.config.attention == "sdpa" and hasattr(backbone, "set_default_attn_processor"):
                from diffusers.models.attention_processor import AttnProcessor2_0

                backbone.set_attn_processor(AttnProcessor2_0())

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> dict:
        """Run to ``max_steps`` (resuming first if asked); returns the last logged values."""
        config, acc, strategy = self.config, self.accelerator, self.strategy
        if config.resume:
            checkpoints.check_output_dir(config.output_dir, config.resume)
            self.load_checkpoint(config.resume)
        elif not self._started:  # a second train() call on this trainer continues its own run
            checkpoints.claim_output_dir(acc, config.output_dir, config.overwrite)
        self._started = True
        if acc.is_main_process:
            checkpoints.write_run_config(config.output_dir, self.resolved_config)
        if config.report_to:
            acc.init_trackers(os.path.basename(os.path.normpath(config.output_dir)))
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=self.step, desc=strategy.name, disable=not acc.is_main_process)
        logs, start, start_step = {}, time.time(), self.step
        window: dict[str, list[float]] = {}  # key -> [sum, count] since the last log line
        while self.step < config.max_steps:
            values = self._optimizer_step()
            if values.get("skipped", 0.0):
                continue  # nothing changed: no step, EMA, callback or checkpoint; counted in skipped_steps
            for key, value in values.items():
                total = window.setdefault(key, [0.0, 0])
                total[0], total[1] = total[0] + value, total[1] + 1
            self.step += 1
            strategy.on_step_end(self.step)
            if self.ema is not None:
                self.ema.update(self._output_network())
            for callback in self.callbacks:
                callback(self)
            bar.update()
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                # the mean of each key over the steps since the last line (a network that only steps every
                # k-th step still shows up), the latest LR
                logs = {k: v[0] / v[1] for k, v in window.items() if not k.startswith("lr/")}
                logs.update({k: values[k] for k in values if k.startswith("lr/")})
                logs["skipped_steps"] = float(self.bad_steps)
                logs["it_per_s"] = (self.step - start_step) / max(time.time() - start, 1e-9)
                logs["elapsed_s"] = time.time() - start  # wall time of this process's training so far
                window = {}
                self.log(logs)
                bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss/")})
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
                self.save_checkpoint()
            if config.sample_every and self.step % config.sample_every == 0:
                self.save_grid()
        bar.close()
        self.save_checkpoint()
        self.save_grid()
        if acc.is_main_process and os.path.isfile(self.log_path):
            plot_training_log(self.log_path, os.path.join(config.output_dir, "training_curves.png"))
        acc.end_training()
        return logs

    def _set_lr(self) -> dict[str, float]:
        factor = self.lr_factor(self.step) * self.strategy.lr_factor(self.step)
        for name in self.names:
            for group, base in zip(self.optimizers[name].param_groups, self.base_lrs[name]):
                group["lr"] = base * factor
        return {f"lr/{name}": self.base_lrs[name][0] * factor for name in self.names}

    def _backward(self, loss: Tensor, name: str) -> None:
        """Back-propagate ``loss`` into the parameters of optimizer ``name`` only."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:  # its engine takes no ``inputs``
            self.accelerator.backward(loss)
        else:
            self.accelerator.backward(loss, inputs=self.params[name])

    def _grad_norm(self, name: str) -> Tensor:
        """Clip (if configured) and return the total gradient norm of optimizer ``name``'s parameters."""
        if self.config.max_grad_norm is not None:
            return self.accelerator.clip_grad_norm_(self.params[name], self.config.max_grad_norm)
        grads = [p.grad.detach().float().norm() for p in self.params[name] if p.grad is not None]
        return torch.stack(grads).norm() if grads else torch.zeros(())

    def _optimizer_step(self) -> dict[str, float]:
        """One optimizer step: ``gradient_accumulation_steps`` micro-batches, then clip and step.

        Returns the step's values (losses averaged over micro-batches, grad norms, LRs); ``"skipped"`` is 1 when
        a non-finite loss or gradient (on any process) made it skip the update, leaving parameters, optimizer
        state and EMA untouched (see ``TrainerConfig.max_bad_steps``).
        """
        acc, strategy = self.accelerator, self.strategy
        modules = [getattr(strategy, n) for n in self.names]
        lrs = self._set_lr()
        sums: dict[str, list[float]] = {}
        stepped: list[str] = []
        bad: list[str] = []
        for _ in range(self.config.gradient_accumulation_steps):
            batch = {k: v.to(acc.device) for k, v in self.data.next().items()}
            with acc.accumulate(*modules), acc.autocast():
                losses = strategy.losses(batch, self.step)
                names = [k for k in losses if not k.startswith("log/")]
                unknown = set(names) - set(self.names)
                if unknown:
                    raise ValueError(f"losses() returned {sorted(unknown)}, which name no optimizer {self.names}.")
                for name in names:
                    if not torch.isfinite(losses[name]).all():
                        bad.append(f"loss/{name} = {float(losses[name].detach())}")
                    self._backward(losses[name], name)
                    stepped += [name] if name not in stepped else []
            for key, value in losses.items():
                total = sums.setdefault(key if key.startswith("log/") else f"loss/{key}", [0.0, 0])
                total[0], total[1] = total[0] + float(value.detach()), total[1] + 1
        values = {k: v[0] / v[1] for k, v in sums.items()}
        for name in stepped:
            norm = self._grad_norm(name)
            values[f"grad_norm/{name}"] = float(norm)
            # fp16 overflows are the grad scaler's business (it skips the step and lowers the scale)
            if not torch.isfinite(norm) and self.config.mixed_precision != "fp16":
                bad.append(f"grad_norm/{name} = {float(norm)}")
        if self._any_process(bool(bad)):
            self._skip(bad)
            return {**values, **lrs, "skipped": 1.0}
        self.consecutive_bad_steps = 0
        for name in stepped:
            self.optimizers[name].step()
        for name in self.names:  # every network, stepped or not: nothing carries into the next update
            self.optimizers[name].zero_grad(set_to_none=True)
        return {**values, **lrs}

    def _any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.accelerator.device), "sum") > 0)

    def _skip(self, bad: list[str]) -> None:
        """Drop this step's gradients, count it, and stop once ``max_bad_steps`` consecutive steps went bad."""
        for name in self.names:
            self.optimizers[name].zero_grad(set_to_none=True)
        self.bad_steps += 1
        self.consecutive_bad_steps += 1
        what = ", ".join(bad) if bad else "a non-finite value on another process"
        if self.consecutive_bad_steps > self.config.max_bad_steps:
            raise FloatingPointError(
                f"Non-finite values at step {self.step} ({what}); {self.consecutive_bad_steps} consecutive bad "
                f"step(s), max_bad_steps = {self.config.max_bad_steps}. No update was applied and the last "
                f"checkpoint in {self.config.output_dir}/checkpoints is intact: lower the learning rate, check the "
                "data and teacher dtype, or raise --max-bad-steps, then --resume latest."
            )
        if self.accelerator.is_main_process:
            print(f"step {self.step}: skipped ({what}); {self.bad_steps} skipped so far")

    # ------------------------------------------------------------------------------------ artefacts
    @torch.no_grad()
    def sample(self, noise: Tensor, cond: Condition | None = None, **kwargs) -> Tensor:
        """The strategy's samples, from the trainer's EMA weights of the student when it keeps an EMA."""
        if self.ema is None:
            return self.strategy.sample(noise, cond, **kwargs)
        with self.ema.swapped(self._output_network()):
            return self.strategy.sample(noise, cond, **kwargs)

    def export_modules(self) -> dict[str, nn.Module]:
        """The strategy's ``export_modules()``, unwrapped; with an EMA, the live student is replaced by a frozen
        copy holding the EMA weights (what grids and evaluation sample, and what a user should ship)."""
        modules = {k: unwrap(m) for k, m in self.strategy.export_modules().items()}
        if self.ema is not None:
            student = self._output_network()
            for key, module in modules.items():
                if module is student:
                    averaged = student.trainable_copy().frozen()
                    self.ema.copy_to(averaged)
                    modules[key] = averaged
        return modules

    def log(self, logs: dict[str, float]) -> None:
        """Write ``logs`` at the current step to the JSONL file and the trackers (main process)."""
        acc = self.accelerator
        if self.config.report_to:
            acc.log(logs, step=self.step)
        if acc.is_main_process:
            os.makedirs(self.config.output_dir, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": self.step, **logs}) + "\n")

    def save_grid(self) -> str | None:
        """Write ``grids/step-N.png`` from the strategy's sampler (main process)."""
        acc = self.accelerator
        if not acc.is_main_process or self.grid_condition is None:
            return None
        shape = unwrap(self.strategy.sampling_network()).sample_shape
        cond = self.grid_condition.map(lambda v: v.to(acc.device))
        noise = torch.randn(len(cond), *shape, generator=torch.Generator().manual_seed(self.config.seed))
        noise = noise.to(acc.device)
        images = self.sample(noise, cond)
        if self.decode is not None:
            images = self.decode(images)
        path = os.path.join(self.config.output_dir, "grids", f"step-{self.step:08d}.png")
        save_grid(images.float().cpu(), path, nrow=max(1, int(math.sqrt(len(cond)))), scale=3)
        return path

    def _trainer_state(self) -> dict:
        state = {"step": self.step, "bad_steps": self.bad_steps, "data": self.data.state_dict()}
        state["strategy"] = self.strategy.extra_state()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _load_trainer_state(self, state: dict) -> None:
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.data.load_state_dict(state["data"])
        self.strategy.load_extra_state(state["strategy"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError(
                    "The checkpoint holds no EMA, but this run keeps one (--ema-decay): resume without it."
                )
            self.ema.load_state_dict(state["ema"])

    def save_checkpoint(self) -> str:
        """Save the full training state to ``checkpoints/step-N``, atomically (all processes must call;
        ``checkpoints.save``). Raises ``FloatingPointError`` rather than save non-finite weights, so "latest" is
        always a good state."""
        networks = {name: getattr(self.strategy, name) for name in self.names}
        return checkpoints.save(
            self.accelerator,
            self.config,
            self.step,
            networks,
            self._trainer_state,
            self.resolved_config,
            self.strategy.name,
        )

    def load_checkpoint(self, which: str) -> None:
        """Restore everything from ``which`` (a checkpoint folder, or ``"latest"``; ``checkpoints.load``), then drop
        the log lines written after it."""
        checkpoints.load(
            self.accelerator, self.config.output_dir, which, self.strategy.name, self.resolved_config, self._load
        )
        if self.accelerator.is_main_process:
            checkpoints.truncate_log(self.log_path, self.step)

    def _load(self, folder: str) -> None:
        self.accelerator.load_state(folder)
        self._load_trainer_state(torch.load(os.path.join(folder, "trainer_state.pt"), weights_only=True))
