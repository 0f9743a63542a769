"""Trainer: exact resume, atomic checkpoints, clear failures."""

import os

import pytest
import torch
from conftest import mlp_student

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.schedules import Schedule
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.trainer import DataStream, Trainer, TrainerConfig, list_checkpoints


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


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
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
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
    with pytest.raises(FloatingPointError, match="Non-finite student loss"):
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
