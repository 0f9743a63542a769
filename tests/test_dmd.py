"""DMD / DMD2 on the analytic Gaussian mixture (exact real score) and on tiny UNets: the distribution-matching
gradient, training of a one-step generator, two time-scale updates, the GAN head, backward simulation, export."""

import json

import pytest
import torch
from conftest import mlp_student, reset_accelerate_state, tiny_scheduler, tiny_unet

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.losses import distribution_matching_loss
from stepdistill.sampling import multistep_sample
from stepdistill.schedules import Schedule, add_noise
from stepdistill.strategies.dmd import DMDConfig, DMDStrategy
from stepdistill.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


SCHEDULE = Schedule.cosine()
MIXTURE = GaussianMixture.random(3, (1, 1, 2), seed=0)
# two overlapping-enough modes that a small MLP generator can reach from noise in a CPU-test budget
TWO_MODES = GaussianMixture(
    torch.tensor([[-1.5, -0.5], [1.5, 0.5]], dtype=torch.float64),
    torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.20, -0.05], [-0.05, 0.25]]], dtype=torch.float64),
    torch.tensor([0.4, 0.6], dtype=torch.float64),
    (1, 1, 2),
)


def shifted(mixture, delta, scale):
    """The mixture with every component moved by ``delta`` and widened by ``scale``: a wrong generator."""
    return GaussianMixture(mixture.means + delta, mixture.covs * scale**2, mixture.weights, mixture.shape)


def dm_gradient(x_gen, real, fake, t):
    x = x_gen.clone().requires_grad_(True)
    x_t = add_noise(x, torch.randn_like(x), *SCHEDULE.alpha_sigma(t))
    with torch.no_grad():
        x0_real, x0_fake = real(x_t, t), fake(x_t, t)
    distribution_matching_loss(x, x0_real, x0_fake).backward()
    return x.grad


def test_dm_gradient_vanishes_at_the_data_and_points_towards_its_moments():
    """Exact scores: with the fake score equal to the real one the gradient is exactly 0; for a generator whose
    components are shifted and widened, a gradient step moves each sample towards where the per-component
    transport would put it (positive inner product, for every noise level of the DM loss's range)."""
    torch.manual_seed(0)
    real = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    delta, scale = torch.tensor([0.6, -0.4], dtype=torch.float64), 1.5
    wrong = shifted(MIXTURE, delta, scale)
    n = 4000
    comp = torch.multinomial(wrong.weights, n, replacement=True)
    z = torch.randn(n, 2, dtype=torch.float64)
    x_gen = wrong.means[comp] + (wrong.chol[comp] @ z[..., None])[..., 0]
    # where each sample belongs: the same standard-normal draw through the real component
    x_data = MIXTURE.means[comp] + (MIXTURE.chol[comp] @ z[..., None])[..., 0]
    x_gen, x_data = x_gen.float().view(n, 1, 1, 2), x_data.float().view(n, 1, 1, 2)
    t = torch.full((n,), 0.5)
    same = dm_gradient(x_gen, real, real, t)
    assert same.abs().max() == 0
    fake = GaussianMixtureDenoiser(wrong, SCHEDULE)
    for level in (0.1, 0.3, 0.5, 0.8):
        step = -dm_gradient(x_gen, real, fake, torch.full((n,), level)).view(n, 2)
        towards = (x_data - x_gen).view(n, 2)
        cosine = torch.nn.functional.cosine_similarity(step, towards, dim=1).mean()
        assert (step * towards).sum(1).mean() > 0 and cosine > 0.2, (level, float(cosine))


def moments_error(samples, mixture):
    """Per-component errors of generated samples assigned to their most likely component: max |mean error|,
    max relative covariance error (Frobenius), max |weight error|."""
    x = samples.view(len(samples), 2).double()
    d = x[:, None, :] - mixture.means[None]
    sol = torch.cholesky_solve(d[..., None], mixture.chol[None])[..., 0]
    logp = (
        mixture.weights.log()
        - 0.5 * (d * sol).sum(-1)
        - torch.log(torch.diagonal(mixture.chol, dim1=1, dim2=2)).sum(-1)
    )
    comp = logp.argmax(1)
    errors = []
    for k in range(len(mixture.means)):
        mine = x[comp == k]
        mean_err = (mine.mean(0) - mixture.means[k]).norm()
        cov_err = (torch.cov(mine.T) - mixture.covs[k]).norm() / mixture.covs[k].norm()
        weight_err = (len(mine) / len(x) - mixture.weights[k]).abs()
        errors.append((float(mean_err), float(cov_err), float(weight_err)))
    return [max(e[i] for e in errors) for i in range(3)]


