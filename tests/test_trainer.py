"""Trainer: exact resume, atomic checkpoints, clear failures."""

import json
import math
import os
from dataclasses import dataclass

import pytest
import torch
from conftest import mlp_student, reset_accelerate_state

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.checkpoints import verify
from stepdistill.schedules import Schedule
from stepdistill.strategies.base import Strategy, unwrap
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.checkpoints import list_checkpoints
from stepdistill.trainer import DataStream, Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


MIXTURE = GaussianMixture.random(3, (1, 1, 2), seed=0)
DATA = {"x0": MIXTURE.sample(512, torch.Generator().manual_seed(0)).float()}


def make_trainer(out, max_steps, **kw):
    schedule = Schedule.cosine()
    # two rounds of 3 steps: the resume point (step 3) sits on a round boundary with a snapshot teacher
    config = ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=3, lr=1e-2)
    strategy = ProgressiveStrategy(
        config, GaussianMixtureDenoiser(MIXTURE, schedule), student=mlp_student(schedule, 2)
    )
    trainer_cfg = TrainerConfig(
        output_dir=str(out),
        max_steps=max_steps,
        batch_size=32,
        log_every=1,
        ema_decay=0.9,
        lr_warmup_steps=2,
        lr_schedule="cosine",
        **kw,
    )
    return Trainer(trainer_cfg, strategy, DATA), strategy


def params(strategy):
    return torch.cat([p.detach().flatten() for p in strategy.student.parameters()])


def test_resume_is_exact(tmp_path, monkeypatch):
    full, s_full = make_trainer(tmp_path / "full", 6)
    full.train()
    first, s_first = make_trainer(tmp_path / "split", 6, checkpoint_every=2)

    def crash(step):  # the process dies during step 5, after the step-4 checkpoint
        if step == 5:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(s_first, "on_step_end", crash)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    reset_accelerate_state()
    second, s_resumed = make_trainer(tmp_path / "split", 6, resume="latest")
    second.train()
    assert torch.equal(params(s_full), params(s_resumed))
    assert all(torch.equal(full.ema.shadow[k], second.ema.shadow[k]) for k in full.ema.shadow)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "split"))] == [
        "step-00000004",
        "step-00000006",
    ]
    assert not torch.equal(params(s_first), params(s_resumed))


def test_interrupted_checkpoint_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    trainer, _ = make_trainer(tmp_path, 2)
    trainer.train()
    good = list_checkpoints(str(tmp_path))
    assert [os.path.basename(p) for p in good] == ["step-00000002"]

    def crash(folder, *args, **kwargs):
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, "model.safetensors"), "w").write("half written")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(trainer.accelerator, "save_state", crash)
    trainer.step = 3
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert list_checkpoints(str(tmp_path)) == good  # the partial .tmp folder is not a checkpoint
    assert os.path.isfile(os.path.join(good[0], "model.safetensors"))


def test_bad_resume_and_nan_loss_fail_clearly(tmp_path, monkeypatch):
    trainer, strategy = make_trainer(tmp_path, 2, resume="latest")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        trainer.train()
    trainer, strategy = make_trainer(tmp_path / "nan", 2)
    monkeypatch.setattr(
        strategy, "losses", lambda batch, step: {"student": torch.tensor(float("nan"), requires_grad=True)}
    )
    with pytest.raises(FloatingPointError, match=r"Non-finite values at step 0 \(loss/student = nan\)"):
        trainer.train()
    with pytest.raises(ValueError, match="max_steps"):
        TrainerConfig(max_steps=0)


def test_data_stream_resumes_and_splits_across_ranks():
    data = {"x0": torch.arange(20.0)}
    stream = DataStream(data, batch_size=3, seed=1)
    seen = [stream.next()["x0"] for _ in range(5)]  # crosses an epoch boundary (6 per epoch)
    state = stream.state_dict()
    after = [stream.next()["x0"] for _ in range(3)]
    again = DataStream(data, batch_size=3, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(after, [again.next()["x0"] for _ in range(3)]))
    assert len(torch.cat(seen[:6]).unique()) == 15  # no repeats within an epoch
    ranks = [DataStream(data, batch_size=2, seed=1, rank=r, world=2).next()["x0"] for r in range(2)]
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())


