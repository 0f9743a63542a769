"""Strategy correctness on analytic teachers and smoke tests on a tiny diffusers UNet."""

import os

import pytest
import torch
from conftest import mlp_student, reset_accelerate_state, tiny_scheduler, tiny_unet

from stepdistill.analytic import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.schedules import Schedule, add_noise, ddim_step, two_step_target
from stepdistill.strategies.base import REGISTRY, get_strategy
from stepdistill.strategies.progressive import ProgressiveConfig, ProgressiveStrategy
from stepdistill.trainer import Trainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def teacher_two_steps(teacher, x_t, t, n):
    x0, eps = teacher.split(x_t, t)
    x_mid = ddim_step(x0, eps, *teacher.schedule.alpha_sigma(t - 0.5 / n))
    x0, eps = teacher.split(x_mid, t - 0.5 / n)
    return ddim_step(x0, eps, *teacher.schedule.alpha_sigma(t - 1.0 / n))


def test_two_step_target_makes_one_step_land_on_the_teacher():
    schedule = Schedule.cosine()
    teacher = GaussianMixtureDenoiser(GaussianMixture.random(3, (1, 1, 2)), schedule)
    x_t = torch.randn(64, 1, 1, 2, dtype=torch.float64)
    for t0, n in ((1.0, 4), (0.5, 4), (0.25, 4)):
        t = torch.full((64,), t0, dtype=torch.float64)
        x_end = teacher_two_steps(teacher, x_t, t, n)
        target = two_step_target(x_t, x_end, schedule.alpha_sigma(t), schedule.alpha_sigma(t - 1 / n))
        # one DDIM step whose x0 is the target, with eps implied by x_t
        alpha, sigma = schedule.alpha_sigma(t)
        eps = (x_t - alpha.view(-1, 1, 1, 1) * target) / sigma.view(-1, 1, 1, 1)
        torch.testing.assert_close(ddim_step(target, eps, *schedule.alpha_sigma(t - 1 / n)), x_end)


def test_registry_and_config_validation():
    assert get_strategy("progressive") is ProgressiveStrategy and "progressive" in REGISTRY
    with pytest.raises(ValueError, match="Unknown strategy"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="power of two"):
        ProgressiveConfig(teacher_steps=48)
    with pytest.raises(ValueError, match="below teacher_steps"):
        ProgressiveConfig(teacher_steps=4, target_steps=8)
    with pytest.raises(ValueError, match="guided_steps"):
        ProgressiveConfig(guidance_range=[1.0, 3.0])


def test_pd_round_student_matches_two_step_teacher_map(tmp_path):
    """One PD round (4 -> 2 steps) on the exact Gaussian-mixture teacher: the student's single DDIM step
    reproduces two teacher steps far better than the teacher's own single step does."""
    schedule = Schedule.cosine()
    mixture = GaussianMixture.random(3, (1, 1, 2), seed=0)
    teacher = GaussianMixtureDenoiser(mixture, schedule)
    student = mlp_student(schedule, dim=2).float()
    config = ProgressiveConfig(teacher_steps=4, target_steps=2, steps_per_round=1500, lr=3e-3)
    strategy = ProgressiveStrategy(config, teacher, student=student)
    data = {"x0": mixture.sample(20000, torch.Generator().manual_seed(0)).float()}
    trainer = Trainer(
        TrainerConfig(
            output_dir=str(tmp_path), max_steps=config.total_steps, batch_size=256, lr_schedule="cosine", log_every=500
        ),
        strategy,
        data,
    )
    trainer.train()
    n = 2
    x0 = mixture.sample(4000, torch.Generator().manual_seed(1))
    errors = {"student": 0.0, "teacher_one_step": 0.0}
    for t0 in (1.0, 0.5):
        t = torch.full((len(x0),), t0, dtype=torch.float64)
        x_t = add_noise(x0, torch.randn_like(x0), *schedule.alpha_sigma(t))
        target = teacher_two_steps(teacher, x_t, t, n)
        with torch.no_grad():
            s_x0, s_eps = student.float().split(x_t.float(), t.float())
        one = ddim_step(s_x0.double(), s_eps.double(), *schedule.alpha_sigma(t - 1 / n))
        naive = ddim_step(*teacher.split(x_t, t), *schedule.alpha_sigma(t - 1 / n))
        errors["student"] += (one - target).pow(2).mean().item()
        errors["teacher_one_step"] += (naive - target).pow(2).mean().item()
    assert errors["student"] < 0.15 * errors["teacher_one_step"], errors