def test_one_step_generator_learns_the_mixture_with_a_trained_fake_score(tmp_path):
    """A one-step MLP generator, exact teacher, fake score an MLP trained on the generator's samples (TTUR 2): the
    generated samples' per-component means, covariances and weights move to the mixture's. Measured: mean error
    0.85 -> 0.20, covariance error 3.1 -> 1.04 (relative; the generator stays ~1.5x too wide, the fake-score MLP's
    limit), weight error 0.16 -> 0.04."""
    torch.manual_seed(0)
    real = GaussianMixtureDenoiser(TWO_MODES, SCHEDULE)
    strategy = DMDStrategy(
        DMDConfig(lr=2e-3, fake_lr=5e-3, fake_updates_per_generator=2, weight_decay=0.0),
        real,
        student=mlp_student(SCHEDULE, 2, seed=0).trainable_copy(),
        fake_score=mlp_student(SCHEDULE, 2, seed=1).trainable_copy(),
    )
    data = {"x0": TWO_MODES.sample(1024, torch.Generator().manual_seed(0)).float()}
    noise = torch.randn(4000, 1, 1, 2, generator=torch.Generator().manual_seed(1))
    before = moments_error(strategy.sample(noise), TWO_MODES)
    config = TrainerConfig(
        output_dir=str(tmp_path), max_steps=3000, batch_size=256, log_every=500, seed=0, lr_schedule="linear"
    )
    Trainer(config, strategy, data).train()
    after = moments_error(strategy.sample(noise), TWO_MODES)
    print("before", before, "after", after)
    assert after[0] < 0.3 and after[2] < 0.06, (before, after)
    assert after[0] < before[0] / 4 and after[1] < before[1] * 0.75 and after[2] < before[2] / 2, (before, after)


def unet_teacher():
    return Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)


BATCH = {"x0": torch.randn(8, 1, 8, 8).clamp(-1, 1), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}


def assert_each_loss_reaches_only_its_network(losses, strategy, teacher):
    """Each optimised loss in ``losses`` (the keys without ``log/``) puts gradient on its own trainable network of
    ``strategy`` and on no other, and never on the frozen ``teacher``."""
    networks = {name: getattr(strategy, name) for name in strategy.trainable()}
    for name in (k for k in losses if not k.startswith("log/")):
        for net in (*networks.values(), teacher):
            net.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        for other, net in networks.items():
            has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
            assert has_grad == (other == name), (name, other)
        assert all(p.grad is None for p in teacher.parameters())


def grads(module):
    return [p.grad for p in module.parameters() if p.grad is not None]


def test_two_time_scale_updates_and_gan_losses_touch_only_their_networks():
    """TTUR 3: the generator's loss comes every third step only, the fake score's every step. The generator loss
    (DM + GAN through the fake score) puts gradient on the generator alone; the fake score's (denoising + critic)
    on the fake score and its GAN head alone; the teacher never gets any."""
    config = DMDConfig(fake_updates_per_generator=3, gan_generator_weight=3e-3, gan_critic_weight=1e-2)
    strategy = DMDStrategy(config, unet_teacher())
    keys = [sorted(k for k in strategy.losses(BATCH, step) if not k.startswith("log/")) for step in range(4)]
    assert keys == [["fake_score", "student"], ["fake_score"], ["fake_score"], ["fake_score", "student"]]
    losses = strategy.losses(BATCH, 0)
    assert {"log/dm", "log/gan_generator", "log/denoising", "log/gan_critic"} <= set(losses)
    losses["student"].backward(retain_graph=True)
    assert grads(strategy.student) and not grads(strategy.fake_score) and not grads(strategy.teacher)
    strategy.student.zero_grad(set_to_none=True)
    losses["fake_score"].backward()
    assert not grads(strategy.student) and not grads(strategy.teacher)
    assert grads(strategy.fake_score.gan_head) and len(grads(strategy.fake_score)) > len(
        grads(strategy.fake_score.gan_head)
    )
    assert all(p.requires_grad for p in strategy.fake_score.parameters())  # frozen() restored the flags


