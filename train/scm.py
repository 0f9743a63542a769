"""Continuous-time consistency distillation (sCD, Lu & Song 2024) of a diffusion teacher into a 1- or 2-step student.

    python train/scm.py --preset fashion --output-dir outputs/scm-fashion
    python train/scm.py --preset fashion-rcm --output-dir outputs/rcm-fashion                  # rCM: sCD + DMD
    accelerate launch train/scm.py --preset sd15 --teacher stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --data CAPTIONED_DIR --output-dir outputs/scm-sd15

The student starts as the teacher and learns its probability-flow ODE map in TrigFlow time: each step takes the
teacher's ODE velocity at a noised real image and the student's own JVP along it (forward-mode AD on PyTorch's math
attention kernel; --jvp finite_difference for fused kernels or FSDP), and pulls the student toward sCM's normalised
tangent, weighted by a learned log-variance over time. Any teacher schedule works (discrete VP, cosine, rectified
flow): its times are mapped to TrigFlow exactly. The student is exported as a diffusers pipeline folder in
OUTPUT_DIR/pipeline whose LCMScheduler samples in one step from the top time or, with --generator-steps 2, in two
(999 then 499, with fresh noise between, near sCM's middle time 1.1); a LoRA student also in OUTPUT_DIR/lora. With
--dmd-weight (rCM; --preset fashion-rcm) a fake score learns the student's samples and DMD's distribution-matching term
joins the sCM loss after the tangent warm-up. Options: a --preset, overridden by a --config file, overridden by flags.
"""

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.scm import SCMConfig, SCMStrategy
from stepdistill.trainer import TrainerConfig

# The bundled teacher on 2 CPU cores: this toolkit's settings (not a paper's), sCM's time proposal and sigma_d. The
# best of three measured runs (README, "Continuous-time consistency (sCD)"): without the adaptive weighting and with a
# linear learning-rate decay; at a constant rate the runs improved for about 1,000 updates and then degraded.
FASHION = {
    "generator_steps": 2,
    "lr": 5e-5,
    "lr_schedule": "linear",
    "adaptive_weighting": False,
    "betas": [0.9, 0.99],
    "batch_size": 64,
    "tangent_warmup_steps": 300,
    "lr_warmup_steps": 100,
    "max_grad_norm": 10.0,
    "ema_decay": 0.995,
    "max_steps": 2000,
    "log_every": 20,
    "checkpoint_every": 500,
}

PRESETS = {
    # sCD on CIFAR-10 (App. G.2 of Lu & Song 2024): sigma_d 0.5, tau ~ N(-1.0, 1.4^2), tangent warm-up 10k
    # iterations, Adam betas (0.9, 0.99), two-step sampling. The learning rate and batch are this toolkit's choice.
    "paper-cifar10": {"generator_steps": 2, "lr": 1e-4, "betas": [0.9, 0.99], "batch_size": 512, "max_steps": 400000},
    # SD 1.5 / SDXL (this toolkit's starting point, not measured here: no SD weights offline): LoRA, the JVP by finite
    # difference so fused attention kernels stay on, tau ~ N(-0.8, 1.6^2) (sCM's ImageNet 512 latents).
    "sd15": {
        "generator_steps": 2,
        "lora_rank": 64,
        "lr": 1e-4,
        "betas": [0.9, 0.99],
        "p_mean": -0.8,
        "p_std": 1.6,
        "guidance_scale": 4.5,
        "jvp": "finite_difference",
        "batch_size": 16,
        "gradient_checkpointing": True,
        "max_steps": 10000,
    },
    "fashion": FASHION,
    # rCM on the bundled teacher (this toolkit's settings, not a paper's): the sCD preset plus DMD's term at rCM's
    # 1:100 against the sCM loss (0.02 here), its noise levels log(sigma/alpha) ~ N(0, 1.6^2), on after the tangent
    # warm-up; two fake-score updates per student update (rCM: 5), so 3,000 iterations give 1,500 student updates.
    "fashion-rcm": {**FASHION, "dmd_weight": 0.02, "fake_updates_per_generator": 2, "max_steps": 3000},
    # rCM's Wan2.1 1.3B recipe (Zheng et al. 2025, released config): student lr 2e-6 and fake score 4e-7, Adam betas
    # (0, 0.999), 5 fake-score updates per student update, sCM times N(-0.8, 1.6^2), DMD times N(0, 1.6^2), tangent
    # warm-up 1,000, teacher guidance 5; the DMD weight as rCM's 1:100 in this toolkit's units. Not measured here.
    "paper-rcm": {
        "generator_steps": 4,
        "dmd_weight": 0.02,
        "fake_updates_per_generator": 5,
        "lr": 2e-6,
        "fake_lr": 4e-7,
        "betas": [0.0, 0.999],
        "weight_decay": 0.01,
        "p_mean": -0.8,
        "p_std": 1.6,
        "tangent_warmup_steps": 1000,
        "guidance_scale": 5.0,
        "max_steps": 100000,
    },
}


def main(argv=None):
    trainer_cfg, model_cfg, scm_cfg = parse_configs([TrainerConfig, ModelConfig, SCMConfig], argv, PRESETS, __doc__)
    setup = load_setup(model_cfg)
    strategy = build_strategy(SCMStrategy, scm_cfg, setup, trainer_cfg.seed)
    resolved = to_dict(trainer_cfg, model_cfg, scm_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved)
    trainer.train()
    export_trained(trainer, model_cfg)


if __name__ == "__main__":
    run_cli(main)
