"""Run by ``torchrun --nproc_per_node 2`` from test_strategies.py: for each case, a few optimizer steps of one
strategy on a tiny UNet teacher, recording after every step how far the two ranks' parameters are apart.

    python -m torch.distributed.run --nproc_per_node 2 tests/two_process_worker.py CASES_JSON OUT.json

CASES_JSON maps a case id to ``[registry name, config fields]``. OUT.json (written by rank 0) maps each case id to
``{"steps": [...], "max_rank_diff": [...], "changed": bool, "networks": [...]}``, or to ``{"error": traceback}``.
All cases share one launch and one process group (the interpreters' start-up is most of a case's cost): the
trainer's closing ``accelerator.end_training()`` would tear the group down, and a second group cannot be formed on
torchrun's store, so it is deferred to the end of the launch; accelerate's state is reset between cases.
"""

import json
import os
import sys
import tempfile
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import reset_accelerate_state, tiny_scheduler, tiny_unet

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
    from accelerate import Accelerator

    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    results = {}
    end_training, Accelerator.end_training = Accelerator.end_training, lambda self: self.wait_for_everyone()
    for case, (name, options) in cases.items():
        reset_accelerate_state()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                results[case] = run(name, options, tmp)
        except Exception:  # the other rank fails the same way (or waits in a collective until the test's timeout)
            results[case] = {"error": traceback.format_exc()}
    end_training(Accelerator())
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
