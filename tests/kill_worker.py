"""Trained, killed and resumed by test_trainer.py: progressive distillation of the analytic Gaussian mixture with a
checkpoint every step, so that SIGKILLs land inside checkpoint writes too.

    python tests/kill_worker.py OUTPUT_DIR MAX_STEPS [--resume]

Writes OUTPUT_DIR/final.pt (the student's parameters) when it reaches MAX_STEPS.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import mlp_student

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.schedules import Schedule
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.checkpoints import list_checkpoints
from stepdistill.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)


def main():
    out, max_steps = sys.argv[1], int(sys.argv[2])
    resume = "--resume" in sys.argv and bool(list_checkpoints(out))  # killed before the first checkpoint: restart
    mixture = GaussianMixture.random(3, (1, 1, 2), seed=0)
    data = {"x0": mixture.sample(512, torch.Generator().manual_seed(0)).float()}
    schedule = Schedule.cosine()
    config = ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=max_steps // 2, lr=1e-2)
    strategy = ProgressiveStrategy(
        config, GaussianMixtureDenoiser(mixture, schedule), student=mlp_student(schedule, 2)
    )
    trainer_cfg = TrainerConfig(
        output_dir=out,
        max_steps=max_steps,
        batch_size=32,
        ema_decay=0.9,
        checkpoint_every=1,
        log_every=1,
        resume="latest" if resume else None,
        overwrite=not resume,
    )
    Trainer(trainer_cfg, strategy, data).train()
    torch.save({k: v.detach() for k, v in strategy.student.state_dict().items()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main()