def tiny_teacher():
    return Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)


@pytest.mark.parametrize("guided", [False, True])
def test_pd_smoke_on_tiny_unet(tmp_path, guided):
    teacher = tiny_teacher()
    extra = {"guidance_range": [1.0, 3.0], "guided_steps": 1} if guided else {}
    config = ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=1, lr=1e-3, **extra)
    strategy = ProgressiveStrategy(config, teacher)
    data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (16,))}
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), max_steps=config.total_steps, batch_size=4, log_every=1),
        strategy,
        data,
        grid_condition=Condition(labels=torch.arange(3)),
    )
    logs = trainer.train()
    assert torch.isfinite(torch.tensor(logs["loss/student"])) and logs["log/student_steps"] == 2
    assert all(p.grad is None for p in teacher.parameters()), "the frozen teacher must get no gradients"
    assert (tmp_path / "grids").is_dir() and (tmp_path / "log.jsonl").is_file()
    assert strategy.sample(torch.randn(3, 1, 8, 8), Condition(labels=torch.arange(3))).shape == (3, 1, 8, 8)


def test_student_teacher_mismatch_fails_before_training(tmp_path):
    teacher = tiny_teacher()
    other = Denoiser(tiny_unet(num_classes=5), teacher.schedule, "v", null_class=5)
    strategy = ProgressiveStrategy(ProgressiveConfig(teacher_steps=4, target_steps=2), teacher, student=other)
    with pytest.raises(ValueError, match="does not match the teacher.*null class.*num_class_embeds"):
        Trainer(TrainerConfig(output_dir=str(tmp_path), max_steps=1), strategy, {"x0": torch.zeros(4, 1, 8, 8)})
    assert not (tmp_path / "checkpoints").exists()


def test_train_script_rejects_bad_configs(tmp_path):
    """One ``error:`` line and exit status 2 from the scripts' entry point (run here; the first case also as a
    script), before any training starts."""
    import importlib
    import subprocess
    import sys

    from conftest import run_entry_point

    from stepdistill.cli import run_cli

    (tmp_path / "run.yaml").write_text("teacher_steps: 64\nstep_per_round: 10\n")
    for script, args, message in [
        ("progressive", ["--config", str(tmp_path / "run.yaml")], "Did you mean 'steps_per_round'"),
        ("progressive", ["--teacher-steps", "48"], "power of two"),
        ("progressive", ["--teacher", str(tmp_path / "none")], "does not exist"),
        ("consistency", ["--preset", "fashion-lora", "--lora-target-modules", "to_q", "bogus"], "['bogus'] do not"),
        ("consistency", ["--phases", "4", "--sample-steps", "2"], "exactly 4 steps"),
        ("consistency", ["--preset", "fashion-lora", "--lora-rank", "64"], "exceeds the width"),
        ("sid", ["--generator-steps", "4", "--init-timestep", "400"], "must start above the middle training index"),
        ("dmd", ["--regression-weight", "1", "--regression-pairs", "8", "--init-timestep", "755"], "drop init_"),
    ]:
        argv = [f"train/{script}.py", "--output-dir", str(tmp_path / "o"), *args]
        main = importlib.import_module(f"train.{script}").main
        proc = run_entry_point(lambda: run_cli(main), argv)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (
            message,
            proc.stderr[-2000:],
        )
        assert not (tmp_path / "o" / "checkpoints").exists()
    command = [sys.executable, "train/progressive.py", "--output-dir", str(tmp_path / "o"), "--teacher-steps", "48"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "power of two" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        {"gradient_checkpointing": True},
        {"mixed_precision": "bf16"},
        {"gradient_accumulation_steps": 2, "ema_decay": 0.99},
    ],
)
def test_trainer_options_on_tiny_unet(tmp_path, options):
    teacher = tiny_teacher()
    config = ProgressiveConfig(teacher_steps=4, target_steps=2, steps_per_round=2, lr=1e-3)
    strategy = ProgressiveStrategy(config, teacher)
    data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (16,))}
    trainer = Trainer(TrainerConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4, **options), strategy, data)
    before = [p.detach().clone() for p in strategy.student.parameters()]
    logs = trainer.train()
    assert torch.isfinite(torch.tensor(logs["loss/student"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, strategy.student.parameters()))
    if options.get("gradient_checkpointing"):
        assert strategy.student.backbone.is_gradient_checkpointing


def test_xformers_without_cuda_is_a_clear_error(tmp_path):
    strategy = ProgressiveStrategy(ProgressiveConfig(teacher_steps=4, target_steps=2), tiny_teacher())
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="xformers.*CUDA"):
        Trainer(
            TrainerConfig(output_dir=str(tmp_path), max_steps=1, attention="xformers"),
            strategy,
            {"x0": torch.zeros(4, 1, 8, 8)},
        )


