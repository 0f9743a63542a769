"""Can DMD2's GAN head tell real images from a generator's samples? A probe of the GAN term's signal.

    python eval/gan_probe.py --trust-remote-code --model cd-4step=outputs/cd-fashion/pipeline@4 \\
        --real assets/fashion-mnist --t-max 0.2 1.0 --out benchmarks/dmd/gan-probe

DMD2's GAN term trains a small classifier head on the fake score's bottleneck features (a copy of the teacher at
the start) to tell noisy real images from noisy generated ones, and moves the generator along its gradient. When
that head cannot separate the two, the term gives the generator no signal. This probe measures how separable they
are at all: it draws N samples from each --model (as the evaluation command does), takes N real images, and trains
DMD2's head (``strategies.dmd.GANHead``, freshly initialised, AdamW) on the frozen bottleneck features of
--features-from (default: the bundled teacher) at noise levels uniform over the training indices under --t-max
(DMD2's ``gan_t_max``). It reports the accuracy on held-out images (a quarter of each side), averaged over the last
quarter of the probe's evaluations: 0.5 is chance. As a control, --real against a second, disjoint draw of real
images must stay near 0.5. Writes results.json and table.md in --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tqdm import tqdm

from stepdistill import ASSETS
from stepdistill.backbones import adapter_for
from stepdistill.cli import run_cli
from stepdistill.data import from_uint8
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.discriminator import CRITIC_TIME_SAMPLINGS, Discriminator, critic_times, read_features
from stepdistill.evaluation import (
    balanced_labels,
    class_count,
    load_model,
    load_real,
    parse_model,
    portable_path,
    sample_model,
)
from stepdistill.losses import gan_critic_loss
from stepdistill.schedules import add_noise
from stepdistill.strategies.dmd import GANHead
from stepdistill.strategies.score_distillation import uniform_index_times


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", action="append", default=[], help="NAME=PATH@STEPS of a pipeline or model folder (repeatable)"
    )
    parser.add_argument("--real", required=True, help="real images: a Fashion-MNIST folder or an image folder")
    parser.add_argument(
        "--features-from",
        default=os.path.join(ASSETS, "fashion-teacher"),
        help="the network whose bottleneck the head reads (the fake score's initialisation: the teacher)",
    )
    parser.add_argument("--t-max", type=float, nargs="+", default=[1.0], help="highest noise level(s), of [0, 1]")
    parser.add_argument(
        "--source",
        choices=["bottleneck", "levels"],
        default="bottleneck",
        help="the critic: DMD2's head on the mid block, or heads on every down block and the mid block "
        "(stepdistill.discriminator)",
    )
    parser.add_argument(
        "--t-sampling",
        choices=list(CRITIC_TIME_SAMPLINGS),
        default="uniform",
        help="noise levels under --t-max: uniform training indices, biased to low noise, or logit-normal",
    )
    parser.add_argument("--num-samples", type=int, default=4096, help="generated (and real) images per probe")
    parser.add_argument("--probe-steps", type=int, default=400, help="optimizer steps of the head")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the head")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-remote-code", action="store_true", help="run the code an exported pipeline carries")
    parser.add_argument("--out", required=True, help="output folder (results.json, table.md)")
    return parser


def _critic(net: Denoiser, source: str):
    """A fresh critic for ``source`` and the function that reads its features from ``(x_t, t, cond)``."""
    if source == "bottleneck":
        adapter = adapter_for(net.backbone)
        head, name = GANHead(adapter.feature_channels(net.backbone)), adapter.feature_module(net.backbone)
        return head, lambda x_t, t, cond: read_features(net, x_t, t, cond, [name])[0]  # the bottleneck's output
    if source == "levels":
        critic, names = Discriminator.for_network(net)
        return critic, lambda x_t, t, cond: read_features(net, x_t, t, cond, names)
    raise ValueError(f"Unknown feature source {source!r}: 'bottleneck' or 'levels'.")


def probe_accuracy(
    net: Denoiser,
    real: tuple[torch.Tensor, torch.Tensor | None],
    fake: tuple[torch.Tensor, torch.Tensor | None],
    t_max: float,
    steps: int = 400,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    source: str = "bottleneck",
    sampling: str = "uniform",
) -> dict:
    """Train a fresh critic on ``net``'s features to tell ``real`` from ``fake`` (each ``(images in [-1, 1], labels or
    None)``, the same count) at noise levels under ``t_max``; return its held-out accuracy. ``source``:
    ``"bottleneck"`` (DMD2's ``GANHead`` on the mid block) or ``"levels"`` (``discriminator.Discriminator`` on every
    down block and the mid block, conditioned by projection); ``sampling``: the noise levels
    (``discriminator.critic_times``; ``"uniform"`` draws them as DMDStrategy's GAN term does).

    The last quarter of each side is held out; accuracy is evaluated every ``steps // 8`` steps on it (noise levels
    and noise drawn afresh) and the returned ``accuracy`` averages the last quarter of those evaluations."""
    n = min(len(real[0]), len(fake[0]))
    split = n * 3 // 4
    if split < batch_size or n - split < 2:
        raise ValueError(f"The probe needs at least {4 * batch_size // 3 + 2} images per side, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    critic, features = _critic(net, source)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=lr)
    like = torch.zeros(())

    def times(b):  # uniform: the GAN term's noise levels under t_max, as DMDStrategy draws them
        if sampling == "uniform":
            return uniform_index_times(net.schedule, b, like, [0.0, t_max], generator)
        return critic_times(net.schedule, b, like, sampling, t_max, generator)

    def logits(side, index):
        images, labels = side
        cond = None if labels is None else Condition(labels=labels[index])
        t = times(len(index))
        x_t = add_noise(images[index], torch.randn_like(images[index]), *net.schedule.alpha_sigma(t))
        with torch.no_grad():
            feats = features(x_t, t, cond)
        return critic(feats, cond) if source == "levels" else critic(feats)

    held_out = torch.arange(split, n)
    history = []
    for step in tqdm(range(1, steps + 1), desc=f"probe t_max={t_max:g}", disable=not progress, leave=False):
        index = torch.randint(0, split, (batch_size,), generator=generator)
        loss = gan_critic_loss(logits(real, index), logits(fake, index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 8) == 0:
            with torch.no_grad():
                correct = (logits(real, held_out) > 0).float().mean() + (logits(fake, held_out) < 0).float().mean()
            history.append({"step": step, "loss": loss.item(), "accuracy": correct.item() / 2})
    last = history[-max(1, len(history) // 4) :]
    return {"accuracy": sum(h["accuracy"] for h in last) / len(last), "history": history}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not all(0 < t <= 1 for t in args.t_max):
        parser.error(f"--t-max values must be in (0, 1], got {args.t_max}.")
    if not args.model:
        parser.error("Give at least one --model NAME=PATH@STEPS to probe against the real images.")
    net = Denoiser.from_pretrained(args.features_from).frozen()
    # real images: the probe's share and a disjoint control draw of the same size
    images, labels = load_real(args.real, 2 * args.num_samples, net.backbone.config.sample_size)
    if len(images) < 2 * args.num_samples:
        parser.error(f"--real {args.real!r} has {len(images)} images; the probe needs 2 x --num-samples.")
    real = (from_uint8(images[: args.num_samples]), None if labels is None else labels[: args.num_samples])
    control = (from_uint8(images[args.num_samples :]), None if labels is None else labels[args.num_samples :])
    candidates = [("real (control)", None, control)]
    for name, path, model_steps in (parse_model(spec, [1]) for spec in args.model):
        model = load_model(path, "cpu", args.trust_remote_code)
        classes = class_count(model)
        gen_labels = balanced_labels(args.num_samples, classes) if classes else None
        for steps in model_steps:
            x = sample_model(model, path, args.num_samples, steps, 1.0, args.seed, gen_labels, desc=name)
            candidates.append((name, steps, (from_uint8(x), gen_labels)))
    rows = []
    for name, steps, fake in candidates:
        for t_max in args.t_max:
            out = probe_accuracy(
                net, real, fake, t_max, args.probe_steps, args.lr, args.batch_size, args.seed, True, args.source,
                args.t_sampling,
            )  # fmt: skip
            rows.append({"model": name, "steps": steps, "t_max": t_max, **out})
            print(f"{name} ({steps or '-'} steps), t_max {t_max:g}: held-out accuracy {out['accuracy']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    settings = {k: portable_path(v) for k, v in vars(args).items()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": settings, "results": rows}, f, indent=2)
    table = probe_table(rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def probe_table(rows: list[dict]) -> str:
    """The probe's results as a markdown table."""
    lines = ["| images vs real | steps | t_max | held-out accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['steps'] or ''} | {r['t_max']:g} | {r['accuracy']:.3f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
