"""The command-line scripts run end to end on tiny settings (no network, bundled assets only)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_script, run_entry_point

from stepdistill.cli import run_cli
from stepdistill.data import write_idx
from stepdistill.denoiser import Denoiser

ENV = {**os.environ, "PYTHONPATH": os.getcwd()}


# Scripts run as a fresh interpreter: what only a process start shows (the quiet start), and one run per command
# family of that kind; the others run their entry point in this process (run_entry_point), without the 10-20 s of
# importing torch, diffusers and accelerate again.
FRESH_PROCESS = {"train/teacher.py"}


def run(*args, env=None):
    """Run a script command that must succeed; returns returncode, stdout and stderr like ``subprocess.run``."""
    proc = run_command(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_command(*args, env=None):
    """Run a script command, in this process unless it is in FRESH_PROCESS or needs its own ``env``."""
    script = args[0]
    if env is None and script.endswith(".py") and script not in FRESH_PROCESS:
        module = load_script(script)
        return run_entry_point(getattr(module, "cli", None) or (lambda: run_cli(module.main)), list(args))
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env or ENV, timeout=600)
    if proc.returncode == 0:
        assert_quiet_start(proc.stderr)
    return proc


def assert_quiet_start(stderr: str) -> None:
    """No line of bitsandbytes' failed Hub fetch of a 4-bit CPU kernel, or of the `kernels` package skipping its
    publisher check offline (peft imports bitsandbytes when installed, and the dev extra installs it): stepdistill's
    import silences both."""
    assert "gemm_4bit" not in stderr and "quantization-bitsandbytes" not in stderr, stderr[-3000:]


def test_teacher_script_smoke(tmp_path):
    out = tmp_path / "teacher"
    run(
        "train/teacher.py",
        "--data",
        "assets/fashion-mnist",
        "--out",
        str(out),
        "--iterations",
        "2",
        "--batch-size",
        "8",
        "--resolution",
        "8",
        "--channels",
        "8",
        "16",
    )
    den = Denoiser.from_pretrained(out)
    assert den.prediction == "v" and den.null_class == 10 and den.backbone.config.sample_size == 8
    assert (out / "samples.png").is_file() and json.load(open(out / "training.json"))["iterations"] == 2


def test_classifier_script_smoke(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 512), ("t10k", 64)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    run("train/classifier.py", "--data", str(tmp_path), "--out", str(tmp_path / "clf"), "--epochs", "1")
    stats = np.load(tmp_path / "clf" / "reference-test.npz")
    assert stats["mu"].shape == (128,) and int(stats["n"]) == 64


def test_evaluate_and_sample_scripts(tmp_path):
    out = tmp_path / "eval"
    proc = run(
        "eval/evaluate.py",
        "--model",
        "teacher=assets/fashion-teacher",
        "--steps",
        "1",
        "2",
        "--guidance",
        "1",
        "2",
        "--num-samples",
        "40",
        "--batch-size",
        "16",
        "--real",
        "assets/fashion-mnist",
        "--out",
        str(out),
    )
    result = json.load(open(out / "results.json"))
    assert [(r["steps"], r["guidance"]) for r in result["results"]] == [(1, 1.0), (2, 1.0), (1, 2.0), (2, 2.0)]
    assert all(r["n"] == 40 and r["fd_domain"] > 0 and 0 <= r["accuracy"] <= 1 for r in result["results"])
    assert result["real_floor"]["n"] == 40 and "| teacher | 2 | 2 |" in proc.stdout
    assert (out / "fd_domain_vs_steps.png").is_file() and len(os.listdir(out / "grids")) == 4
    run(
        "eval/sample.py",
        "--model",
        "assets/fashion-teacher",
        "--steps",
        "2",
        "--per-class",
        "2",
        "--out",
        str(tmp_path / "grid.png"),
    )
    assert (tmp_path / "grid.png").stat().st_size > 100


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "assets/nothing-here"], "does not exist"),
        (["--model", "assets/fashion-classifier", "--num-samples", "4"], "not a denoising UNet"),
        (["--model", "assets/fashion-teacher", "--num-samples", "1"], "at least 2"),
        (["--model", "assets/fashion-teacher", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "t=assets/fashion-teacher@0"], "Step counts must be >= 1"),
        (["--model", "assets/fashion-teacher", "--reference", "assets/fashion-mnist/LICENSE.npz"], "not found"),
        (["--model", "assets/fashion-teacher", "--reference", "CORRUPT_NPZ"], "not a reference-statistics .npz"),
        (["--images", "ONE_IMAGE"], "at least 2"),
        (["--model", "assets/fashion-teacher", "--out", "assets/fashion-mnist/LICENSE"], "is a file"),
    ],
)
def test_evaluate_reports_bad_input(tmp_path, args, message):
    """One ``error:`` line and exit status 2, no traceback (the command's own entry point, run in this process; the
    first case also as a script)."""
    from PIL import Image

    from eval.evaluate import cli

    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "one" / "0").mkdir(parents=True)
    Image.new("L", (16, 16)).save(tmp_path / "one" / "0" / "a.png")
    swap = {"CORRUPT_NPZ": str(tmp_path / "bad.npz"), "ONE_IMAGE": f"one={tmp_path / 'one'}"}
    args = [swap.get(a, a) for a in args] + ([] if "--out" in args else ["--out", str(tmp_path)])
    proc = run_entry_point(cli, ["eval/evaluate.py", *args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if message == "does not exist":
        command = [sys.executable, "eval/evaluate.py", *args]
        proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_progressive_script_on_two_processes(tmp_path):
    """DDP on two CPU processes (torchrun, what `accelerate launch` runs): trains, checkpoints and exports."""
    out = tmp_path / "pd"
    run(
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port: runs beside other tests' launches (pytest -n)
        "--nproc_per_node",
        "2",
        "train/progressive.py",
        "--teacher-steps",
        "8",
        "--target-steps",
        "4",
        "--steps-per-round",
        "2",
        "--batch-size",
        "4",
        "--data-limit",
        "64",
        "--output-dir",
        str(out),
        "--log-every",
        "1",
    )
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [entry["step"] for entry in logs] == [1, 2]  # one writer: the main process
    den = Denoiser.from_pretrained(out / "pipeline-4steps")
    assert den.null_class == 10 and (out / "checkpoints" / "step-00000002").is_dir()


@pytest.mark.parametrize("variant", ["lora", "phased"])
def test_consistency_script_exports(tmp_path, variant):
    """train/consistency.py on the bundled teacher: LCM-LoRA exports lora/ with its LCM scheduler; a phased student
    exports a trailing-DDIM pipeline at its segment tops."""
    out = tmp_path / "cd"
    extra = ["--preset", "fashion-lora"] if variant == "lora" else ["--preset", "fashion", "--phases", "2"]
    common = ["--max-steps", "2", "--batch-size", "4", "--data-limit", "64", "--sample-steps", "2"]
    run("train/consistency.py", *extra, *common, "--eval-every", "0", "--output-dir", str(out))
    scheduler = json.load(open(out / "pipeline" / "scheduler" / "scheduler_config.json"))
    saved = json.load(open(out / "pipeline" / "stepdistill.json"))
    if variant == "lora":
        assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
        lora_scheduler = json.load(open(out / "lora" / "scheduler" / "scheduler_config.json"))
        assert lora_scheduler["_class_name"] == scheduler["_class_name"] == "LCMScheduler"
        assert lora_scheduler["original_inference_steps"] == 50 and saved["timesteps"] == [999, 499]
    else:
        assert not (out / "lora").exists() and scheduler["_class_name"] == "DDIMScheduler"
        assert saved["timesteps"] == [999, 499]
    assert Denoiser.from_pretrained(out / "pipeline").null_class == 10


def test_dmd_script_exports_a_few_step_generator(tmp_path):
    """train/dmd.py on the bundled teacher: a 2-step DMD2 generator (GAN term on) exports a pipeline whose LCM
    scheduler steps at 999 and 499 with identity boundary scalings."""
    out = tmp_path / "dmd"
    common = ["--max-steps", "2", "--batch-size", "4", "--data-limit", "64", "--generator-steps", "2"]
    run("train/dmd.py", "--preset", "fashion", *common, "--output-dir", str(out))
    scheduler = json.load(open(out / "pipeline" / "scheduler" / "scheduler_config.json"))
    saved = json.load(open(out / "pipeline" / "stepdistill.json"))
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["timestep_scaling"] >= 1e6
    assert saved["timesteps"] == [999, 499] and Denoiser.from_pretrained(out / "pipeline").null_class == 10
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert "log/gan_critic" in logs[-1] and "loss/student" in logs[0]


def test_sid_script_trains_without_data_and_exports(tmp_path):
    """train/sid.py never reads --data (a folder that does not exist): it draws class labels only, trains a
    one-step generator at SiD's sigma_init and exports a pipeline whose DDIM scheduler steps once from there."""
    out = tmp_path / "sid"
    common = ["--max-steps", "2", "--batch-size", "4", "--log-every", "1", "--data", str(tmp_path / "missing")]
    run("train/sid.py", "--preset", "fashion-lsg", *common, "--output-dir", str(out))
    scheduler = json.load(open(out / "pipeline" / "scheduler" / "scheduler_config.json"))
    saved = json.load(open(out / "pipeline" / "stepdistill.json"))
    assert scheduler["_class_name"] == "DDIMScheduler" and saved["timesteps"] == [scheduler["steps_offset"]] == [755]
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert "loss/fake_score" in logs[0] and "loss/student" in logs[1]
    assert "long-short guidance" in open(out / "pipeline" / "README.md").read()