def test_periodic_evaluation_callback_logs_metrics(tmp_path):
    import json

    from stepdistill.evaluation import domain_scorers, fd_callback

    strategy = ProgressiveStrategy(
        ProgressiveConfig(teacher_steps=4, target_steps=2, steps_per_round=2), tiny_teacher()
    )
    data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (16,))}
    callback = fd_callback(
        domain_scorers("assets/fashion-classifier"), every=2, num_samples=12, num_classes=3, shape=(1, 8, 8)
    )
    Trainer(
        TrainerConfig(output_dir=str(tmp_path), max_steps=4, batch_size=4), strategy, data, callbacks=[callback]
    ).train()
    evals = [json.loads(line) for line in open(tmp_path / "log.jsonl") if "eval/fd_domain" in line]
    assert [e["step"] for e in evals] == [2, 4] and all(0 <= e["eval/accuracy"] <= 1 for e in evals)
    assert (tmp_path / "training_curves.png").stat().st_size > 1000  # loss and metric curves, plotted at the end
    from stepdistill.reporting import plot_runs

    plot_runs({"run": str(tmp_path / "log.jsonl")}, "eval/fd_domain", str(tmp_path / "fd.png"))
    assert (tmp_path / "fd.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--eval-every"):
        plot_runs({"run": str(tmp_path / "log.jsonl")}, "eval/fid", str(tmp_path / "fid.png"))


def test_periodic_evaluation_does_not_change_training(tmp_path):
    """The evaluation callback samples a stochastic (multistep consistency) sampler, yet the trained weights are
    bit-identical to a run without evaluation: sampling runs on a forked RNG."""
    from stepdistill.evaluation import domain_scorers, fd_callback
    from stepdistill.strategies.consistency import ConsistencyConfig, ConsistencyStrategy

    def train(callbacks):
        torch.manual_seed(0)
        config = ConsistencyConfig(solver_steps=10, sample_steps=2, guidance_range=[1.0, 1.0], lr=1e-3)
        strategy = ConsistencyStrategy(config, tiny_teacher())
        data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (16,))}
        out = tmp_path / str(len(callbacks))
        Trainer(
            TrainerConfig(output_dir=str(out), max_steps=4, batch_size=4), strategy, data, callbacks=callbacks
        ).train()
        return [p.detach().clone() for p in strategy.student.parameters()]

    scorers = domain_scorers("assets/fashion-classifier")
    evaluated = train([fd_callback(scorers, every=1, num_samples=8, num_classes=3, shape=(1, 8, 8))])
    reset_accelerate_state()
    plain = train([])
    assert all(torch.equal(a, b) for a, b in zip(evaluated, plain))


def ode_map(teacher, noise, steps=200):
    from stepdistill.sampling import ddim_sample

    return ddim_sample(teacher, noise, num_steps=steps)


