"""Each step of a few-step generator scored on its own: what the mixture over steps hides.

    python eval/step_outputs.py benchmarks/students/sid-4step benchmarks/students/sid-4step-unroll \\
        --num-samples 1000 --out benchmarks/step-outputs

A K-step generator predicts ``x0`` at each of its K times and re-noises it to the next one; only the last ``x0`` is
the sample. Few-step SiD and DMD2's multi-step generators draw the step to train at random and train one fake score
on the outputs of all K steps together, so the loss sees their pool, not the last step. This command runs each
--student folder's own sampler (its ``stepdistill.json`` timesteps, class-balanced labels, seeded noise) and scores
every step's ``x0`` apart, and all K pooled: mean grey level (0-255, against the real images'), domain FD and class
accuracy from the bundled Fashion-MNIST classifier. Writes results.json and table.md in --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from stepdistill import ASSETS
from stepdistill.cli import run_cli
from stepdistill.data import to_uint8
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.evaluation import balanced_labels, class_count, domain_scorers, load_real, portable_path
from stepdistill.sampling import renoising_loop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", nargs="+", help="exported few-step student folder(s) with a stepdistill.json")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per step (class-balanced)")
    parser.add_argument("--real", default=os.path.join(ASSETS, "fashion-mnist"), help="Fashion-MNIST folder")
    parser.add_argument(
        "--classifier", default=os.path.join(ASSETS, "fashion-classifier"), help="the domain feature network"
    )
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (results.json, table.md)")
    return parser


def step_outputs(
    net: Denoiser, times: torch.Tensor, labels: torch.Tensor | None, num_samples: int, batch_size: int, seed: int
) -> list[torch.Tensor]:
    """Every step's ``x0`` (uint8, ``[K, N, C, H, W]`` as a list) of the K-step sampler at ``times`` (in [0, 1]), the
    sampler the toolkit and the exports run (``renoising_loop``), with the initial and re-noising noise seeded."""
    shape = (net.backbone.config.in_channels, net.backbone.config.sample_size, net.backbone.config.sample_size)
    noise_gen, renoise_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    per_step: list[list[torch.Tensor]] = [[] for _ in times]
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            cond = None if labels is None else Condition(labels=labels[start : start + b])
            step = iter(range(len(times)))

            def denoise(x, t, cond=cond, step=step):
                x0 = net(x, t, cond)
                per_step[next(step)].append(to_uint8(x0))
                return x0

            noise = torch.randn((b, *shape), generator=noise_gen)
            renoising_loop(denoise, noise, times, net.schedule, generator=renoise_gen)
    return [torch.cat(chunks) for chunks in per_step]


def score(scorers, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Mean grey level, domain FD and class accuracy of uint8 ``images`` (``scorers`` from ``domain_scorers``)."""
    scorers.reset()
    scorers.update(images, labels)
    out = scorers.compute()
    return {"mean_grey": float(images.float().mean()), "fd_domain": out["fd_domain"], "accuracy": out.get("accuracy")}


def _blank(value, spec: str = "") -> str:
    return "" if value is None else format(value, spec)


def main(argv=None):
    args = build_parser().parse_args(argv)

    scorers = domain_scorers(args.classifier)
    rows = []
    for folder in args.student:
        meta_path = os.path.join(folder, "stepdistill.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} is missing: pass a folder exported by a stepdistill train script.")
        with open(meta_path) as f:
            timesteps = json.load(f)["timesteps"]
        net = Denoiser.from_pretrained(folder).frozen()
        if not rows:  # the reference: real images at the students' resolution
            real, real_labels = load_real(args.real, args.num_samples, net.backbone.config.sample_size)
            rows.append({"student": "real data", "step": None, "t": None, **score(scorers, real, real_labels)})
        times = net.schedule.index_time(torch.tensor(timesteps, dtype=torch.float32))
        classes = class_count(net)
        labels = balanced_labels(args.num_samples, classes) if classes else None
        outs = step_outputs(net, times, labels, args.num_samples, args.batch_size, args.seed)
        name = os.path.basename(os.path.normpath(folder))
        for k, (t, images) in enumerate(zip(timesteps, outs)):
            rows.append({"student": name, "step": k, "t": t, **score(scorers, images, labels)})
            r = rows[-1]
            print(f"{name} step {k} (t {t}): mean grey {r['mean_grey']:.1f}, FD {r['fd_domain']:.2f}", flush=True)
        pooled = torch.cat(outs)
        pooled_labels = None if labels is None else labels.repeat(len(outs))
        rows.append({"student": name, "step": "pooled", "t": None, **score(scorers, pooled, pooled_labels)})
    table = "\n".join(
        ["| student | step | input t | mean grey | FD (domain) | class accuracy |", "|---|---:|---:|---:|---:|---:|"]
        + [
            f"| {r['student']} | {_blank(r['step'])} | {_blank(r['t'])} | "
            f"{r['mean_grey']:.1f} | {r['fd_domain']:.2f} | {_blank(r['accuracy'], '.3f')} |"
            for r in rows
        ]
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            settings = {
                k: [portable_path(x) for x in v] if isinstance(v, list) else portable_path(v)
                for k, v in vars(args).items()
            }
            json.dump({"settings": settings, "results": rows}, f, indent=2)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    run_cli(main)