def test_atomic_dir_gives_ordinary_permissions(tmp_path):
    """Files written into an atomic folder (safetensors creates owner-only files) end up readable like any other."""
    import stat

    from safetensors.torch import save_file

    from stepdistill.io import atomic_dir

    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, os.path.join(tmp, "w.safetensors"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "w.safetensors").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755


@dataclass
class ToyConfig:
    ratio: int = 4


class Toy(Strategy):
    """Two networks with alternating updates: ``ratio`` fake-score steps, then one student step (DMD2's TTUR
    shape). With ``leak`` the student loss runs through the fake score directly instead of ``self.frozen``."""

    config_class = ToyConfig

    def __init__(self, ratio=4, leak=False, nan_calls=(), fake_grad=True):
        schedule = Schedule.cosine()
        super().__init__(ToyConfig(ratio), GaussianMixtureDenoiser(MIXTURE, schedule))
        self.ratio, self.leak, self.fake_grad = ratio, leak, fake_grad
        self.nan_calls, self.calls = set(nan_calls), []  # losses() calls (0, 1, ...) that return NaN
        self.student, self.fake_score = mlp_student(schedule, 2, seed=0), mlp_student(schedule, 2, seed=1)

    def trainable(self):
        return {"student": self.student, "fake_score": self.fake_score}

    def optimizers(self):
        lrs = {"student": 0.1, "fake_score": 0.01}
        return {n: torch.optim.SGD(m.parameters(), lr=lrs[n]) for n, m in self.trainable().items()}

    def losses(self, batch, step):
        self.calls.append(step)
        scale = float("nan") if len(self.calls) - 1 in self.nan_calls else 1.0
        x0 = batch["x0"]
        t = torch.full((len(x0),), 0.5)
        if step % (self.ratio + 1) < self.ratio:
            fake = self.fake_score(self.student(x0, t).detach(), t)
            loss = fake.pow(2).mean() if self.fake_grad else 0.0 * sum(p.sum() for p in self.fake_score.parameters())
            return {"fake_score": loss * scale}
        generated = self.student(x0, t)
        if self.leak:
            loss = self.fake_score(generated, t).pow(2).mean()
        else:
            with self.frozen("fake_score") as fake_score:
                loss = fake_score(generated, t).pow(2).mean()
        return {"student": loss * scale}

    def sample(self, noise, cond=None):
        return unwrap(self.student)(noise, 1.0)


def flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


@pytest.mark.parametrize("leak", [False, True])
def test_a_loss_cannot_leak_gradient_into_another_optimizer(tmp_path, leak):
    """Step 0 trains the student through the fake score; step 1 gives the fake score a zero gradient. Its SGD
    update must then be exactly zero, even when the strategy forgot ``self.frozen`` (leak=True)."""
    strategy = Toy(ratio=1, leak=leak, fake_grad=False)
    strategy.losses = lambda batch, step, orig=strategy.losses: orig(batch, step + 1)  # student step first
    trainer = Trainer(TrainerConfig(output_dir=str(tmp_path), max_steps=1, batch_size=16), strategy, DATA)
    fake_before, student_before = flat(strategy.fake_score), flat(strategy.student)
    trainer.train()
    assert not torch.equal(flat(strategy.student), student_before)
    assert all(p.grad is None for p in strategy.fake_score.parameters())  # nothing carried to the next step
    trainer.config.max_steps = 2
    trainer.train()
    assert torch.equal(flat(strategy.fake_score), fake_before)
    assert all(p.requires_grad for p in strategy.fake_score.parameters())  # frozen() restored the flags


def test_lr_schedules_follow_the_global_step_and_logs_show_every_loss(tmp_path):
    """4:1 alternation with a cosine schedule: both networks end their schedule together; with 5:1 alternation
    and a log line every 10 steps, every line holds the mean of both losses."""
    import json

    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path / "a"), max_steps=20, batch_size=16, lr_schedule="cosine", log_every=5),
        Toy(ratio=4),
        DATA,
    )
    trainer.train()
    last = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")][-1]
    factor = 0.5 * (1 + math.cos(math.pi * 19 / 20))  # the schedule at the last step, 19 of 20
    assert last["lr/student"] == pytest.approx(0.1 * factor) and last["lr/fake_score"] == pytest.approx(0.01 * factor)

    reset_accelerate_state()
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path / "b"), max_steps=30, batch_size=16, log_every=10), Toy(ratio=5), DATA
    )
    trainer.train()
    lines = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert all("loss/student" in line and "loss/fake_score" in line for line in lines), lines
    assert 0 < lines[0]["elapsed_s"] <= lines[1]["elapsed_s"] <= lines[2]["elapsed_s"]  # the run's wall time