def test_training_on_unusable_data_is_one_error_line_and_leaves_no_run(tmp_path):
    """Non-square images for the square teacher: exit 2, one `error:` line, nothing written to the output folder."""
    from PIL import Image

    data = tmp_path / "data" / "3"
    data.mkdir(parents=True)
    for i in range(4):
        Image.new("L", (16, 32)).save(data / f"{i}.png")
    out = tmp_path / "run"
    proc = run_command("train/consistency.py", "--data", str(tmp_path / "data"), "--output-dir", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: training data")
    assert "Traceback" not in proc.stderr and "32x16" in proc.stderr and not out.exists()


def test_progressive_max_steps_stops_early_and_too_many_is_refused(tmp_path):
    common = ["train/progressive.py", "--teacher-steps", "8", "--target-steps", "2", "--steps-per-round", "4"]
    common += ["--batch-size", "4", "--data-limit", "64", "--log-every", "1"]
    run(*common, "--max-steps", "6", "--output-dir", str(tmp_path / "pd"))
    assert [json.loads(line)["step"] for line in open(tmp_path / "pd" / "log.jsonl")][-1] == 6
    proc = run_command(*common, "--max-steps", "9", "--output-dir", str(tmp_path / "pd9"))
    assert proc.returncode == 2 and "--max-steps 9 exceeds the progressive schedule (8 steps" in proc.stderr


def test_training_streams_an_image_folder_from_disk(tmp_path):
    from PIL import Image

    from stepdistill.data import load_fashion_mnist

    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    for i in range(32):
        (tmp_path / "data" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / "data" / str(labels[i]) / f"{i}.png")
    out = tmp_path / "run"
    run(
        "train/consistency.py", "--preset", "fashion", "--data", str(tmp_path / "data"), "--stream-data",
        "--num-workers", "1", "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out),
    )  # fmt: skip
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")][-1] == 2
    assert (out / "pipeline" / "model_index.json").is_file()


def test_text_teacher_script_smoke(tmp_path):
    """train/text_teacher.py writes a StableDiffusionPipeline folder the toolkit loads as a text-to-image teacher,
    with its evaluation prompts and their classes."""
    from stepdistill.text import load_text_to_image, read_prompt_labels

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(64) % 10)
    out = tmp_path / "text-teacher"
    common = ["--vae-iterations", "2", "--iterations", "2", "--batch-size", "8", "--channels", "8", "16"]
    run("train/text_teacher.py", "--data", str(tmp_path), "--out", str(out), *common)
    model = load_text_to_image(str(out))
    assert model.pipeline_class == "StableDiffusionPipeline" and model.image_size == 16
    assert read_prompt_labels(str(out / "prompts.csv")).tolist() == list(range(10))
    assert json.load(open(out / "training.json"))["iterations"] == 2 and (out / "samples.png").is_file()


