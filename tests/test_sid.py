"""SiD on the analytic Gaussian mixture (exact teacher score) and on tiny UNets: the score-identity gradient, frozen
score networks in the generator step, training a one-step generator, few-step SiD, guidance options, export."""

import json

import pytest
import torch
from conftest import mlp_student
from test_dmd import TWO_MODES, moments_error, shifted, unet_teacher

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.denoiser import Condition
from stepdistill.losses import score_identity_loss
from stepdistill.sampling import multistep_sample
from stepdistill.schedules import Schedule, add_noise
from stepdistill.strategies.sid import SiDConfig, SiDStrategy
from stepdistill.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


SCHEDULE = Schedule.cosine()
MIXTURE = GaussianMixture.random(3, (1, 1, 2), seed=0)
LABELS = {"labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}


def sid_gradient(x_gen, real, fake, t, alpha=1.2):
    """d loss / d x_gen, through the noisy input of both score networks (as in the generator step)."""
    x = x_gen.clone().requires_grad_(True)
    x_t = add_noise(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), *SCHEDULE.alpha_sigma(t))
    score_identity_loss(x, real(x_t, t), fake(x_t, t), alpha).backward()
    return x.grad


def test_sid_gradient_is_zero_at_the_data_and_points_towards_it_otherwise():
    """Generator = data and an exact fake score (the same mixture, components listed in another order, so it is
    computed differently): the gradient is at float rounding level, < 1e-4 of the gradient for a wrong generator.
    For a generator whose components are shifted and widened, with the fake score exact for it, a gradient step
    moves samples towards where the per-component transport puts them (positive inner product, every level)."""
    torch.manual_seed(0)
    n = 4000
    real = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    order = torch.tensor([2, 0, 1])
    reordered = GaussianMixture(
        MIXTURE.means[order], MIXTURE.covs[order], MIXTURE.weights[order], MIXTURE.shape, MIXTURE.classes[order]
    )
    delta, scale = torch.tensor([0.6, -0.4], dtype=torch.float64), 1.5
    wrong = shifted(MIXTURE, delta, scale)
    comp = torch.multinomial(MIXTURE.weights, n, replacement=True)
    z = torch.randn(n, 2, dtype=torch.float64)
    x_data = (MIXTURE.means[comp] + (MIXTURE.chol[comp] @ z[..., None])[..., 0]).float().view(n, 1, 1, 2)
    x_wrong = (wrong.means[comp] + (wrong.chol[comp] @ z[..., None])[..., 0]).float().view(n, 1, 1, 2)
    for level in (0.1, 0.3, 0.5, 0.8):
        t = torch.full((n,), level)
        at_data = sid_gradient(x_data, real, GaussianMixtureDenoiser(reordered, SCHEDULE), t)
        off = sid_gradient(x_wrong, real, GaussianMixtureDenoiser(wrong, SCHEDULE), t)
        assert at_data.norm() < 1e-4 * off.norm(), (level, float(at_data.norm()), float(off.norm()))
        step, towards = -off.view(n, 2), (x_data - x_wrong).view(n, 2)
        cosine = torch.nn.functional.cosine_similarity(step, towards, dim=1).mean()
        assert (step * towards).sum(1).mean() > 0 and cosine > 0.2, (level, float(cosine))


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


def test_generator_step_leaves_both_score_networks_bit_identical(tmp_path):
    """Each iteration is a fake-score step (even) then a generator step (odd). After the generator step the fake
    score and the teacher are bit-identical while the generator changed; after the fake step the reverse. The batch
    holds labels only: no image is needed."""
    teacher = unet_teacher()
    strategy = SiDStrategy(SiDConfig(lr=1e-3), teacher)
    keys = [sorted(k for k in strategy.losses(LABELS, step) if not k.startswith("log/")) for step in range(3)]
    assert keys == [["fake_score"], ["student"], ["fake_score"]]
    states = []

    def record(trainer):
        states.append((snapshot(strategy.student), snapshot(strategy.fake_score), snapshot(teacher)))

    config = TrainerConfig(output_dir=str(tmp_path), max_steps=4, batch_size=4, checkpoint_every=0)
    before = (snapshot(strategy.student), snapshot(strategy.fake_score), snapshot(teacher))
    Trainer(config, strategy, {"labels": torch.arange(16) % 3}, callbacks=[record]).train()
    for step, (prev, now) in enumerate(zip([before, *states[:-1]], states)):
        generator_step = step % 2 == 1
        assert same(prev[2], now[2])  # the teacher never changes
        assert same(prev[1], now[1]) == generator_step, step  # the fake score only in its own steps
        assert same(prev[0], now[0]) != generator_step, step  # the generator only in its own steps
    assert all(p.requires_grad for p in strategy.fake_score.parameters())  # frozen() restored the flags


