"""Score identity distillation (SiD, SiD-LSG, few-step SiD) of a diffusion teacher into a 1- or few-step generator,
without real images.

    python train/sid.py --preset fashion --output-dir outputs/sid-fashion
    python train/sid.py --preset fashion-lsg --output-dir outputs/sid-fashion-lsg   # long-short guidance, w = 2
    python train/sid.py --preset fashion-4step --output-dir outputs/sid-fashion-4step
    accelerate launch train/sid.py --preset paper-sd15-lsg --teacher runwayml/stable-diffusion-v1-5 ...

Per iteration (two optimizer steps) the fake score learns the denoising loss on the generator's samples, then the
generator follows the score-identity loss through the teacher and the fake score. Only the conditions (class labels)
are drawn; --data is never read, unless the adversarial term is on (SiDA / SiD²A: --gan-generator-weight and
--gan-critic-weight > 0), whose critic compares generated with real images:

    python train/sid.py --preset fashion-sid2a --student benchmarks/students/sid-1step --output-dir outputs/sid2a
 The generator is exported as a diffusers pipeline folder in OUTPUT_DIR/pipeline (a
one-step DDIM scheduler at the generator's timestep, or an LCMScheduler for few-step generators) and, for a LoRA
generator, OUTPUT_DIR/lora. Options: a --preset, overridden by a --config file, overridden by flags.
"""

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.sid import SiDConfig, SiDStrategy
from stepdistill.trainer import TrainerConfig

# The bundled teacher on 2 CPU cores (measured in the README). max_steps counts optimizer steps: two per iteration.
FASHION = {
    "lr": 1e-4,
    "fake_lr": 1e-4,
    "batch_size": 64,
    "max_grad_norm": 10.0,
    "lr_warmup_steps": 100,
    "lr_schedule": "linear",
    "ema_decay": 0.995,
    "max_steps": 3000,
    "log_every": 20,
    "checkpoint_every": 500,
}

PRESETS = {
    # SiD on CIFAR-10 (Zhou et al. 2024 and its released code): alpha 1.2, sigma_init 2.5, Karras times up to
    # index 800 of 1000, Adam lr 1e-5 with betas (0, 0.999) for both networks, batch 256, fp32, no clipping.
    "paper-cifar10": {
        "alpha": 1.2,
        "init_sigma": 2.5,
        "time_sampling": "karras",
        "t_range": [0.0, 0.8],
        "lr": 1e-5,
        "fake_lr": 1e-5,
        "batch_size": 256,
        "max_steps": 400000,
    },
    # SiD-LSG on SD 1.5 (its released launch script): alpha 1, init timestep 625, kappa_1..4 = 2, lr 1e-6, uniform
    # timesteps in [20, 980], batch 512.
    "paper-sd15-lsg": {
        "alpha": 1.0,
        "init_timestep": 625,
        "time_sampling": "uniform",
        "t_range": [0.02, 0.98],
        "real_guidance_scale": 2.0,
        "fake_train_guidance": 2.0,
        "fake_eval_guidance": 2.0,
        "lr": 1e-6,
        "fake_lr": 1e-6,
        "batch_size": 512,
        "gradient_checkpointing": True,
        "max_steps": 40000,
    },
    # SiD²A on CIFAR-10 (Zhou et al. 2025, "Adversarial Score identity Distillation", its released sida code and
    # launch script): fine-tunes a SiD generator (give it as --student); the critic is the channel mean of the fake
    # score's encoder output, trained in the fake score's step on real and generated images at the same noise; lr 1e-5
    # for both networks, Adam betas (0, 0.999), batch 256. Its loss scalings (generator 100 x summed SiD + 0.01 x
    # C*H*W x cross-entropy / SiD's weight, halved; fake score: summed denoising + lambda(sigma) x mean cross-entropy)
    # in this toolkit's per-pixel means are gan_generator_weight 1e-4 (exact) and gan_critic_weight 5e-3 (1 / (C*H*W)
    # times EDM's lambda(sigma) at its median training noise level: the official weights each sample by
    # lambda(sigma)); its GAN term waits for 200k generated images (781 iterations of 256, 1562 optimizer steps here).
    "paper-cifar10-sid2a": {
        "alpha": 1.2,
        "init_sigma": 2.5,
        "lr": 1e-5,
        "fake_lr": 1e-5,
        "batch_size": 256,
        "gan_generator_weight": 1e-4,
        "gan_critic_weight": 5e-3,
        "gan_warmup_steps": 1562,
        "max_steps": 200000,
    },
    # The bundled Fashion-MNIST teacher on 2 CPU cores: unguided one-step SiD.
    "fashion": FASHION,
    # The README's best one-step student (FD 3.21, 51 min alone on 2 CPU cores): 8,000 steps, EMA half-life ~690 steps.
    "fashion-long": {**FASHION, "max_steps": 8000, "ema_decay": 0.999},
    # The same with long-short guidance at w = 2 for the teacher and the fake score (alpha 1, as in SiD-LSG).
    "fashion-lsg": {
        **FASHION,
        "alpha": 1.0,
        "real_guidance_scale": 2.0,
        "fake_train_guidance": 2.0,
        "fake_eval_guidance": 2.0,
    },
    # SiD²A with the teacher-feature critic on the bundled teacher (README; not a paper's numbers): fine-tunes a one-step
    # SiD generator (--student benchmarks/students/sid-1step); the critic's heads on the teacher's down and mid blocks,
    # noise levels t_max u^2 under 0.3, its own AdamW at 1e-3, trained on every optimizer step.
    "fashion-sid2a": {
        **FASHION,
        "gan_features": "teacher",
        "gan_t_sampling": "low",
        "gan_t_max": 0.3,
        "gan_lr": 1e-3,
        "gan_generator_weight": 3e-2,
        "gan_critic_weight": 0.3,
        "lr": 2e-5,
        "max_steps": 2000,
        "eval_every": 500,
    },
    # Few-step SiD: 4 steps from the top time (999/749/499/249), a uniform mixture over the steps.
    "fashion-4step": {**FASHION, "generator_steps": 4, "init_timestep": 999},
    # The README's best 4-step student (FD 1.95, 0.91x the teacher's 50 steps; 53 min alone on 2 CPU cores): the
    # sampler unrolled end to end instead of the mixture, 4,000 steps, EMA decay 0.999.
    "fashion-4step-unroll": {
        **FASHION,
        "generator_steps": 4,
        "init_timestep": 999,
        "unroll": True,
        "max_steps": 4000,
        "ema_decay": 0.999,
    },
}


def main(argv=None):
    trainer_cfg, model_cfg, sid_cfg = parse_configs([TrainerConfig, ModelConfig, SiDConfig], argv, PRESETS, __doc__)
    setup = load_setup(model_cfg, data_free=not sid_cfg.gan)  # SiDA's critic reads real images
    strategy = build_strategy(SiDStrategy, sid_cfg, setup, trainer_cfg.seed)
    resolved = to_dict(trainer_cfg, model_cfg, sid_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved)
    trainer.train()
    export_trained(trainer, model_cfg)


if __name__ == "__main__":
    run_cli(main)