def test_progressive_lr_anneals_within_each_round(tmp_path):
    """round_lr_schedule="linear": the LR restarts at its peak when a round starts and falls linearly towards 0
    by the round's end, on top of the trainer's own schedule (constant here)."""
    schedule = Schedule.cosine()
    config = ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=4, lr=1e-2)
    strategy = ProgressiveStrategy(
        config, GaussianMixtureDenoiser(MIXTURE, schedule), student=mlp_student(schedule, 2)
    )
    Trainer(TrainerConfig(output_dir=str(tmp_path), max_steps=8, batch_size=16, log_every=1), strategy, DATA).train()
    lrs = [json.loads(line)["lr/student"] for line in open(tmp_path / "log.jsonl")]
    assert lrs == pytest.approx([1e-2 * f for f in (1, 0.75, 0.5, 0.25)] * 2)
    assert strategy.lr_factor(20) == pytest.approx(0.25)  # past the schedule: the last round's final LR, not < 0
    assert (
        ProgressiveStrategy(
            ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=4, round_lr_schedule="constant"),
            GaussianMixtureDenoiser(MIXTURE, schedule),
            student=mlp_student(schedule, 2),
        ).lr_factor(3)
        == 1.0
    )


def test_non_finite_steps_are_skipped_counted_then_stop(tmp_path):
    """A NaN step changes nothing (parameters, EMA), is counted in the log, and training goes on; more consecutive
    bad steps than allowed stop with an error, leaving the last checkpoint loadable."""
    import json

    strategy = Toy(ratio=1, nan_calls={3})
    config = TrainerConfig(
        output_dir=str(tmp_path), max_steps=6, batch_size=16, log_every=1, ema_decay=0.5, max_bad_steps=1
    )
    trainer = Trainer(config, strategy, DATA)
    seen = []  # the student's parameters at each losses() call
    strategy.losses = lambda batch, step, orig=strategy.losses: (
        seen.append(flat(strategy.student)) or orig(batch, step)
    )
    trainer.train()
    assert strategy.calls == [0, 1, 2, 3, 3, 4, 5]  # step 3 went bad once and was retried with the next batch
    assert torch.equal(seen[3], seen[4]) and not torch.equal(seen[4], seen[5])  # step 3 trains the student
    assert trainer.bad_steps == 1 and trainer.ema.num_updates == 6
    logs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [line["skipped_steps"] for line in logs] == [0, 0, 0, 1, 1, 1]

    reset_accelerate_state()
    strategy = Toy(ratio=1, nan_calls=range(2, 100))
    config = TrainerConfig(output_dir=str(tmp_path / "stop"), max_steps=6, batch_size=16, checkpoint_every=1)
    trainer = Trainer(config, strategy, DATA)
    before = flat(strategy.student)
    with pytest.raises(FloatingPointError, match="1 consecutive bad step"):
        trainer.train()
    assert trainer.step == 2 and not torch.equal(flat(strategy.student), before)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "stop"))][-1] == "step-00000002"
    reset_accelerate_state()
    config.resume = "latest"
    resumed = Toy(ratio=1)
    Trainer(config, resumed, DATA).train()  # the last good checkpoint loads and training finishes
    assert resumed.calls == [2, 3, 4, 5]


