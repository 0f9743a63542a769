"""Progressive distillation of a diffusion teacher into a few-step student (Salimans & Ho 2022).

    python train/progressive.py --preset fashion --output-dir outputs/pd-fashion
    accelerate launch train/progressive.py --config run.yaml

Each round halves the student's steps (teacher_steps -> ... -> target_steps); every round whose step count
lands on the teacher's integer timesteps is exported as a diffusers pipeline folder OUTPUT_DIR/pipeline-<N>steps.
Options: a --preset, overridden by a --config file, overridden by flags.
"""

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.recipes import build_strategy, build_trainer, export_trained, load_setup
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.trainer import TrainerConfig

PRESETS = {
    # Salimans & Ho 2022, CIFAR-10 settings (Sec. 5, App. C): 1024 -> 4 steps, ~50k updates per round.
    "paper-cifar10": {
        "teacher_steps": 1024,
        "target_steps": 4,
        "steps_per_round": 50000,
        "lr": 5e-5,
        "batch_size": 128,
        "weighting": "truncated_snr",
    },
    # Guided PD on SD-scale latent text-to-image teachers (Meng et al. 2023, arXiv 2210.03142): stage 1 distils the
    # guided teacher into a w-conditioned student at 64 steps, then four rounds halve it to 4 steps with w passed
    # through. The w range is the LCM family's for SD 1.5 ([3, 15] in the (1 + w) c - w u form of Meng et al. and
    # LCM, so [4, 16] here, as in train/consistency.py's paper-lcm); the stage lengths, lr and batch size are this
    # toolkit's choice for a full SD 1.5 UNet, not numbers from the paper, and no run of this preset was made here.
    "sd15-guided": {
        "guidance_range": [4.0, 16.0],
        "guided_steps": 20000,
        "teacher_steps": 64,
        "target_steps": 4,
        "steps_per_round": 10000,
        "lr": 1e-5,
        "batch_size": 32,
        "mixed_precision": "bf16",
        "teacher_dtype": "bfloat16",
        "gradient_checkpointing": True,
    },
    # A quick run for the demo (a few minutes on 2 CPU cores): 64 -> 4 steps, 150 updates per round.
    "demo": {
        "teacher_steps": 64,
        "target_steps": 4,
        "steps_per_round": 150,
        "lr": 2e-4,
        "batch_size": 64,
        "lr_warmup_steps": 50,
        "log_every": 20,
        "round_lr_schedule": "constant",  # the README's demo figures were measured with a constant LR
    },
    # The bundled Fashion-MNIST teacher on 2 CPU cores: 64 -> 2 steps in five short rounds (exports 8, 4, 2),
    # each annealing its LR to 0 (round_lr_schedule, the default).
    "fashion": {
        "teacher_steps": 64,
        "target_steps": 2,
        "steps_per_round": 1500,
        "lr": 2e-4,
        "batch_size": 64,
        "lr_warmup_steps": 100,
        "log_every": 20,
        "checkpoint_every": 500,
    },
}


def main(argv=None):
    trainer_cfg, model_cfg, pd_cfg = parse_configs(
        [TrainerConfig, ModelConfig, ProgressiveConfig], argv, PRESETS, __doc__
    )
    if trainer_cfg.max_steps is None:
        trainer_cfg.max_steps = pd_cfg.total_steps
    elif trainer_cfg.max_steps > pd_cfg.total_steps:
        raise ValueError(
            f"--max-steps {trainer_cfg.max_steps} exceeds the progressive schedule ({pd_cfg.total_steps} steps: "
            f"{pd_cfg.num_rounds} rounds of --steps-per-round {pd_cfg.steps_per_round}"
            f"{f' after {pd_cfg.guided_steps} guided steps' if pd_cfg.guided_steps else ''}); raise --steps-per-round."
        )
    elif trainer_cfg.max_steps < pd_cfg.total_steps:
        print(f"stopping after --max-steps {trainer_cfg.max_steps} of the schedule's {pd_cfg.total_steps} steps")
    setup = load_setup(model_cfg)
    strategy = build_strategy(ProgressiveStrategy, pd_cfg, setup, trainer_cfg.seed)

    def export_round(trainer):
        """At the end of each halving round (and of the run), export that round's student as pipeline-<N>steps."""
        last = trainer.step == trainer_cfg.max_steps and strategy.round_of(trainer.step - 1) >= 0
        if strategy.round_ends(trainer.step) or last:
            export_trained(trainer, model_cfg)

    resolved = to_dict(trainer_cfg, model_cfg, pd_cfg)
    trainer = build_trainer(trainer_cfg, model_cfg, strategy, setup, resolved, [export_round])
    trainer.train()


if __name__ == "__main__":
    run_cli(main)
