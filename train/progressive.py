"""Progressive distillation of a diffusion teacher into a few-step student (Salimans & Ho 2022).

    python train/progressive.py --preset fashion-4step --output-dir outputs/pd-fashion
    accelerate launch train/progressive.py --config run.yaml

Each round halves the student's steps (teacher_steps -> ... -> target_steps); the result is exported as a
diffusers pipeline folder in OUTPUT_DIR/pipeline. Options come from --preset, then --config, then flags.
"""

import os

import torch

from stepdistill.cli import run_cli
from stepdistill.config import ModelConfig, parse_configs, to_dict
from stepdistill.data import load_training_data
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.export import export_pipeline
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.trainer import Trainer, TrainerConfig

PRESETS = {
    # Salimans & Ho 2022, CIFAR-10 settings (Sec. 5, App. C): 1024 -> 4 steps, ~50k updates per round.
    "paper-cifar10": {"teacher_steps": 1024, "target_steps": 4, "steps_per_round": 50000, "lr": 5e-5,
                      "batch_size": 128, "weighting": "truncated_snr"},
    # The bundled Fashion-MNIST teacher on 2 CPU cores: 64 -> 4 steps in four short rounds.
    "fashion-4step": {"teacher_steps": 64, "target_steps": 4, "steps_per_round": 1000, "lr": 2e-4,
                      "batch_size": 64, "lr_warmup_steps": 100, "log_every": 20},
}


def main(argv=None):
    trainer_cfg, model_cfg, pd_cfg = parse_configs([TrainerConfig, ModelConfig, ProgressiveConfig], argv, PRESETS,
                                                   __doc__)
    trainer_cfg.max_steps = pd_cfg.total_steps
    teacher = Denoiser.from_pretrained(model_cfg.teacher, revision=model_cfg.revision)
    data = load_training_data(model_cfg.data, teacher.backbone.config.sample_size, model_cfg.data_limit)
    strategy = ProgressiveStrategy(pd_cfg, teacher)
    grid = Condition(labels=torch.arange(teacher.null_class).repeat_interleave(8)) if teacher.null_class else None
    trainer = Trainer(trainer_cfg, strategy, data, to_dict(trainer_cfg, model_cfg, pd_cfg), grid)
    trainer.train()
    if trainer.accelerator.is_main_process:
        student = trainer.accelerator.unwrap_model(strategy.student)
        if trainer.ema is not None:
            trainer.ema.copy_to(student)
        folder = export_pipeline(student, os.path.join(trainer_cfg.output_dir, "pipeline"), pd_cfg.target_steps,
                                 strategy.sampling_guidance, card=f"Progressive distillation of {model_cfg.teacher}.\n",
                                 config=trainer.resolved_config)
        print(f"exported {folder}")


if __name__ == "__main__":
    run_cli(main)
