"""Distribution matching distillation (DMD / DMD2) of a diffusion teacher into a 1- or few-step generator.

    python train/dmd.py --preset fashion --output-dir outputs/dmd2-fashion
    python train/dmd.py --preset fashion-4step --output-dir outputs/dmd2-fashion-4step
    python train/dmd.py --preset fashion --gan-generator-weight 0 --gan-critic-weight 0 --output-dir outputs/dmd-nogan
    accelerate launch train/dmd.py --preset paper-sd15 --teacher runwayml/stable-diffusion-v1-5 --data CAPTIONED_DIR
    accelerate launch train/dmd.py --preset paper-sdxl --teacher stabilityai/stable-diffusion-xl-base-1.0 --data ...

The generator follows the distribution-matching gradient between the teacher (real score) and a fake score
trained on its samples; DMD2 adds two time-scale updates, a GAN head on the fake score and backward simulation
for multi-step generators. It is exported as a diffusers pipeline folder in OUTPUT_DIR/pipeline whose
LCMScheduler re-noises between steps as the toolkit's sampler does (and OUTPUT_DIR/lora for a LoRA generator).
Options: a --preset, overridden by a --config file, overridden by flags.
"""

import os

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.dmd import DMDConfig, DMDStrategy
from stepdistill.trainer import TrainerConfig

# The bundled teacher on 2 CPU cores (measured in the README). GAN weights 10x / 30x DMD2's: with the paper's
# 3e-3 / 1e-2 the critic of this 0.6M-parameter fake score stayed at chance (loss 2 ln 2) for 2,000 steps.
FASHION = {
    "lr": 1e-4,
    "fake_lr": 1e-4,
    "batch_size": 64,
    "fake_updates_per_generator": 5,
    "gan_generator_weight": 0.03,
    "gan_critic_weight": 0.3,
    "max_grad_norm": 10.0,
    "lr_warmup_steps": 100,
    "lr_schedule": "linear",
    "ema_decay": 0.995,
    "max_steps": 3000,
    "log_every": 20,
    "checkpoint_every": 500,
}

PRESETS = {
    # DMD2 on ImageNet-64 (Yin et al. 2024, Sec. 5.1 and its released configs): lr 2e-6 for both networks, TTUR 5,
    # GAN weights 3e-3 (generator) / 1e-2 (critic), grad clip 10, 500 warm-up steps.
    "paper-imagenet64": {
        "lr": 2e-6,
        "fake_lr": 2e-6,
        "fake_updates_per_generator": 5,
        "gan_generator_weight": 3e-3,
        "gan_critic_weight": 1e-2,
        "max_grad_norm": 10.0,
        "lr_warmup_steps": 500,
        "batch_size": 40,
        "max_steps": 200000,
    },
    # DMD2 on SD 1.5 (its released launch script): real guidance 1.75, lr 1e-5, TTUR 10, GAN 1e-3 / 1e-2.
    "paper-sd15": {
        "lr": 1e-5,
        "fake_lr": 1e-5,
        "real_guidance_scale": 1.75,
        "fake_updates_per_generator": 10,
        "gan_generator_weight": 1e-3,
        "gan_critic_weight": 1e-2,
        "max_grad_norm": 10.0,
        "batch_size": 32,
        "gradient_checkpointing": True,
        "max_steps": 40000,
    },
    # DMD2 on SDXL, 4 steps (its released model-zoo run: lr 5e-7, 4 denoising steps with backward simulation, GAN
    # generator weight 5e-3, real guidance 8); critic weight and TTUR as in the SD 1.5 run's family (1e-2, 5).
    "paper-sdxl": {
        "lr": 5e-7,
        "fake_lr": 5e-7,
        "real_guidance_scale": 8.0,
        "generator_steps": 4,
        "backward_simulation": True,
        "fake_updates_per_generator": 5,
        "gan_generator_weight": 5e-3,
        "gan_critic_weight": 1e-2,
        "max_grad_norm": 10.0,
        "batch_size": 2,
        "mixed_precision": "bf16",
        "teacher_dtype": "bfloat16",
        "gradient_checkpointing": True,
        "max_steps": 20000,
    },
    # The bundled Fashion-MNIST teacher on 2 CPU cores: a one-step generator with the GAN term.
    "fashion": FASHION,
    # The best one-step DMD2 here (README; benchmarks/students/dmd2-1step-teacher-gan): the teacher-feature critic
    # (heads on its down and mid blocks, noise levels t_max u^2 under 0.3, its own AdamW at 1e-3) fine-tuning a
    # one-step SiD generator at its input time (--student benchmarks/students/sid-1step): 2.44 at 5,000 samples.
    "fashion-teacher-gan": {
        **FASHION,
        "init_timestep": 755,
        "time_sampling": "karras",
        "gan_features": "teacher",
        "gan_t_sampling": "low",
        "gan_t_max": 0.3,
        "gan_lr": 1e-3,
        "lr": 2e-5,
        "max_steps": 2000,
    },
    # Four steps (999/749/499/249) with backward simulation; each step costs ~1.3x a one-step update.
    "fashion-4step": {**FASHION, "generator_steps": 4, "max_steps": 1500},
}


def main(argv=None):
    trainer_cfg, model_cfg, dmd_cfg = parse_configs([TrainerConfig, ModelConfig, DMDConfig], argv, PRESETS, __doc__)
    if dmd_cfg.regression_weight and dmd_cfg.regression_cache is None:  # made once per run folder, kept for resume
        dmd_cfg.regression_cache = os.path.join(trainer_cfg.output_dir, "regression-pairs.pt")
    setup = load_setup(model_cfg)
    strategy = build_strategy(DMDStrategy, dmd_cfg, setup, trainer_cfg.seed)
    resolved = to_dict(trainer_cfg, model_cfg, dmd_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved)
    trainer.train()
    export_trained(trainer, model_cfg)


if __name__ == "__main__":
    run_cli(main)
