"""MeanFlow distillation (Geng et al. 2025) of a diffusion teacher into a one- or two-step flow-map student.

    python train/meanflow.py --preset fashion --output-dir outputs/meanflow-fashion
    accelerate launch train/meanflow.py --preset sd15 --teacher stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --data CAPTIONED_DIR --output-dir outputs/meanflow-sd15

The student starts as the teacher with one more input, the length of a jump (the UNet's time_cond_proj_dim slot,
zero-initialised), and learns the average velocity between two times: each step takes the teacher's ODE velocity at a
noised real image and the student's JVP along it (forward-mode AD on PyTorch's math attention kernel; --jvp
finite_difference for fused kernels or FSDP) and pulls the student toward the MeanFlow identity. Some pairs have
equal times (--flow-fraction: plain flow matching on the teacher's velocity), some are the sampler's own jumps
(--grid-fraction). The student is exported as a diffusers pipeline folder in OUTPUT_DIR/pipeline with
TCDScheduler, whose deterministic jumps (eta 0) down the trailing grid are the student's sampler: call it with
guidance_scale = 1 / num_inference_steps (the jump's length; SD pipelines: 1 + 1 / num_inference_steps). A
UNet2DConditionModel teacher is needed (SD3's transformer has no such input); the student is a full network (a LoRA
adapter cannot carry the new input). Options: a --preset, overridden by a --config file, overridden by flags.
"""

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.meanflow import MeanFlowConfig, MeanFlowStrategy
from stepdistill.trainer import TrainerConfig

# The bundled teacher on 2 CPU cores: this toolkit's settings (not a paper's), the optimizer of the sCD preset
# (train/scm.py: a linear learning-rate decay kept what constant-rate runs lost) and MeanFlow's time proposal. Not
# yet a good student (README, "Flow maps"): the proposal almost never draws the jumps from the top time, so the one
# step stays the teacher's; a quarter of the pairs on the sampler's jumps (--grid-fraction 0.25 --flow-fraction 0.5)
# made both step counts worse (benchmarks/meanflow).
FASHION = {
    "generator_steps": 2,
    "lr": 5e-5,
    "lr_schedule": "linear",
    "betas": [0.9, 0.95],
    "batch_size": 64,
    "lr_warmup_steps": 100,
    "max_grad_norm": 10.0,
    "ema_decay": 0.995,
    "max_steps": 2000,
    "log_every": 20,
    "checkpoint_every": 500,
}

PRESETS = {
    # MeanFlow's ImageNet 256 recipe (Geng et al. 2025, Table 4): logit-normal (-0.4, 1.0), 25% of the pairs with
    # r != t, adaptive weight p = 1, Adam lr 1e-4 with betas (0.9, 0.95), batch 256, EMA 0.9999. The step count and
    # the rest are this toolkit's choice.
    "paper-imagenet": {
        "generator_steps": 1,
        "lr": 1e-4,
        "betas": [0.9, 0.95],
        "batch_size": 256,
        "ema_decay": 0.9999,
        "max_steps": 400000,
    },
    # SD 1.5 / SDXL (this toolkit's starting point, not measured here: no SD weights offline): the JVP by finite
    # difference so fused attention kernels stay on.
    "sd15": {
        "generator_steps": 2,
        "lr": 1e-5,
        "betas": [0.9, 0.95],
        "guidance_scale": 4.5,
        "jvp": "finite_difference",
        "batch_size": 16,
        "gradient_checkpointing": True,
        "max_steps": 10000,
    },
    "fashion": FASHION,
}


def main(argv=None):
    trainer_cfg, model_cfg, mf_cfg = parse_configs(
        [TrainerConfig, ModelConfig, MeanFlowConfig], argv, PRESETS, __doc__
    )
    setup = load_setup(model_cfg)
    strategy = build_strategy(MeanFlowStrategy, mf_cfg, setup, trainer_cfg.seed)
    resolved = to_dict(trainer_cfg, model_cfg, mf_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved)
    trainer.train()
    export_trained(trainer, model_cfg)


if __name__ == "__main__":
    run_cli(main)
