"""Speed and memory of every strategy on the bundled teacher, and of its exported few-step pipelines.

    python eval/bench.py --out benchmarks/speed                       # all measurements (run it alone)
    python eval/bench.py --pipelines outputs/cd-fashion/pipeline@1,4 --out benchmarks/speed

Training: for each configuration, the median wall time of one optimizer step through the ``Trainer`` (accelerate,
EMA, logging, gradient hygiene, non-finite checks) is divided by the median time of the same strategy's losses,
backward and optimizer step in a bare loop: the trainer's overhead (target <= 1.10x). For DMD2 it is also divided
by the sum of its network passes (generator, teacher, fake score and GAN head forward/backward) each timed alone
and counted as one two-time-scale cycle uses them: all the strategy's and the trainer's own cost (target <= 1.15x). Each configuration runs in
a fresh process, whose peak resident memory is reported. Inference: median time of a batch through the exported
pipeline at 1 and 4 steps, against the teacher's own 50-step pipeline (the same pipeline class, 50 trailing DDIM
steps). Writes results.json and table.md in --out and prints the table. Timings are only meaningful on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time

import torch

from stepdistill.cli import run_cli

CONFIGS = {
    "progressive": ("progressive", {"teacher_steps": 64, "target_steps": 2, "steps_per_round": 10000, "lr": 2e-4}),
    "consistency": ("consistency", {"guidance_range": [1.0, 1.0], "guidance_embedding_dim": None, "lr": 5e-5}),
    "consistency-lora": (
        "consistency",
        {"guidance_range": [1.0, 1.0], "guidance_embedding_dim": None, "lr": 1e-4, "lora_rank": 16},
    ),
    "dmd2": ("dmd", {"lr": 1e-4, "gan_generator_weight": 3e-3, "gan_critic_weight": 1e-2}),
    "dmd2-nogan": ("dmd", {"lr": 1e-4}),
    "dmd2-4step": ("dmd", {"lr": 1e-4, "generator_steps": 4, "gan_generator_weight": 3e-3, "gan_critic_weight": 1e-2}),
    "dmd2-lora": ("dmd", {"lr": 1e-4, "lora_rank": 16, "fake_lora_rank": 16}),
    # sCD against consistency: the price of the JVP (forward-mode AD, or two more forward passes)
    "scm": ("scm", {"lr": 5e-5}),
    "scm-finite-difference": ("scm", {"lr": 5e-5, "jvp": "finite_difference"}),
}


def _build(name: str, teacher_path: str, data_path: str, batch_size: int):
    from stepdistill.data import load_training_data
    from stepdistill.denoiser import Denoiser
    from stepdistill.strategies import REGISTRY

    registry_name, options = CONFIGS[name]
    teacher = Denoiser.from_pretrained(teacher_path)
    config = teacher.backbone.config
    data = load_training_data(data_path, config.sample_size, 1024, config.in_channels, teacher.null_class)
    cls = REGISTRY[registry_name]
    torch.manual_seed(0)
    return cls(cls.config_class(**options), teacher), data


def _bare_step_times(name, teacher_path, data_path, batch_size, steps) -> list[float]:
    """The strategy's own work per step, with nothing around it: losses, backward, optimizer step."""
    strategy, data = _build(name, teacher_path, data_path, batch_size)
    optimizers = strategy.optimizers()
    times = []
    for i in range(steps):
        idx = torch.randint(0, len(data["x0"]), (batch_size,))
        batch = {k: v[idx] for k, v in data.items()}
        start = time.perf_counter()
        losses = strategy.losses(batch, i)
        for key, loss in losses.items():
            if not key.startswith("log/"):
                loss.backward()
                optimizers[key].step()
                optimizers[key].zero_grad(set_to_none=True)
        strategy.on_step_end(i + 1)
        times.append(time.perf_counter() - start)
    return times


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dmd_pass_budget(name, teacher_path, data_path, batch_size, steps) -> float:
    """Seconds per DMD2 step if its network passes ran back to back with nothing else: each kind of pass is timed
    alone on the strategy's own networks, then counted as one TTUR cycle uses them, divided by the cycle length."""
    strategy, data = _build(name, teacher_path, data_path, batch_size)
    cfg, optimizers = strategy.config, strategy.optimizers()
    x = data["x0"][:batch_size]
    labels = {"labels": data["labels"][:batch_size]} if "labels" in data else {}
    from stepdistill.denoiser import Condition

    cond, cond2 = (
        Condition(**labels) if labels else None,
        Condition(**labels).cat(Condition(**labels)) if labels else None,
    )
    t, t2 = torch.full((batch_size,), 0.5), torch.full((2 * batch_size,), 0.5)
    gen, fake = strategy.student, strategy.fake_score

    def no_grad(net):
        with torch.no_grad():
            net(x, t, cond)

    def train_pass(net, inputs, times, c, name, features=False):
        out = net(inputs, times, c, return_features=features)
        loss = out[0].mean() + net.gan_head(out[1]).mean() if features else out.mean()
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def input_pass():  # the GAN generator term: gradient to the input through the frozen fake score
        inputs = x.clone().requires_grad_(True)
        with strategy.frozen("fake_score") as net:
            _, features = net(inputs, t, cond, return_features=True)
            net.gan_head(features).mean().backward()

    def teacher_pass():
        with torch.no_grad():
            strategy._real_x0(x, t, cond)

    repeats = max(3, steps // 3)
    gen_nograd = _median_time(lambda: no_grad(gen), repeats)
    gen_train = _median_time(lambda: train_pass(gen, x, t, cond, "student"), repeats)
    fake_nograd = _median_time(lambda: no_grad(fake), repeats)
    fake_inputs, fake_times, fake_cond = (torch.cat([x, x]), t2, cond2) if cfg.gan else (x, t, cond)
    fake_train = _median_time(
        lambda: train_pass(fake, fake_inputs, fake_times, fake_cond, "fake_score", cfg.gan), repeats
    )
    real = _median_time(teacher_pass, repeats)
    gan_input = _median_time(input_pass, repeats) if cfg.gan else 0.0
    ratio = cfg.fake_updates_per_generator
    simulation = gen_nograd * (cfg.generator_steps - 1) / 2 if cfg.backward_simulation else 0.0  # mean over k
    cycle = (gen_train + real + fake_nograd + gan_input) + (ratio - 1) * gen_nograd + ratio * (fake_train + simulation)
    return cycle / ratio


def _trainer_step_times(name, teacher_path, data_path, batch_size, steps) -> list[float]:
    from stepdistill.trainer import Trainer, TrainerConfig

    strategy, data = _build(name, teacher_path, data_path, batch_size)
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        config = TrainerConfig(output_dir=out, max_steps=steps, batch_size=batch_size, log_every=10, ema_decay=0.999)
        trainer = Trainer(config, strategy, data, callbacks=[lambda trainer: stamps.append(time.perf_counter())])
        trainer.save_grid = lambda: None  # the end-of-run grid is not a training step
        trainer.save_checkpoint = lambda: None  # nor is the final checkpoint
        trainer.train()
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def _passes_task(args) -> dict:
    _, name, teacher, data, batch_size, steps, _ = args
    return {"median_s": _dmd_pass_budget(name, teacher, data, batch_size, steps)}


def _train_task(args) -> dict:
    kind, name, teacher, data, batch_size, steps, warmup = args
    fn = _bare_step_times if kind == "bare" else _trainer_step_times
    times = fn(name, teacher, data, batch_size, steps + warmup)[warmup:]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),  # over whole two-time-scale cycles when --steps is a multiple of it
        "steps": len(times),
        "peak_rss_mib": round(peak_mib, 1),
    }