@pytest.mark.parametrize("simulate", [True, False])
def test_backward_simulation_builds_inputs_from_the_generator_not_the_data(simulate):
    """Multi-step: with backward simulation step k's input is the generator's own k-step sample re-noised (it does
    not depend on the data batch); without it, data noised to the step's time."""
    strategy = DMDStrategy(DMDConfig(generator_steps=4, backward_simulation=simulate), unet_teacher())
    assert [round(float(t) * 1000) - 1 for t in strategy.times] == [999, 749, 499, 249]
    cond = Condition(labels=BATCH["labels"])
    inputs = []
    for x0 in (BATCH["x0"], -BATCH["x0"]):
        torch.manual_seed(0)
        inputs.append(strategy._generator_input(x0, cond, 2))
    assert torch.equal(inputs[0], inputs[1]) == simulate


def test_unrolled_generator_trains_the_whole_sampler_on_its_last_output():
    """``unroll``: on every step the fake score learns on the K-step sampler's final samples (the very draws of the
    sampler, not one step of it); on generator steps all K generator calls are in the graph (one with backward
    simulation), the generator alone gets gradient, and the options that contradict it are refused."""
    config = DMDConfig(generator_steps=4, unroll=True, fake_updates_per_generator=2)
    strategy = DMDStrategy(config, unet_teacher())
    cond, seen, calls = Condition(labels=BATCH["labels"]), [], []
    strategy._fake_score_losses = lambda x_gen, x0, c: seen.append(x_gen) or {"fake_score": x_gen.sum()}
    forward = strategy.student.forward
    strategy.student.forward = lambda *a, **k: calls.append(torch.is_grad_enabled()) or forward(*a, **k)
    for step in (0, 1):
        torch.manual_seed(5)
        losses = strategy.losses(BATCH, step)
        assert ("student" in losses) == (step == 0)
        torch.manual_seed(5)
        expected = multistep_sample(strategy.student, torch.randn_like(BATCH["x0"]), cond, strategy.times)
        assert torch.allclose(seen[step], expected, atol=1e-6)
        if step == 0:
            assert calls[:4] == [True] * 4
            losses["student"].backward()
            assert grads(strategy.student) and not grads(strategy.fake_score) and not grads(strategy.teacher)
        calls.clear()
    simulated = DMDStrategy(DMDConfig(generator_steps=4), unet_teacher())
    forward_sim = simulated.student.forward
    simulated.student.forward = lambda *a, **k: calls.append(torch.is_grad_enabled()) or forward_sim(*a, **k)
    simulated.losses(BATCH, next(s for s in range(0, 99, 5) if simulated._draw_step(s) == 3))
    assert calls[:4] == [False, False, False, True]
    with pytest.raises(ValueError, match="set generator_steps > 1"):
        DMDConfig(unroll=True)
    with pytest.raises(ValueError, match="keep backward simulation on"):
        DMDConfig(generator_steps=4, unroll=True, backward_simulation=False)