def test_captioned_fashion_script_writes_an_imagefolder_of_the_teachers_captions(tmp_path):
    """train/captioned_fashion.py: the images unchanged (no flip or resize), a caption of each image's own class in one
    of the text teacher's templates, readable by the captioned-data reader of every train script."""
    from PIL import Image

    from stepdistill.data import load_fashion_mnist
    from stepdistill.text import read_captions
    from train.text_teacher import NAMES, TEMPLATES

    out = tmp_path / "captioned"
    run("train/captioned_fashion.py", "--data", "assets/fashion-mnist", "--out", str(out), "--limit", "40")
    images, labels = load_fashion_mnist("assets/fashion-mnist", "train")
    pairs = read_captions(str(out))
    assert len(pairs) == 40
    for i, (path, caption) in enumerate(pairs):
        assert np.array_equal(np.asarray(Image.open(path)), images[i])
        assert caption in [t.format(NAMES[labels[i]]) for t in TEMPLATES]
    assert len({caption for _, caption in pairs}) > len(set(labels[:40].tolist()))  # the templates vary
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    assert [r["label"] for r in rows] == labels[:40].tolist()
    # --resolution 16: resized as the bundled teachers saw their training images
    from stepdistill.data import from_uint8, to_uint8
    from train.captioned_fashion import write_captioned

    write_captioned("assets/fashion-mnist", str(tmp_path / "small"), limit=8, resolution=16)
    small = np.stack([np.asarray(Image.open(p)) for p, _ in read_captions(str(tmp_path / "small"))])
    assert np.array_equal(small, to_uint8(from_uint8(images[:8], 16))[:, 0].numpy())