def test_trainer_ema_is_what_grids_evaluation_and_export_use(tmp_path):
    strategy = Toy(ratio=1)
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), max_steps=4, batch_size=16, ema_decay=0.5), strategy, DATA
    )
    trainer.train()
    exported = trainer.export_modules()["student"]
    averaged = torch.cat([trainer.ema.shadow[k].flatten() for k, _ in strategy.student.named_parameters()])
    assert torch.equal(flat(exported), averaged) and not torch.equal(flat(exported), flat(strategy.student))
    noise = torch.randn(4, 1, 1, 2)
    assert torch.allclose(trainer.sample(noise), exported(noise, 1.0))
    assert not exported.training and not any(p.requires_grad for p in exported.parameters())


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """SIGKILL a training process at random moments (a checkpoint every step, so some kills land inside a save),
    resume each time, and reach exactly the parameters of an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "tests/kill_worker.py"]
    steps = 500
    subprocess.run([*command, str(tmp_path / "whole"), str(steps)], check=True, env=env, capture_output=True)
    rng, kills, inside_save = random.Random(0), 0, 0
    out = tmp_path / "killed"

    def logged_steps():
        return sum(1 for _ in open(out / "log.jsonl")) if (out / "log.jsonl").exists() else 0

    while not (out / "final.pt").exists():
        proc = subprocess.Popen([*command, str(out), str(steps), "--resume"], env=env, stderr=subprocess.PIPE)
        # kill 10-80 steps into this attempt (by progress, not time); at least 5 kills, and more (up to 15) until one
        # has landed inside a checkpoint save, which a busy machine makes rarer
        if kills < 5 or (inside_save == 0 and kills < 15):
            target = logged_steps() + rng.randint(10, 80)
            while proc.poll() is None and logged_steps() < target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.01))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                proc.wait()
                inside_save += any(p.name.startswith(".tmp-") for p in (out / "checkpoints").glob("*"))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    whole, resumed = torch.load(tmp_path / "whole" / "final.pt"), torch.load(out / "final.pt")
    assert kills >= 5 and inside_save >= 1, (kills, inside_save)  # most of a step's time is its checkpoint save
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps_logged = [json.loads(line)["step"] for line in open(out / "log.jsonl")]
    assert steps_logged == list(range(1, steps + 1))  # resumed runs never repeat a logged step


def test_resume_falls_back_past_a_damaged_checkpoint_and_never_unpickles(tmp_path):
    trainer, _ = make_trainer(tmp_path, 4, checkpoint_every=1, keep_checkpoints=3)
    trainer.train()
    newest = list_checkpoints(str(tmp_path))[-1]
    weights = os.path.join(newest, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path, 5, resume="latest")
    with pytest.warns(
        UserWarning, match=r"step-00000004.*model.safetensors has .* bytes.*resuming from .*step-00000003"
    ):
        trainer.load_checkpoint("latest")
    assert trainer.step == 3
    # a deleted RNG file is caught too, and a pickle payload in the trainer state never runs
    os.remove(os.path.join(list_checkpoints(str(tmp_path))[-2], "random_states_0.pkl"))
    assert "random_states_0.pkl is missing" in verify(list_checkpoints(str(tmp_path))[-2])

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    oldest = list_checkpoints(str(tmp_path))[0]
    state = os.path.join(oldest, "trainer_state.pt")
    torch.save({"step": Payload()}, state)
    with pytest.raises(ValueError, match="damaged"):
        make_trainer(tmp_path, 5)[0].load_checkpoint(oldest)
    assert not (tmp_path / "pwned").exists()


def test_output_folder_of_another_run_is_never_silently_reused(tmp_path):
    trainer, _ = make_trainer(tmp_path, 2)
    trainer.train()
    reset_accelerate_state()
    with pytest.raises(ValueError, match="already holds a run.*--resume latest.*--overwrite"):
        make_trainer(tmp_path, 2)[0].train()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000002"]
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path, 1, overwrite=True)
    trainer.train()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000001"]
    # a checkpoint of other settings or another strategy is refused, naming both
    reset_accelerate_state()
    trainer, strategy = make_trainer(tmp_path, 3, resume="latest", seed=1)
    with pytest.raises(ValueError, match="seed: 0 in the checkpoint, 1 now"):
        trainer.train()
    reset_accelerate_state()
    trainer, strategy = make_trainer(tmp_path, 3, resume="latest")
    strategy.name = "consistency"
    with pytest.raises(ValueError, match="written by strategy 'progressive', but this run is 'consistency'"):
        trainer.train()


def test_resume_accepts_another_cache_location_but_not_other_cached_inputs(tmp_path):
    """Where computed-once inputs are kept (``cache_dir``, DMD's ``regression_cache``) may change on resume, as the
    output folder may; what they hold (the number of regression pairs) may not."""
    from stepdistill.checkpoints import check_belongs

    saved = {"DMDConfig": {"regression_pairs": 10, "regression_cache": None}, "ModelConfig": {"cache_dir": None}}
    (tmp_path / "manifest.json").write_text(json.dumps({"strategy": "dmd", "files": {}}))
    (tmp_path / "config.json").write_text(json.dumps(saved))
    moved = {
        "DMDConfig": {"regression_pairs": 10, "regression_cache": "run/pairs.pt"},
        "ModelConfig": {"cache_dir": "c"},
    }
    check_belongs(str(tmp_path), "dmd", moved)
    with pytest.raises(ValueError, match="regression_pairs: 10 in the checkpoint, 20 now"):
        check_belongs(str(tmp_path), "dmd", {**moved, "DMDConfig": {"regression_pairs": 20, "regression_cache": None}})


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer, strategy = make_trainer(tmp_path, 2)
    trainer.train()
    with torch.no_grad():
        next(strategy.student.parameters()).fill_(float("inf"))
    trainer.step = 3
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        trainer.save_checkpoint()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000002"]


@pytest.mark.parametrize("name", ["1gpu", "8gpu-ddp", "8gpu-fsdp", "2node-16gpu"])
def test_example_accelerate_configs_are_valid(name):
    """The shipped `accelerate launch --config_file` examples parse with this accelerate (unknown keys are errors)."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(f"train/accelerate/{name}.yaml")
    expected = {"1gpu": (1, 1), "8gpu-ddp": (8, 1), "8gpu-fsdp": (8, 1), "2node-16gpu": (16, 2)}[name]
    assert (config.num_processes, config.num_machines) == expected and config.mixed_precision == "bf16"
    if name == "8gpu-fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"] is True


