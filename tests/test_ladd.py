"""LADD (stepdistill/strategies/ladd.py): the generator learns from the teacher-feature critic alone; each loss
reaches only its own network; its inputs (backward simulation, noised data), the teacher's synthetic data, and its
exports reproduced by plain diffusers."""

import json

import pytest
import torch
from test_dmd import BATCH, assert_each_loss_reaches_only_its_network, unet_teacher

from stepdistill.denoiser import Condition
from stepdistill.sampling import multistep_sample
from stepdistill.schedules import add_noise
from stepdistill.strategies.ladd import LADDConfig, LADDStrategy


def test_defaults_are_ladds_and_bad_options_name_the_fix():
    cfg = LADDConfig()
    assert (cfg.generator_steps, cfg.gan_loss, cfg.gan_t_sampling, cfg.gan_features) == (
        4,
        "hinge",
        "logit_normal",
        "teacher",
    )
    with pytest.raises(ValueError, match="adversarial term alone"):
        LADDConfig(gan_generator_weight=0.0, gan_critic_weight=0.0)
    with pytest.raises(ValueError, match="data_source"):
        LADDConfig(data_source="web")
    with pytest.raises(ValueError, match="input_from"):
        LADDConfig(input_from="noise")
    strategy = LADDStrategy(LADDConfig(), unet_teacher())
    assert [round(float(t) * 1000) - 1 for t in strategy.times] == [999, 749, 499, 249]


def test_each_loss_reaches_only_its_own_network_and_the_generator_waits_for_its_warm_up():
    teacher = unet_teacher()
    strategy = LADDStrategy(LADDConfig(generator_steps=1, gan_warmup_steps=2), teacher)
    assert set(strategy.trainable()) == set(strategy.optimizers()) == {"student", "disc"}
    assert "student" not in strategy.losses(BATCH, 1)
    losses = strategy.losses(BATCH, 2)
    assert {"student", "disc", "log/gan_generator", "log/gan_critic"} <= set(losses)
    assert any(k.startswith("log/critic_acc_t") for k in losses)
    assert_each_loss_reaches_only_its_network(losses, strategy, teacher)


def test_step_inputs_come_from_the_generators_own_steps_or_from_noised_data(monkeypatch):
    """input_from generator: step k's input is the generator's first k steps from noise (no gradient); data (LADD's
    default): real images noised to times[k]. With data_source teacher the critic's real half is the teacher's DDIM
    samples."""
    from stepdistill.strategies import ladd

    strategy = LADDStrategy(LADDConfig(input_from="generator"), unet_teacher())
    cond = Condition.from_batch(BATCH)
    torch.manual_seed(0)
    x_in = strategy._generator_input(BATCH["x0"], cond, 2)
    torch.manual_seed(0)
    noise = torch.randn_like(BATCH["x0"])
    expected = multistep_sample(strategy.student, noise, cond, strategy.times, until=2)
    assert torch.allclose(x_in, expected, atol=1e-6) and not x_in.requires_grad
    noised = LADDStrategy(LADDConfig(), unet_teacher())
    torch.manual_seed(0)
    x_in = noised._generator_input(BATCH["x0"], cond, 2)
    alpha_sigma = noised.teacher.schedule.alpha_sigma(noised.times[2].to(noise).expand(len(noise)))
    assert torch.allclose(x_in, add_noise(BATCH["x0"], noise, *alpha_sigma), atol=1e-6)
    calls = []
    monkeypatch.setattr(ladd, "ddim_sample", lambda net, x, c, steps, w: calls.append((steps, w)) or x.clamp(-1, 1))
    synthetic = LADDStrategy(LADDConfig(data_source="teacher", teacher_steps=3), unet_teacher())
    synthetic.losses(BATCH, 0)
    assert calls == [(3, 1.0)]


@pytest.mark.parametrize("steps", [1, 4])
def test_exported_generator_matches_the_toolkit_sampler_in_fresh_process(tmp_path, steps):
    from test_export import assert_export_reproduces_sampler

    strategy = LADDStrategy(LADDConfig(generator_steps=steps), unet_teacher())
    result = assert_export_reproduces_sampler(strategy, tmp_path, steps)
    assert result["timesteps"] == [round(float(t) * 1000) - 1 for t in strategy.times]


def test_train_script_logs_the_critic_and_exports_a_pipeline(tmp_path):
    from conftest import train_on_tiny_teacher

    from train.ladd import main

    logs = train_on_tiny_teacher(main, tmp_path, "--preset", "fashion")
    assert "loss/disc" in logs[-1] and "loss/student" in logs[-1]
    saved = json.loads((tmp_path / "r" / "pipeline" / "stepdistill.json").read_text())
    assert saved["timesteps"] == [999, 749, 499, 249]
    assert "LADD" in (tmp_path / "r" / "pipeline" / "README.md").read_text()