def mixture_denoiser_mlp(steps=1500):
    """An MLP denoiser (v-prediction, like the bundled teacher) fitted to the mixture: SiD's generator and fake score
    both start from the teacher's weights, and an MLP fake score from random weights makes SiD diverge."""
    from stepdistill.losses import denoising_loss

    net = mlp_student(SCHEDULE, 2, seed=0, prediction="v").trainable_copy()
    data = TWO_MODES.sample(20000, torch.Generator().manual_seed(0)).float()
    optimizer, g = torch.optim.Adam(net.parameters(), lr=3e-3), torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = denoising_loss(net, data[torch.randint(len(data), (256,), generator=g)], None, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def test_one_step_generator_learns_the_mixture_data_free(tmp_path):
    """A one-step MLP generator with the exact teacher score and an MLP fake score, both starting from one MLP fitted
    to the mixture, trained without data (the batch holds an index only): the generated samples' per-component
    means, covariances and weights move to the mixture's. Measured: mean error 0.90 -> 0.20, covariance error
    0.85 -> 0.64 (relative), weight error 0.057 -> 0.016."""
    torch.manual_seed(0)
    init = mixture_denoiser_mlp()
    strategy = SiDStrategy(
        SiDConfig(lr=3e-4, fake_lr=1e-3),
        GaussianMixtureDenoiser(TWO_MODES, SCHEDULE),
        student=init.trainable_copy(),
        fake_score=init.trainable_copy(),
        sample_shape=(1, 1, 2),
    )
    noise = torch.randn(4000, 1, 1, 2, generator=torch.Generator().manual_seed(1))
    before = moments_error(strategy.sample(noise), TWO_MODES)
    config = TrainerConfig(
        output_dir=str(tmp_path),
        max_steps=2000,
        batch_size=256,
        log_every=500,
        seed=0,
        lr_schedule="linear",
        checkpoint_every=0,
    )
    Trainer(config, strategy, {"index": torch.arange(1024)}).train()
    after = moments_error(strategy.sample(noise), TWO_MODES)
    print("before", before, "after", after)
    assert after[0] < 0.3 and after[1] < 0.75 and after[2] < 0.03, (before, after)
    assert after[0] < before[0] / 3 and after[1] < before[1] * 0.85 and after[2] < before[2] / 2, (before, after)


def test_few_step_generator_trains_one_step_on_its_own_earlier_steps():
    """K = 4 from the top index: times 999/749/499/249 (from SiD's sigma_init: 755/566/377/188); every step gets
    drawn over iterations; step k's input is the generator's own first k steps without gradient, so only step k's
    forward reaches the generator's weights. A few-step generator from the lower half of the indices is refused."""
    strategy = SiDStrategy(SiDConfig(generator_steps=4, init_timestep=999), unet_teacher())
    assert [round(float(t) * 1000) - 1 for t in strategy.times] == [999, 749, 499, 249]
    below = SiDStrategy(SiDConfig(generator_steps=4), unet_teacher())
    assert [round(float(t) * 1000) - 1 for t in below.times] == [755, 566, 377, 188]
    assert {strategy._draw_step(s) for s in range(40)} == {0, 1, 2, 3}
    cond = Condition(labels=LABELS["labels"])
    x_in = strategy._simulated_input(torch.randn(8, 1, 8, 8), cond, 3)
    assert not x_in.requires_grad
    losses = strategy.losses(LABELS, next(s for s in range(1, 99, 2) if strategy._draw_step(s) == 3))
    losses["student"].backward()
    assert all(p.grad is not None for p in strategy.student.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="must start above the middle training index .* not at 499"):
        SiDStrategy(SiDConfig(generator_steps=2, init_timestep=499), unet_teacher())


def test_unrolled_few_step_generator_trains_the_whole_sampler_on_its_last_output():
    """``unroll``: the fake score learns on the K-step sampler's final samples (the very draws of the sampler), and
    the generator's gradient runs back through every step to the input noise; with one step it is refused."""
    strategy = SiDStrategy(SiDConfig(generator_steps=4, init_timestep=999, unroll=True), unet_teacher())
    cond, shape = Condition(labels=LABELS["labels"]), (8, *strategy.sample_shape)
    seen = []
    strategy._fake_score_loss = lambda x_gen, c: seen.append(x_gen) or x_gen.sum()
    torch.manual_seed(5)
    strategy.losses(LABELS, 0)
    torch.manual_seed(5)
    noise = torch.randn(shape)
    assert torch.equal(seen[0], multistep_sample(strategy.student, noise, cond, strategy.times))
    x = noise.clone().requires_grad_(True)
    torch.manual_seed(6)
    out = strategy._unrolled_sample(x, cond)
    torch.manual_seed(6)
    assert torch.allclose(out, multistep_sample(strategy.student, noise, cond, strategy.times), atol=1e-6)
    out.pow(2).sum().backward()  # through all four steps and the re-noising back to the input
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="set generator_steps > 1"):
        SiDConfig(unroll=True)