def test_8bit_adamw_keeps_the_strategys_hyperparameters_resumes_exactly_and_tracks_adamw(tmp_path):
    """--optimizer adamw8bit: bitsandbytes' AdamW8bit with the strategy's lr/betas/weight decay, 8-bit moments for the
    large tensors, exact resume through its state dict, and a trajectory close to the 32-bit AdamW one."""
    bnb = pytest.importorskip("bitsandbytes")
    reference, s_reference = make_trainer(tmp_path / "fp32", 6)
    reference.train()
    reset_accelerate_state()
    full, s_full = make_trainer(tmp_path / "full", 6, optimizer="adamw8bit")
    optimizer = full.optimizers["student"].optimizer
    assert isinstance(optimizer, bnb.optim.AdamW8bit) and optimizer.param_groups[0]["lr"] == 1e-2
    full.train()
    states = [optimizer.state[p] for p in s_full.student.parameters()]
    assert any(s["state1"].dtype == torch.uint8 for s in states)  # the 128 x 128 layer's moments in 8 bits
    start = torch.cat([p.detach().flatten() for p in make_trainer(tmp_path / "init", 6)[1].student.parameters()])
    moved, gap = params(s_reference) - start, params(s_full) - params(s_reference)
    assert gap.norm() < 0.1 * moved.norm()  # 8-bit moments: the same trajectory, up to quantisation
    reset_accelerate_state()
    split, _ = make_trainer(tmp_path / "split", 3, optimizer="adamw8bit", checkpoint_every=3)
    split.train()
    reset_accelerate_state()
    resumed, s_resumed = make_trainer(tmp_path / "split", 6, optimizer="adamw8bit", resume="latest")
    resumed.train()
    assert torch.equal(params(s_full), params(s_resumed))


def test_8bit_adamw_refuses_other_optimizers_and_a_missing_package(tmp_path, monkeypatch, capsys):
    from stepdistill.trainer import to_8bit

    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="replaces an AdamW optimizer; toy is SGD"):
        to_8bit(sgd, "toy")
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # as if not installed
    adamw = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        to_8bit(adamw)
    from stepdistill.cli import run_cli

    with pytest.raises(SystemExit) as stop:  # a train script: one error line, no traceback
        run_cli(lambda: to_8bit(adamw))
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: --optimizer adamw8bit needs")