def test_regression_pairs_come_from_the_teacher_once():
    """DMD's regression option: pairs made once with the teacher's DDIM from a fixed seed (a resumed run rebuilds
    the same ones), class-balanced, and the loss appears in the generator's logs."""
    config = DMDConfig(regression_weight=0.25, regression_pairs=6, regression_teacher_steps=2)
    strategy = DMDStrategy(config, unet_teacher())
    losses = strategy.losses(BATCH, 0)
    assert "log/regression" in losses and torch.isfinite(losses["student"])
    pairs = strategy.pairs
    assert pairs["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    again = DMDStrategy(config, unet_teacher())._regression_pairs(BATCH["x0"])
    assert torch.equal(again["images"], pairs["images"]) and torch.equal(again["noise"], pairs["noise"])
    with pytest.raises(ValueError, match="one-step generator"):
        DMDConfig(regression_weight=1.0, regression_pairs=4, generator_steps=2)


def test_regression_pairs_are_kept_in_their_cache_file_for_the_same_teacher_only(tmp_path, monkeypatch):
    """With ``regression_cache``, a second run (a resume) reads the pairs back instead of running the teacher's
    sampler again; other pair settings or another teacher make them anew."""
    from stepdistill.strategies import dmd

    path = tmp_path / "pairs.pt"
    config = DMDConfig(
        regression_weight=0.25, regression_pairs=6, regression_teacher_steps=2, regression_cache=str(path)
    )
    made = DMDStrategy(config, unet_teacher())._regression_pairs(BATCH["x0"])
    assert path.is_file()

    calls = []
    real_ddim = dmd.ddim_sample
    monkeypatch.setattr(dmd, "ddim_sample", lambda *a, **k: calls.append(1) or real_ddim(*a, **k))
    again = DMDStrategy(config, unet_teacher())._regression_pairs(BATCH["x0"])
    assert not calls and all(torch.equal(again[k], made[k]) for k in made)

    other = Denoiser(tiny_unet(seed=1), unet_teacher().schedule, "v", null_class=3)
    remade = DMDStrategy(config, other)._regression_pairs(BATCH["x0"])
    assert calls and not torch.equal(remade["images"], made["images"])
    calls.clear()
    more = DMDConfig(
        regression_weight=0.25, regression_pairs=9, regression_teacher_steps=2, regression_cache=str(path)
    )
    assert len(DMDStrategy(more, other)._regression_pairs(BATCH["x0"])["noise"]) == 9 and calls
    path.write_bytes(b"not a torch file")  # a damaged cache is made anew, not an error
    calls.clear()
    assert len(DMDStrategy(more, other)._regression_pairs(BATCH["x0"])["noise"]) == 9 and calls


def test_lora_generator_shares_the_teachers_weights():
    """LoRA generator: the teacher's own network with an adapter (no copy), the real score is that network with
    adapters off; a LoRA fake score adapts its own frozen copy. Only adapters (and nothing of the teacher) train."""
    teacher = unet_teacher()
    strategy = DMDStrategy(DMDConfig(lora_rank=4, fake_lora_rank=4, real_guidance_scale=2.0), teacher)
    assert strategy.student is teacher and strategy.fake_score.backbone is not teacher.backbone
    trainable = [n for n, p in strategy.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    losses = strategy.losses(BATCH, 0)
    assert torch.isfinite(losses["student"]) and torch.isfinite(losses["fake_score"])


@pytest.mark.parametrize("steps,init_timestep", [(1, None), (4, None), (1, 755), (4, 755)])
def test_exported_generator_matches_the_toolkit_sampler_in_fresh_process(tmp_path, steps, init_timestep):
    """The exported pipeline (LCMScheduler with identity boundary scalings at the generator's times; one step below
    the top time: DDIM offset to it) reproduces the toolkit's multistep sampler, re-noising included, in plain
    diffusers without stepdistill, from the top time and from ``init_timestep``."""
    from test_export import LOAD_SCRIPT, run_isolated

    from stepdistill.export import export_student

    strategy = DMDStrategy(DMDConfig(generator_steps=steps, init_timestep=init_timestep), unet_teacher())
    folders = export_student(strategy.student.frozen(), tmp_path, steps, 1.0, "# t\n", {}, strategy.scheduler_spec())
    out = tmp_path / "out.pt"
    run_isolated(LOAD_SCRIPT, folders[-1], str(steps), "1.0", str(out), cwd=tmp_path)
    result = torch.load(out)
    expected = {(1, None): [999], (4, None): [999, 749, 499, 249], (1, 755): [755], (4, 755): [755, 566, 377, 188]}
    assert result["timesteps"] == expected[steps, init_timestep]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 1, 8, 8, generator=g)
    ours = strategy.sample(noise, Condition(labels=torch.tensor([0, 1, 2, 0])), generator=g)
    assert (result["images"] - ours).abs().max() < 1e-4
    assert json.load(open(tmp_path / "pipeline" / "stepdistill.json"))["num_inference_steps"] == steps


def test_lora_generator_exports_an_adapter_for_the_teachers_pipeline(tmp_path):
    """A LoRA generator exports lora/ (diffusers keys, with its scheduler) and a fused pipeline; loaded into the
    teacher's pipeline with plain diffusers, the adapter reproduces the toolkit's sampler."""
    from test_export import LORA_LOAD_SCRIPT, run_isolated

    from stepdistill.export import export_pipeline, export_student

    teacher = unet_teacher()
    base = export_pipeline(teacher.frozen(), tmp_path / "teacher", 4)
    strategy = DMDStrategy(DMDConfig(generator_steps=2, lora_rank=4), teacher)
    with torch.no_grad():
        for name, p in strategy.student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    folders = export_student(
        strategy.student, tmp_path / "dmd", 2, 1.0, "# t\n", {}, strategy.scheduler_spec(), "DMD2", "t"
    )
    assert [f.rsplit("/", 1)[-1] for f in folders] == ["lora", "pipeline"]
    out = tmp_path / "out.pt"
    run_isolated(LORA_LOAD_SCRIPT, base, folders[0], "2", str(out), cwd=tmp_path)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 1, 8, 8, generator=g)
    ours = strategy.sample(noise, Condition(labels=torch.tensor([0, 1, 2, 0])), generator=g)
    result = torch.load(out)
    assert result["timesteps"] == [999, 499] and (result["adapted"] - ours).abs().max() < 1e-4