@pytest.mark.parametrize("phases", [1, 4])
def test_consistency_map_approaches_the_teacher_ode_map(tmp_path, phases):
    """CD on the exact Gaussian-mixture teacher: the student's deterministic map (1 step; or one jump per segment
    for a phased student) converges to the teacher's ODE map."""
    from stepdistill.sampling import consistency_sample
    from stepdistill.strategies.consistency import ConsistencyConfig, ConsistencyStrategy

    schedule = Schedule.from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})
    mixture = GaussianMixture.random(3, (1, 1, 2), seed=0)
    teacher = GaussianMixtureDenoiser(mixture, schedule)
    student = mlp_student(schedule, dim=2).float()
    config = ConsistencyConfig(
        solver_steps=20,
        lr=2e-3,
        guidance_range=[1.0, 1.0],
        guidance_embedding_dim=None,
        target="ema",
        target_decay=0.95,
        loss="l2",
        phases=phases,
        sample_steps=phases,
    )
    strategy = ConsistencyStrategy(config, teacher, student=student)
    noise = torch.randn(2000, 1, 1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = ode_map(teacher, noise)

    def error():
        with torch.no_grad():
            one = consistency_sample(student, noise.float(), num_steps=phases, solver_steps=20, phases=phases).double()
        return (one - exact).pow(2).mean().item()

    errors = [error()]
    data = {"x0": mixture.sample(20000, torch.Generator().manual_seed(0)).float()}
    for max_steps in (400, 2000):
        trainer = Trainer(
            TrainerConfig(
                output_dir=str(tmp_path / str(max_steps)), max_steps=max_steps, batch_size=256, log_every=500
            ),
            strategy,
            data,
        )
        trainer.train()
        errors.append(error())
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.1 * errors[0], errors


@pytest.mark.parametrize("variant", ["lcm", "lcm-lora", "lcm-lora-ema"])
def test_consistency_smoke_on_tiny_unet(tmp_path, variant):
    from stepdistill.strategies.consistency import ConsistencyConfig, ConsistencyStrategy

    teacher = tiny_teacher()
    extra = {
        "lcm": {"guidance_embedding_dim": 16},
        "lcm-lora": {"lora_rank": 4, "target": "none", "lr": 1e-3},
        "lcm-lora-ema": {"lora_rank": 4, "target": "ema", "lr": 1e-3},
    }[variant]
    config = ConsistencyConfig(solver_steps=10, sample_steps=2, guidance_range=[1.0, 3.0], **extra)
    strategy = ConsistencyStrategy(config, teacher)
    frozen = {n: p.detach().clone() for n, p in teacher.named_parameters() if "lora" not in n}
    data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.randint(0, 3, (16,))}
    trainer = Trainer(
        TrainerConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4),
        strategy,
        data,
        grid_condition=Condition(labels=torch.arange(3)),
    )
    logs = trainer.train()
    assert torch.isfinite(torch.tensor(logs["loss/student"]))
    trained = [n for n, p in strategy.student.named_parameters() if p.requires_grad]
    assert trained and (variant == "lcm" or all("lora" in n for n in trained))
    # the teacher's weights (for LCM-LoRA: the shared base weights) never change
    assert all(torch.equal(p, frozen[n]) for n, p in teacher.named_parameters() if n in frozen)
    online = {n: p.detach().clone() for n, p in strategy.student.named_parameters()}
    assert strategy.sample(torch.randn(3, 1, 8, 8), Condition(labels=torch.arange(3))).shape == (3, 1, 8, 8)
    assert all(torch.equal(p, online[n]) for n, p in strategy.student.named_parameters())  # sampling swaps back
    if variant == "lcm-lora-ema":  # the EMA of the adapter weights is the exported network; no full copy kept
        assert strategy.target_net is None
        exported = dict(strategy.inference_network().named_parameters())
        shadow = strategy.target_ema.shadow
        assert set(shadow) == set(trained) and all(torch.equal(exported[n], shadow[n]) for n in shadow)
        assert any(not torch.equal(shadow[n], online[n]) for n in shadow)