def _in_fresh_process(task, args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(task, (args,))


def _pipeline_time(pipe, steps: int, batch_size: int, repeats: int) -> float:
    labels = [i % 10 for i in range(batch_size)]
    pipe(class_labels=labels[:2], num_inference_steps=steps, output_type="pt")  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(class_labels=labels, num_inference_steps=steps, output_type="pt")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_rows(
    specs: list[str], teacher: str, batch_size: int, repeats: int, trust_remote_code: bool = False
) -> list[dict]:
    """Median pipeline times of the 50-step teacher and of each ``PATH@STEPS`` export; an export's own pipeline code
    runs only with ``trust_remote_code`` (``--trust-remote-code``)."""
    from diffusers import DiffusionPipeline

    from stepdistill.denoiser import Denoiser
    from stepdistill.evaluation import load_model
    from stepdistill.export import export_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_pipeline(Denoiser.from_pretrained(teacher).frozen(), os.path.join(tmp, "teacher"), 50)
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # trusted: the toolkit's own file
        pipe.set_progress_bar_config(disable=True)
        base = _pipeline_time(pipe, 50, batch_size, repeats)
    rows = [{"pipeline": "teacher (DDIM)", "steps": 50, "batch": batch_size, "median_s": base, "speedup": 1.0}]
    for spec in specs:
        path, _, steps = spec.partition("@")
        pipe = load_model(path, "cpu", trust_remote_code)
        for n in [int(s) for s in steps.split(",")] if steps else [1]:
            seconds = _pipeline_time(pipe, n, batch_size, repeats)
            rows.append(
                {"pipeline": path, "steps": n, "batch": batch_size, "median_s": seconds, "speedup": base / seconds}
            )
    return rows


def table(result: dict) -> str:
    lines = [
        "| training | trainer step (s) | bare step (s) | overhead | passes alone (s) | mean step vs passes | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["training"]:
        passes = row.get("passes_s")
        extra = f"{passes:.4f} | {row['trainer_mean_s'] / passes:.3f}x" if passes else "- | -"
        lines.append(
            f"| {row['config']} | {row['trainer_s']:.4f} | {row['bare_s']:.4f} | {row['overhead']:.3f}x | {extra} | "
            f"{row['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "| pipeline | steps | batch | median (s) | speed-up vs 50-step teacher |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["inference"]:
        lines.append(
            f"| {row['pipeline']} | {row['steps']} | {row['batch']} | {row['median_s']:.4f} | {row['speedup']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="assets/fashion-teacher", help="teacher model folder")
    parser.add_argument("--data", default="assets/fashion-mnist", help="training images")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="training runs")
    parser.add_argument("--batch-size", type=int, default=64, help="training and inference batch size")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--pipelines", nargs="*", default=[], help="exported pipeline folders, PATH@1,4")
    parser.add_argument("--repeats", type=int, default=5, help="timed inference batches (median)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the pipeline code the --pipelines folders carry (stepdistill's exports do); off by default",
    )
    parser.add_argument("--out", default="benchmarks/speed", help="output folder")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.batch_size < 1 or args.steps < 3 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1 and --steps >= 3.")
    result = {"settings": {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}}
    result["training"] = []
    for name in args.configs:
        common = (name, args.teacher, args.data, args.batch_size, args.steps, args.warmup)
        bare = _in_fresh_process(_train_task, ("bare", *common))
        full = _in_fresh_process(_train_task, ("trainer", *common))
        result["training"].append(
            {
                "config": name,
                "trainer_s": full["median_s"],
                "bare_s": bare["median_s"],
                "overhead": full["median_s"] / bare["median_s"],
                "peak_rss_mib": full["peak_rss_mib"],
            }
        )
        if CONFIGS[name][0] == "dmd":  # DMD2: the mean step (whole TTUR cycles) against its passes timed alone
            row = result["training"][-1]
            row["trainer_mean_s"] = full["mean_s"]
            row["passes_s"] = _in_fresh_process(_passes_task, ("passes", *common))["median_s"]
        print(result["training"][-1], flush=True)
    result["inference"] = inference_rows(
        args.pipelines, args.teacher, args.batch_size, args.repeats, args.trust_remote_code
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = table(result)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    print(text)


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