@pytest.mark.parametrize(
    "options,train_call,eval_call",
    [
        ({"fake_train_guidance": 2.0, "fake_eval_guidance": 1.5, "real_guidance_scale": 2.5}, (2.0, "labels"),
         (1.5, "labels")),
        ({"zero_cfg": True, "fake_train_guidance": 2.0}, (1.0, "null"), (1.0, "null")),
        ({"anti_cfg": True, "fake_eval_guidance": 1.5}, (1.0, "labels"), (-1.5, "labels")),
    ],
)  # fmt: skip
def test_guidance_options_reach_the_fake_score(options, train_call, eval_call):
    """Long-short guidance: the fake score is trained at kappa_1 and evaluated at kappa_2 (the teacher at kappa_4);
    Zero-CFG: the fake score sees only the null class, unguided; Anti-CFG: the fake score at -kappa_2."""
    strategy = SiDStrategy(SiDConfig(**options), unet_teacher())
    calls = []

    def hook(module, args, kwargs):
        labels = args[2].labels
        kind = "null" if bool((labels == 3).all()) else "labels"
        calls.append((float(kwargs.get("guidance_scale", 1.0)), kind))

    strategy.fake_score.register_forward_pre_hook(hook, with_kwargs=True)
    strategy.losses(LABELS, 0)
    strategy.losses(LABELS, 1)
    assert calls == [train_call, eval_call]


def test_exported_generators_match_the_toolkit_sampler_in_fresh_process(tmp_path):
    """1 step at SiD's sigma_init (a DDIM scheduler offset to its timestep), 4 steps from the top and from sigma_init
    (LCMScheduler; also 2 steps of the 4-step generator there): plain diffusers without stepdistill reproduces the
    toolkit's sampler to 1e-4; a LoRA generator exports an adapter that reproduces it inside the teacher's
    pipeline."""
    from test_export import LOAD_SCRIPT, LORA_LOAD_SCRIPT, run_isolated

    from stepdistill.export import export_pipeline, export_student

    labels = Condition(labels=torch.tensor([0, 1, 2, 0]))
    cases = {"1": (1, {}, 1, [755]), "4top": (4, {"init_timestep": 999}, 4, [999, 749, 499, 249])}
    cases.update({"4": (4, {}, 4, [755, 566, 377, 188]), "4at2": (4, {}, 2, [755, 377])})
    for name, (steps, options, run_steps, expected) in cases.items():
        strategy = SiDStrategy(SiDConfig(generator_steps=steps, **options), unet_teacher())
        folder = tmp_path / f"sid{name}"
        export_student(strategy.student.frozen(), folder, steps, 1.0, "# t\n", {}, strategy.scheduler_spec())
        out = tmp_path / f"out{name}.pt"
        run_isolated(LOAD_SCRIPT, str(folder / "pipeline"), str(run_steps), "1.0", str(out), cwd=tmp_path)
        result = torch.load(out)
        assert result["timesteps"] == expected, name
        times = torch.tensor(expected, dtype=torch.float64).add(1).div(1000)
        if run_steps == steps:  # the generator's own times (its pipeline's num_inference_steps default)
            assert torch.equal(times, strategy.times), name
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(4, 1, 8, 8, generator=g)
        ours = multistep_sample(strategy.student, noise, labels, times, generator=g)
        assert (result["images"] - ours).abs().max() < 1e-4, name
    teacher = unet_teacher()
    base = export_pipeline(teacher.frozen(), tmp_path / "teacher", 4)
    strategy = SiDStrategy(SiDConfig(lora_rank=4), teacher)
    with torch.no_grad():
        for name, p in strategy.student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    folders = export_student(
        strategy.student, tmp_path / "lora", 1, 1.0, "# t\n", {}, strategy.scheduler_spec(), "SiD"
    )
    run_isolated(LORA_LOAD_SCRIPT, base, folders[0], "1", str(tmp_path / "lora.pt"), cwd=tmp_path)
    g = torch.Generator().manual_seed(0)
    ours = strategy.sample(torch.randn(4, 1, 8, 8, generator=g), labels, generator=g)
    assert (torch.load(tmp_path / "lora.pt")["adapted"] - ours).abs().max() < 1e-4
    saved = json.loads((tmp_path / "lora" / "pipeline" / "stepdistill.json").read_text())
    assert saved["timesteps"] == [755]