# Options per registered strategy for the two-process test. A strategy missing here still runs, with its default
# config: registering a strategy is enough for it to be covered.
_CD = {"solver_steps": 10, "sample_steps": 2, "guidance_range": [1.0, 3.0], "lr": 1e-3}
TWO_PROCESS_VARIANTS = {
    "progressive": {"default": {"teacher_steps": 8, "target_steps": 2, "steps_per_round": 2, "lr": 1e-3}},
    "consistency": {
        "full": {**_CD, "guidance_embedding_dim": 16},
        "lora": {**_CD, "guidance_embedding_dim": None, "lora_rank": 4},
        "phased": {**_CD, "guidance_embedding_dim": None, "phases": 2},
    },
    "dmd": {
        "gan": {"fake_updates_per_generator": 2, "gan_generator_weight": 3e-3, "gan_critic_weight": 1e-2, "lr": 1e-3},
        "gan-teacher": {
            "fake_updates_per_generator": 2,
            "gan_generator_weight": 3e-3,
            "gan_critic_weight": 1e-2,
            "gan_features": "teacher",
            "gan_r1_weight": 0.1,
            "lr": 1e-3,
        },
        "lora-4step": {"generator_steps": 4, "lora_rank": 4, "fake_lora_rank": 4, "fake_updates_per_generator": 2},
        "unroll-4step": {"generator_steps": 4, "unroll": True, "fake_updates_per_generator": 2, "lr": 1e-3},
    },
    "sid": {
        "lsg": {"lr": 1e-3, "real_guidance_scale": 2.0, "fake_train_guidance": 2.0, "fake_eval_guidance": 2.0},
        "lora-4step": {"generator_steps": 4, "init_timestep": 999, "lora_rank": 4, "fake_lora_rank": 4, "lr": 1e-3},
        "unroll-4step": {"generator_steps": 4, "init_timestep": 999, "unroll": True, "lr": 1e-3},
        "sida": {"gan_generator_weight": 1e-3, "gan_critic_weight": 1.0, "lr": 1e-3},
        "sida-teacher": {
            "gan_generator_weight": 1e-2,
            "gan_critic_weight": 1.0,
            "gan_features": "teacher",
            "lr": 1e-3,
        },
    },
    "scm": {
        "default": {"lr": 1e-3},
        "lora-finite-difference-2step": {"lora_rank": 4, "jvp": "finite_difference", "generator_steps": 2, "lr": 1e-3},
        "rcm": {"dmd_weight": 0.02, "fake_updates_per_generator": 2, "tangent_warmup_steps": 0, "lr": 1e-3},
    },
    "meanflow": {
        "default": {"lr": 1e-3, "flow_fraction": 0.5},
        "finite-difference-2step": {"jvp": "finite_difference", "generator_steps": 2, "lr": 1e-3},
    },
    "ladd": {
        "default": {},
        "1step-lora": {"generator_steps": 1, "lora_rank": 4, "lr": 1e-3},
        "synthetic": {"data_source": "teacher", "teacher_steps": 2},
    },
}
TWO_PROCESS_CASES = [
    (name, variant, options)
    for name in sorted(REGISTRY)
    for variant, options in TWO_PROCESS_VARIANTS.get(name, {"default": {}}).items()
]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """One torchrun launch (2 CPU processes, gloo) runs every case of TWO_PROCESS_CASES; its results by case id,
    or the launch's failure."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("ddp") / "out.json"
    cases = {f"{name}-{variant}": [name, options] for name, variant, options in TWO_PROCESS_CASES}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*command, "tests/two_process_worker.py", json.dumps(cases), str(out)],
        capture_output=True,
        text=True,
        timeout=300 + 120 * len(cases),
        env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.read_text()) if proc.returncode == 0 else proc.stderr[-3000:]


@pytest.mark.parametrize("name,variant,options", TWO_PROCESS_CASES)
def test_every_strategy_trains_on_two_processes_with_identical_ranks(two_process_results, name, variant, options):
    """DDP on two CPU processes (torchrun, gloo): each registered strategy trains a few steps, every network's
    parameters change, and after every optimizer step both ranks hold bit-identical parameters."""
    assert isinstance(two_process_results, dict), two_process_results  # the launch itself failed
    result = two_process_results[f"{name}-{variant}"]
    assert "error" not in result, result.get("error")
    assert result["steps"] == [1, 2, 3] and result["changed"], result
    assert result["max_rank_diff"] == [0.0, 0.0, 0.0], result


def test_shared_helpers_call_networks_through_their_wrapper():
    """denoising_loss and consistency_function accept a distributed wrapper: they call it (so DDP sees the forward
    and syncs gradients) and read schedule / prediction type through ``unwrap``; the no-grad sampler unwraps it."""
    from stepdistill.losses import denoising_loss
    from stepdistill.sampling import consistency_function, ddim_sample

    class Wrapper(torch.nn.Module):  # the shape of DDP: the network under .module, forward passed through
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    net = tiny_teacher()
    wrapped = Wrapper(net)
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t, cond = torch.rand(4), Condition(labels=torch.arange(4) % 3)
    assert torch.equal(denoising_loss(wrapped, x0, cond, t, eps), denoising_loss(net, x0, cond, t, eps))
    assert wrapped.calls == 1
    assert torch.equal(consistency_function(wrapped, x0, t, cond), consistency_function(net, x0, t, cond))
    assert wrapped.calls == 2
    assert torch.equal(ddim_sample(wrapped, eps, cond, num_steps=2), ddim_sample(net, eps, cond, num_steps=2))


def test_lora_consistency_student_refuses_a_separate_initial_student():
    from stepdistill.strategies.consistency import ConsistencyConfig, ConsistencyStrategy

    teacher = tiny_teacher()
    with pytest.raises(ValueError, match="--student cannot be used with --lora-rank"):
        ConsistencyStrategy(ConsistencyConfig(lora_rank=4), teacher, student=teacher.trainable_copy())


def test_knowledge_distillation_is_a_whole_strategy_from_config_losses_and_scheduler_spec(tmp_path):
    """The smallest strategy (README, "Add a strategy"): it declares only a config, ``losses``, a scheduler spec and a
    registration, and still trains with the shared trainer, samples and exports through the one export path, its
    pipeline's one DDIM step giving exactly the strategy's samples."""
    import json

    from stepdistill.export import export_spec
    from stepdistill.sampling import ddim_sample
    from stepdistill.strategies.base import Strategy
    from stepdistill.strategies.knowledge import KnowledgeDistillationConfig, KnowledgeDistillationStrategy

    own = set(vars(KnowledgeDistillationStrategy)) - set(vars(Strategy))
    assert own <= {"config_class", "losses", "scheduler_spec", "check_compatible", "name", "__init__", "__doc__"}, own
    assert get_strategy("kd") is KnowledgeDistillationStrategy
    teacher = tiny_teacher()
    strategy = KnowledgeDistillationStrategy(KnowledgeDistillationConfig(teacher_steps=4, lr=1e-3), teacher)
    batch = {"x0": torch.zeros(4, 1, 8, 8), "labels": torch.arange(4) % 3}
    torch.manual_seed(0)
    noise = torch.randn(4, 1, 8, 8)
    torch.manual_seed(0)
    loss = strategy.losses(batch, 0)["student"]  # the student starts as the teacher: its one step vs 4 DDIM steps
    cond = Condition(labels=batch["labels"])
    target = ddim_sample(teacher, noise, cond, 4)
    one_step = strategy.student(noise, torch.ones(4), cond)
    assert torch.allclose(loss, (one_step - target).pow(2).mean(), atol=1e-6)
    loss.backward()
    assert any(p.grad is not None for p in strategy.student.parameters())
    assert all(p.grad is None for p in teacher.parameters())

    config = TrainerConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, log_every=1)
    data = {"x0": torch.randn(16, 1, 8, 8).clamp(-1, 1), "labels": torch.arange(16) % 3}
    trainer = Trainer(config, strategy, data, grid_condition=Condition(labels=torch.arange(3)))
    trainer.train()
    spec = strategy.export_spec(trainer.step)
    (folder,) = export_spec(trainer.export_modules()["student"], spec, str(tmp_path / "run"), "tiny", None)
    assert json.load(open(os.path.join(folder, "stepdistill.json")))["timesteps"] == [999]
    exported = Denoiser.from_pretrained(folder).frozen()
    noise = torch.randn(3, 1, 8, 8)
    cond = Condition(labels=torch.arange(3))
    assert torch.allclose(ddim_sample(exported, noise, cond, 1), trainer.sample(noise, cond), atol=1e-5)
    assert "Luhman & Luhman 2021" in open(os.path.join(folder, "README.md")).read()