def test_importing_stepdistill_keeps_bitsandbytes_kernel_fetch_quiet():
    """peft imports bitsandbytes whenever it is installed; on AVX512-BF16 CPUs bitsandbytes then tries to fetch a 4-bit
    kernel from the Hub and logs a failure (offline, or an unverified publisher): after `import stepdistill` it does
    not (a newcomer's first run shows no error-like line), online or with HF_HUB_OFFLINE=1 (where the `kernels` package
    warns that it skips its publisher check)."""
    pytest.importorskip("bitsandbytes")
    for offline in ("0", "1"):
        env = {**ENV, "HF_HUB_OFFLINE": offline}
        proc = subprocess.run(
            [sys.executable, "-c", "import stepdistill, peft"], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert_quiet_start(proc.stderr)


def test_lcm_lora_of_the_text_teacher_from_a_datasets_imagefolder_and_from_shards(tmp_path, monkeypatch):
    """The docs' data guide, as a user runs it: the captioned Fashion-MNIST written as a `datasets` imagefolder and as
    webdataset shards (train/captioned_fashion.py --shard-size); one train/consistency.py command on each
    (--dataset FOLDER, --data SHARDS) distils an LCM-LoRA of the bundled text-to-image teacher. The two sources hold
    the same samples in the same order, so the two LoRAs are byte-identical, and plain diffusers loads it with
    load_lora_weights and samples with it."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("webdataset")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # not the user's home
    common = ["--limit", "24", "--resolution", "16"]
    run("train/captioned_fashion.py", "--out", str(tmp_path / "folder"), *common)
    run("train/captioned_fashion.py", "--out", str(tmp_path / "shards"), "--shard-size", "10", *common)
    train = ["train/consistency.py", "--preset", "fashion-lora", "--teacher", "assets/fashion-text-teacher"]
    train += ["--max-steps", "2", "--batch-size", "4", "--lora-rank", "4", "--sample-steps", "2"]
    run(*train, "--dataset", str(tmp_path / "folder"), "--output-dir", str(tmp_path / "from-dataset"))
    run(*train, "--data", str(tmp_path / "shards"), "--output-dir", str(tmp_path / "from-shards"))
    weights = [
        tmp_path / run_dir / "lora" / "pytorch_lora_weights.safetensors" for run_dir in ("from-dataset", "from-shards")
    ]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    script = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained('assets/fashion-text-teacher')\n"
        "pipe.load_lora_weights(sys.argv[1])\n"
        "images = pipe('a photo of a sneaker', num_inference_steps=2, guidance_scale=1.0, output_type='pt',\n"
        "              generator=torch.Generator().manual_seed(0)).images\n"
        "assert images.shape[-1] == 16 and torch.isfinite(images).all()\n"
    )
    proc = subprocess.run(  # plain diffusers and peft (without stepdistill's import, bitsandbytes may log its fetch)
        [sys.executable, "-c", script, str(tmp_path / "from-dataset" / "lora")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