def test_forced_nan_is_skipped_counted_and_stops_after_the_limit(tmp_path, monkeypatch):
    """A NaN distribution-matching loss (forced) skips the step without touching any network; consecutive ones past
    --max-bad-steps stop the run with a message naming the step and the loss; the last checkpoint resumes."""
    from stepdistill.strategies import dmd

    real_loss = dmd.distribution_matching_loss
    bad_calls = {"n": 0, "from": 1}

    def sometimes_nan(*args):
        bad_calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if bad_calls["n"] > bad_calls["from"] else loss

    monkeypatch.setattr(dmd, "distribution_matching_loss", sometimes_nan)
    data = {"x0": torch.randn(32, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (32,))}
    strategy = DMDStrategy(DMDConfig(fake_updates_per_generator=1, lr=1e-3), unet_teacher())
    config = TrainerConfig(output_dir=str(tmp_path), max_steps=5, batch_size=4, checkpoint_every=1, max_bad_steps=2)
    trainer = Trainer(config, strategy, data)
    with pytest.raises(FloatingPointError, match=r"step 1 \(loss/student = nan.*\); 3 consecutive"):
        trainer.train()
    assert trainer.bad_steps == 3 and trainer.step == 1
    monkeypatch.setattr(dmd, "distribution_matching_loss", real_loss)
    reset_accelerate_state()
    config.resume = "latest"
    resumed = DMDStrategy(DMDConfig(fake_updates_per_generator=1, lr=1e-3), unet_teacher())
    Trainer(config, resumed, data).train()
    assert (tmp_path / "checkpoints" / "step-00000005").is_dir()


@pytest.mark.parametrize("sampling", ["uniform", "karras"])
def test_time_sampling_sets_the_noise_levels_of_every_loss(sampling):
    """``time_sampling="karras"`` draws the DM loss's, the fake score's and the GAN's noise levels on EDM's rho-7 ramp
    over dm_t_range (median EDM sigma at the ramp's middle, many more low-noise draws than uniform indices of the
    cosine schedule); "uniform" keeps uniform indices for the DM loss and uniform t for the others."""
    from stepdistill.schedules import karras_sigma

    strategy = DMDStrategy(DMDConfig(time_sampling=sampling), unet_teacher())
    like, schedule = torch.zeros(1), strategy.teacher.schedule
    torch.manual_seed(0)
    for t in (strategy._loss_times(20000, like, sampling, [0.02, 0.98]), strategy._score_times(20000, like)):
        alpha, sigma = schedule.alpha_sigma(t.double())
        edm = sigma / alpha
        low = (edm < 0.2).double().mean()
        if sampling == "karras":
            assert edm.median() == pytest.approx(float(karras_sigma(torch.tensor(0.5))), rel=0.1)  # uniform: ~1
            assert 0.2 < low < 0.3  # the ramp's u < 0.26
        else:
            assert 0.08 < low < 0.15  # cosine schedule: t < 0.12
    with pytest.raises(ValueError, match="time_sampling"):
        DMDConfig(time_sampling="logit")


@pytest.mark.parametrize("gan_t_max", [1.0, 0.25])
def test_gan_noise_levels_are_the_same_for_real_and_generated_images(gan_t_max, monkeypatch):
    """The critic must not be able to tell real from generated by their noise level: both halves reach it at the
    same distribution of times, under ``gan_t_max`` when it is set (then the denoising loss keeps its own, full
    range), and the generator's GAN loss reads the same range."""
    config = DMDConfig(gan_generator_weight=3e-3, gan_critic_weight=1e-2, gan_t_max=gan_t_max)
    strategy = DMDStrategy(config, unet_teacher())
    calls = []
    forward = Denoiser.forward

    def record(self, x_t, t, cond=None, **kwargs):
        calls.append((self is strategy.fake_score, kwargs.get("return_features", False), t.detach().clone()))
        return forward(self, x_t, t, cond, **kwargs)

    monkeypatch.setattr(Denoiser, "forward", record)
    torch.manual_seed(0)
    batch = {"x0": BATCH["x0"].repeat(32, 1, 1, 1), "labels": BATCH["labels"].repeat(32)}
    strategy.losses(batch, 0)
    (_, _, t_generator), (_, _, t_critic) = [c for c in calls if c[0] and c[1]]
    b = len(batch["x0"])
    assert len(t_generator) == b and len(t_critic) == (3 * b if gan_t_max < 1 else 2 * b)
    t_denoise, t_fake, t_real = t_critic[:b], t_critic[-2 * b : -b], t_critic[-b:]
    if gan_t_max < 1:
        assert t_fake.max() <= gan_t_max and t_real.max() <= gan_t_max and t_generator.max() <= gan_t_max
        assert t_denoise.max() > 0.5  # the denoising loss still covers every noise level
    assert abs(float(t_fake.mean() - t_real.mean())) < 0.1 * float(t_real.mean())
    with pytest.raises(ValueError, match="gan_t_max"):
        DMDConfig(gan_t_max=0.0)


