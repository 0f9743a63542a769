"""Run by ``torchrun --nproc_per_node 2`` from test_strategies.py: a few optimizer steps of one strategy on a tiny
UNet teacher, recording after every step how far the two ranks' parameters are apart.

    python -m torch.distributed.run --nproc_per_node 2 tests/two_process_worker.py NAME OPTIONS_JSON OUT.json

NAME is a registry name, OPTIONS_JSON its config fields. OUT.json (written by rank 0):
``{"steps": [...], "max_rank_diff": [...], "changed": bool, "networks": [...]}``. One strategy per launch:
accelerate tears the process group down at the end of training.
"""

import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_scheduler, tiny_unet

from stepdistill.denoiser import Condition, Denoiser
from stepdistill.distributed import unwrap
from stepdistill.schedules import Schedule
from stepdistill.strategies import REGISTRY
from stepdistill.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)


def flat_params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in unwrap(module).parameters() if p.requires_grad])


def run(name: str, options: dict, out_dir: str) -> dict:
    teacher = Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)
    cls = REGISTRY[name]
    torch.manual_seed(0)  # the same initial student on both ranks (as when both load it from disk)
    strategy = cls(cls.config_class(**options), teacher)
    data = {"x0": torch.randn(64, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (64,))}
    record = {"steps": [], "max_rank_diff": []}

    def compare(trainer):
        acc = trainer.accelerator
        diffs = []
        for net in trainer.names:
            mine = flat_params(getattr(trainer.strategy, net))
            both = acc.gather(mine[None])  # [2, P]
            diffs.append(float((both[0] - both[1]).abs().max()))
        record["steps"].append(trainer.step)
        record["max_rank_diff"].append(max(diffs))

    config = TrainerConfig(output_dir=out_dir, max_steps=3, batch_size=4, log_every=1, seed=0)
    trainer = Trainer(config, strategy, data, grid_condition=Condition(labels=torch.arange(3)), callbacks=[compare])
    before = {net: flat_params(getattr(strategy, net)).clone() for net in trainer.names}
    trainer.train()
    record["changed"] = all(not torch.equal(before[net], flat_params(getattr(strategy, net))) for net in trainer.names)
    record["networks"] = list(trainer.names)
    return record


def main():
    name, options, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(name, options, tmp)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