def test_nonfinite_generator_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    """A NaN score-identity loss goes through the trainer's guard: no network changes, the step is counted, and
    the run stops once the consecutive limit is passed, naming the step and the loss."""
    from stepdistill.strategies import sid

    monkeypatch.setattr(sid, "score_identity_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    strategy = SiDStrategy(SiDConfig(lr=1e-3), unet_teacher())
    config = TrainerConfig(output_dir=str(tmp_path), max_steps=4, batch_size=4, max_bad_steps=1, checkpoint_every=0)
    trainer = Trainer(config, strategy, {"labels": torch.arange(16) % 3})
    with pytest.raises(FloatingPointError, match=r"step 1 \(loss/student = nan\); 2 consecutive"):
        trainer.train()
    assert trainer.bad_steps == 2 and trainer.step == 1


def test_data_free_setup_draws_balanced_labels_and_refuses_a_text_teacher(tmp_path):
    """train/sid.py's data: balanced class labels of the teacher, no image; a bare text-conditional UNet (whose prompts
    cannot be encoded without its pipeline's text encoders) is refused with a message rather than trained
    unconditionally."""
    from conftest import tiny_scheduler, tiny_text_unet

    from stepdistill.config import ModelConfig
    from stepdistill.recipes import load_setup

    setup = load_setup(ModelConfig(data=str(tmp_path / "missing")), data_free=True)
    assert set(setup.data) == {"labels"} and torch.bincount(setup.data["labels"]).unique().numel() == 1
    tiny_text_unet().save_pretrained(tmp_path / "text" / "unet")
    tiny_scheduler().save_pretrained(tmp_path / "text" / "scheduler")
    with pytest.raises(ValueError, match="text-conditional UNet without its pipeline"):
        load_setup(ModelConfig(teacher=str(tmp_path / "text")), data_free=True)


@pytest.mark.parametrize("features", ["fake_score", "teacher"])
def test_sida_losses_reach_only_their_own_network(features):
    """SiDA / SiD²A: the fake-score step trains the critic (the fake score's encoder logits, or the teacher-feature
    heads with their own optimizer) on real against generated images; the generator step adds the adversarial term
    (after ``gan_warmup_steps``). Each loss reaches only its own network, never the teacher; the critic's loss never
    reaches the generator, the generator's never the critic."""
    from test_dmd import BATCH, assert_each_loss_reaches_only_its_network

    options = {"gan_generator_weight": 1e-2, "gan_critic_weight": 1.0, "gan_features": features, "gan_warmup_steps": 3}
    teacher = unet_teacher()
    strategy = SiDStrategy(SiDConfig(**options), teacher)
    names = {"student", "fake_score"} | ({"disc"} if features == "teacher" else set())
    assert set(strategy.trainable()) == set(strategy.optimizers()) == names
    critic_step, early, generator_step = (
        strategy.losses(BATCH, 0),
        strategy.losses(BATCH, 1),
        strategy.losses(BATCH, 3),
    )
    assert any(k.startswith("log/critic_acc_t") for k in critic_step) and "log/gan_critic" in critic_step
    assert "log/gan_generator" not in early and "log/gan_generator" in generator_step
    for losses in (critic_step, generator_step):
        assert_each_loss_reaches_only_its_network(losses, strategy, teacher)


def test_sida_reads_real_images_and_refuses_options_its_critic_ignores():
    strategy = SiDStrategy(SiDConfig(gan_generator_weight=1e-2, gan_critic_weight=1.0), unet_teacher())
    with pytest.raises(ValueError, match="holds no 'x0'"):
        strategy.losses(LABELS, 0)
    with pytest.raises(ValueError, match="gan_t_max shapes the teacher-feature critic"):
        SiDConfig(gan_generator_weight=1e-2, gan_critic_weight=1.0, gan_t_max=0.3)