def test_teacher_feature_critic_trains_by_its_own_optimizer_and_never_leaks_gradient():
    """--gan-features teacher: heads on the frozen teacher's down and mid blocks (``discriminator.Discriminator``),
    their own optimizer ``disc``; each loss reaches only its own network (the generator's GAN loss flows through the
    frozen teacher and critic into the samples), the critic's accuracy is logged per noise-level bucket, and the
    generator's term waits for ``gan_warmup_steps``."""
    options = {"gan_generator_weight": 3e-3, "gan_critic_weight": 1e-2, "gan_features": "teacher"}
    config = DMDConfig(fake_updates_per_generator=1, gan_t_sampling="low", gan_r1_weight=0.1, **options)
    teacher = unet_teacher()
    strategy = DMDStrategy(config, teacher)
    assert set(strategy.trainable()) == set(strategy.optimizers()) == {"student", "fake_score", "disc"}
    fast = DMDStrategy(DMDConfig(gan_lr=1e-3, **options), unet_teacher())
    assert fast.optimizers()["disc"].param_groups[0]["lr"] == 1e-3
    assert not hasattr(strategy.fake_score, "gan_head")
    losses = strategy.losses(BATCH, 0)
    assert {"student", "fake_score", "disc", "log/gan_generator", "log/gan_r1"} <= set(losses)
    assert any(k.startswith("log/critic_acc_t") for k in losses)
    assert_each_loss_reaches_only_its_network(losses, strategy, teacher)
    warm = DMDStrategy(DMDConfig(fake_updates_per_generator=1, gan_warmup_steps=5, **options), unet_teacher())
    assert "log/gan_generator" not in warm.losses(BATCH, 0) and "log/gan_generator" in warm.losses(BATCH, 5)
    with pytest.raises(ValueError, match="add --gan-features teacher"):
        DMDConfig(gan_loss="hinge", gan_generator_weight=1e-3, gan_critic_weight=1e-2)


def test_no_training_code_path_reads_the_evaluation_feature_network(tmp_path, monkeypatch):
    """A discriminator or loss on the domain classifier's features would game the benchmark: no strategy, loss or
    discriminator module imports the feature networks (stepdistill.features, stepdistill.evaluation), and a DMD2 run
    of train/dmd.py with the teacher-feature critic never loads a DomainClassifier."""
    import ast
    import pathlib

    from stepdistill import features
    from train.dmd import main

    training = [*pathlib.Path("stepdistill/strategies").glob("*.py")]
    training += [pathlib.Path(f"stepdistill/{n}.py") for n in ("discriminator", "losses", "trainer", "denoiser")]
    for path in training:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "features" not in (node.module or "") and "evaluation" not in (node.module or ""), path

    def refuse(*args, **kwargs):
        raise AssertionError("training loaded the domain classifier")

    monkeypatch.setattr(features.DomainClassifier, "from_pretrained", refuse)
    tiny_unet(num_classes=10).save_pretrained(tmp_path / "teacher" / "unet")
    tiny_scheduler().save_pretrained(tmp_path / "teacher" / "scheduler")
    flags = ["--gan-generator-weight", "3e-3", "--gan-critic-weight", "1e-2", "--gan-features", "teacher"]
    common = ["--max-steps", "2", "--batch-size", "4", "--data-limit", "16", "--eval-every", "0"]
    main(["--teacher", str(tmp_path / "teacher"), *flags, *common, "--output-dir", str(tmp_path / "run")])
    logs = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert "loss/disc" in logs[-1] and any(k.startswith("log/critic_acc_t") for k in logs[-1])
