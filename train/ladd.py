"""Latent adversarial diffusion distillation (LADD, SD3-Turbo) of a diffusion teacher into a 1- to 4-step generator.

    python train/ladd.py --preset fashion --output-dir outputs/ladd-fashion              # 4 steps, real images
    python train/ladd.py --preset fashion-1step --output-dir outputs/ladd-fashion-1step  # GAN-only fine-tuning
    python train/ladd.py --preset fashion --data-source teacher --output-dir outputs/ladd-synthetic
    accelerate launch train/ladd.py --preset sd3 --teacher stabilityai/stable-diffusion-3-medium-diffusers \\
        --data CAPTIONED_DIR --output-dir outputs/ladd-sd3

The generator starts as the teacher (or the teacher + LoRA with --lora-rank) and learns from the adversarial loss
alone: a critic of small heads on the frozen teacher's features tells re-noised real images (or, with --data-source
teacher, the teacher's own samples) from re-noised generated ones. Every optimizer step updates the critic and the
generator. The generator is exported as a diffusers pipeline folder in OUTPUT_DIR/pipeline whose LCMScheduler
re-noises between steps as the toolkit's sampler does (and OUTPUT_DIR/lora for a LoRA generator). Options: a
--preset, overridden by a --config file, overridden by flags.
"""

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.ladd import LADDConfig, LADDStrategy
from stepdistill.trainer import TrainerConfig

# The bundled teacher on 2 CPU cores (measured in the README; not a paper's numbers). The critic at lr 1e-3 and noise
# levels biased to low noise (t <= 0.3, t_max u^2): where eval/gan_probe.py measured the teacher's features telling
# generated from real images apart. Step k's input: real images noised to its time (LADD's). With the generator's own
# earlier steps as inputs (--input-from generator) and lr 5e-5, the 4-step run diverged (FD 15.8 at step 500, 29.2 at
# 1,000; benchmarks/ladd/4step-from-teacher-backward-sim).
FASHION = {
    "input_from": "data",
    "lr": 2e-5,
    "gan_lr": 1e-3,
    "gan_t_sampling": "low",
    "gan_t_max": 0.3,
    "gan_loss": "non_saturating",
    "batch_size": 64,
    "max_grad_norm": 10.0,
    "lr_warmup_steps": 100,
    "lr_schedule": "linear",
    "ema_decay": 0.995,
    "max_steps": 1500,
    "log_every": 20,
    "checkpoint_every": 500,
}

PRESETS = {
    # SD3 (LADD, Sauer et al. 2024): 4 steps, hinge loss, logit-normal critic levels, lr 1e-5. Batch, steps and the
    # LoRA rank are this toolkit's starting point, not the paper's numbers (not measured here: no SD3 weights).
    "sd3": {
        "generator_steps": 4,
        "gan_loss": "hinge",
        "gan_t_sampling": "logit_normal",
        "lr": 1e-5,
        "gan_lr": 1e-5,
        "lora_rank": 64,
        "batch_size": 8,
        "mixed_precision": "bf16",
        "teacher_dtype": "bfloat16",
        "gradient_checkpointing": True,
        "max_steps": 10000,
    },
    # SD 1.5 / SDXL with the same recipe (this toolkit's starting point, not a paper's numbers).
    "sd15": {
        "generator_steps": 4,
        "gan_loss": "hinge",
        "gan_t_sampling": "logit_normal",
        "lr": 1e-5,
        "gan_lr": 1e-5,
        "batch_size": 16,
        "gradient_checkpointing": True,
        "max_steps": 10000,
    },
    # The bundled Fashion-MNIST teacher: four steps (999/749/499/249) against real images.
    "fashion": {**FASHION, "generator_steps": 4},
    # One step against real images: GAN-only fine-tuning of the teacher (GDD / D2O); its input is pure noise.
    "fashion-1step": {**FASHION, "generator_steps": 1, "input_from": "generator", "lr": 5e-5, "max_steps": 600},
}


def main(argv=None):
    trainer_cfg, model_cfg, ladd_cfg = parse_configs([TrainerConfig, ModelConfig, LADDConfig], argv, PRESETS, __doc__)
    setup = load_setup(model_cfg)
    strategy = build_strategy(LADDStrategy, ladd_cfg, setup, trainer_cfg.seed)
    resolved = to_dict(trainer_cfg, model_cfg, ladd_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved)
    trainer.train()
    export_trained(trainer, model_cfg)


if __name__ == "__main__":
    run_cli(main)
