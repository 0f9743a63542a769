"""The discriminator on a frozen network's features (stepdistill/discriminator.py): its features, heads and losses,
gradient isolation, and on a two-mode analytic problem the adversarial loss alone moving a generator's wrong mode
weights toward the truth."""

import pytest
import torch
from conftest import tiny_scheduler, tiny_unet

from stepdistill.backbones import captured_levels
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.discriminator import (
    Discriminator,
    accuracy_by_level,
    approximate_r1,
    critic_loss,
    critic_times,
    feature_levels,
    generator_loss,
    noised_pair,
    read_features,
)
from stepdistill.schedules import Schedule


def teacher():
    return Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)


def test_features_of_every_level_and_projection_logits():
    net = teacher().frozen()
    names = feature_levels(net.backbone)
    assert names == ["down_blocks.0", "down_blocks.1", "mid_block"]
    x, t, cond = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3), Condition(labels=torch.tensor([0, 1, 2, 3]))
    features = read_features(net, x, t, cond, names)
    assert [tuple(f.shape[:2]) for f in features] == [(4, 8), (4, 16), (4, 16)]
    # read_features stops the forward pass after the mid block: the features of a whole pass, exactly
    with captured_levels(net.backbone, names) as store:
        output = net(x, t, cond)
    assert all(torch.equal(store[n], f) for n, f in zip(names, features)) and output.shape == x.shape
    x_grad = x.clone().requires_grad_(True)
    read_features(net, x_grad, t, cond, names)[-1].sum().backward()
    assert x_grad.grad.abs().sum() > 0  # gradient still reaches the input through the stopped pass
    critic, _ = Discriminator.for_network(net)
    logits = critic(features, cond)
    assert logits.shape == (4,)
    other = critic(features, Condition(labels=torch.tensor([3, 2, 1, 0])))
    assert not torch.allclose(logits, other)  # the class enters through the projection


def test_the_generators_loss_reaches_its_samples_only_and_the_critics_only_the_critic():
    net = teacher().frozen()
    critic, names = Discriminator.for_network(net)
    cond = Condition(labels=torch.arange(4) % 3)
    fake = torch.randn(4, 1, 8, 8, requires_grad=True)
    real = torch.randn(4, 1, 8, 8)
    t = critic_times(net.schedule, 4, real, "low", 0.5)
    x_real, x_fake = noised_pair(net.schedule, real, fake, t)
    critic.requires_grad_(False)
    generator_loss(critic(read_features(net, x_fake, t, cond, names), cond)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*net.parameters(), *critic.parameters()])
    critic.requires_grad_(True)
    fake.grad = None
    real_logits = critic(read_features(net, x_real, t, cond, names), cond)
    fake_logits = critic(read_features(net, x_fake.detach(), t, cond, names), cond)
    critic_loss(real_logits, fake_logits, "hinge").backward()
    assert fake.grad is None and all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in critic.parameters() if p is not critic.text_projection)


def test_critic_times_uniform_low_and_logit_normal():
    schedule = Schedule.from_scheduler_config(dict(tiny_scheduler().config))
    like = torch.zeros(())
    g = torch.Generator().manual_seed(0)
    draws = {s: critic_times(schedule, 20000, like, s, 0.5, g) for s in ("uniform", "low", "logit_normal")}
    for t in draws.values():
        assert t.min() >= 1 / 1000 and t.max() <= 0.5 + 1e-6
    assert draws["low"].median() < 0.15 < draws["uniform"].median() < 0.3
    assert abs(float(draws["logit_normal"].median()) - 0.25) < 0.01  # t_max * sigmoid(0)
    with pytest.raises(ValueError, match="Critic time sampling"):
        critic_times(schedule, 2, like, "high")


def test_accuracy_by_level_buckets_and_r1():
    real, fake = torch.tensor([1.0, -1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, 1.0, -3.0])
    t = torch.tensor([0.1, 0.1, 0.6, 0.9])
    acc = accuracy_by_level(real, fake, t)
    assert set(acc) == {"log/critic_acc_t0", "log/critic_acc_t2", "log/critic_acc_t3"}
    assert float(acc["log/critic_acc_t0"]) == 0.75 and float(acc["log/critic_acc_t2"]) == 0.5
    r1 = approximate_r1(lambda x: 3.0 * x.sum(dim=(1, 2, 3)), torch.zeros(4000, 1, 2, 2), sigma=0.01)
    assert 32 < float(r1) < 40  # 9 * 4: the squared gradient norm of a linear critic, up to sampling noise


def test_the_adversarial_loss_alone_moves_wrong_mode_weights_toward_the_truth():
    """Data: modes at -2 and +2 with weights 0.5 / 0.5 (in 4 dimensions). A one-step generator puts 20% of its mass
    on +2; trained by the non-saturating adversarial loss alone, against a critic that sees both noised at uniform
    levels (where the blurred modes overlap, the critic's logit rises toward the under-weighted mode everywhere), the
    mass on +2 ends within 0.4-0.6 (0.49 and 0.50 at seeds 0 and 1 when this test was written)."""
    torch.manual_seed(0)
    dim = 4
    schedule = Schedule.cosine()

    def data(n):
        sign = torch.where(torch.rand(n, 1) < 0.5, 1.0, -1.0)
        return (2 * sign + 0.3 * torch.randn(n, dim)).reshape(n, dim, 1, 1)

    shift = torch.nn.Parameter(torch.tensor(-0.84))  # P(z > 0.84) = 0.2 of the mass on +2

    def generate(n):
        z = torch.randn(n, 1)
        return (2 * torch.tanh(4 * (z + shift)) + 0.3 * torch.randn(n, dim)).reshape(n, dim, 1, 1)

    critic = Discriminator([dim], width=32)
    opt_g = torch.optim.Adam([shift], lr=5e-3)
    opt_d = torch.optim.Adam(critic.parameters(), lr=2e-3)
    like = torch.zeros(())
    for _ in range(300):
        real, fake = data(256), generate(256)
        t = critic_times(schedule, 256, like, "uniform", 1.0)
        x_real, x_fake = noised_pair(schedule, real, fake.detach(), t)
        opt_d.zero_grad()
        critic_loss(critic([x_real]), critic([x_fake])).backward()
        opt_d.step()
        critic.requires_grad_(False)
        _, x_fake = noised_pair(schedule, real, generate(256), t)
        opt_g.zero_grad()
        generator_loss(critic([x_fake])).backward()
        opt_g.step()
        critic.requires_grad_(True)
    weight = float((generate(20000)[:, 0, 0, 0] > 0).float().mean())
    assert 0.4 < weight < 0.6, weight


def test_the_training_curves_show_the_critics_accuracy_by_noise_level(tmp_path):
    import json

    from stepdistill.reporting import plot_training_log

    log = tmp_path / "log.jsonl"
    lines = [
        {"step": s, "loss/student": 1.0 / s, "log/critic_acc_t0": 0.5 + s / 100, "log/critic_acc_t3": 0.5}
        for s in (1, 2, 3)
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert plot_training_log(str(log), str(tmp_path / "curves.png")) == ["loss/student", "critic accuracy"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
