"""What a hostile but realistic user runs into (issue 35): no run loses another's data, a seed fixes every weight, no
code runs unasked, every bad input is one clear error."""

import json
import os
import pathlib
import warnings

import pytest
import torch
from conftest import reset_accelerate_state, run_entry_point
from test_trainer import make_trainer

from stepdistill.checkpoints import list_checkpoints, verify

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# ------------------------------------------------------------------------------------------ nothing is lost
def test_resume_from_another_run_never_touches_this_folders_run(tmp_path):
    """--resume B/checkpoints/... --output-dir A, where A holds a run of its own: refused before anything of A (its
    log, checkpoints, config) is changed. Into an empty folder it continues B's run there."""
    make_trainer(tmp_path / "a", 2)[0].train()
    reset_accelerate_state()
    make_trainer(tmp_path / "b", 2, checkpoint_every=1)[0].train()
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    other = list_checkpoints(str(tmp_path / "b"))[0]
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path / "a", 3, resume=other)
    with pytest.raises(ValueError, match="checkpoint of another run folder.*holds a run of its own"):
        trainer.train()
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path / "fork", 3, resume=other)
    trainer.train()
    assert trainer.step == 3


def test_an_output_folder_holding_a_model_is_refused_untouched(tiny_model_dir):
    """--output-dir pointing at a model folder (unet/ + scheduler/, a config.json that is not a run's): refused, the
    model still loads."""
    from stepdistill.denoiser import Denoiser

    (tiny_model_dir / "config.json").write_text('{"not": "a run"}')
    before = {p: p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()}
    for kwargs in ({}, {"overwrite": True}, {"resume": "latest"}):
        reset_accelerate_state()
        with pytest.raises(
            ValueError,
            match=r"holds files that no stepdistill run wrote \(scheduler, unet, config.json \(not a run.s\)\)",
        ):
            make_trainer(tiny_model_dir, 1, **kwargs)[0].train()
    assert {p: p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()} == before
    assert Denoiser.from_pretrained(tiny_model_dir).null_class == 3


def test_overwrite_leaves_nothing_of_the_previous_run(tmp_path):
    """A LoRA run's lora/ and exports are gone after --overwrite by another run."""
    make_trainer(tmp_path, 1)[0].train()
    for name in ("lora", "pipeline", "pipeline-4steps"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.safetensors").write_bytes(b"old")
    reset_accelerate_state()
    make_trainer(tmp_path, 1, overwrite=True)[0].train()
    assert not {"lora", "pipeline", "pipeline-4steps"} & set(os.listdir(tmp_path))
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step-00000001"]


def test_a_checkpoint_damaged_at_the_same_size_is_caught_by_its_content_hash(tmp_path):
    trainer, _ = make_trainer(tmp_path, 2, checkpoint_every=1)
    trainer.train()
    newest = list_checkpoints(str(tmp_path))[-1]
    weights = os.path.join(newest, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-5] ^= 0xFF  # one flipped byte in a weight: same size
    open(weights, "wb").write(bytes(data))
    assert "differs from its content hash" in verify(newest)
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path, 3, resume="latest")
    with pytest.warns(UserWarning, match="content hash.*resuming from .*step-00000001"):
        trainer.load_checkpoint("latest")
    assert trainer.step == 1


def test_a_full_disk_during_a_checkpoint_is_one_error_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    import errno

    trainer, _ = make_trainer(tmp_path, 1)
    trainer.train()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    trainer.step = 2
    with pytest.raises(OSError, match="No space left on device.*previous checkpoint stays the latest.*--resume"):
        trainer.save_checkpoint()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000001"]


def test_a_cut_off_log_line_does_not_stop_resume(tmp_path):
    trainer, _ = make_trainer(tmp_path, 2, checkpoint_every=1)
    trainer.train()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss/stu')  # the disk filled up mid-line
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path, 3, resume="latest")
    with pytest.warns(UserWarning, match=r"log.jsonl:3 is not valid JSON"):
        trainer.train()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")]
    assert steps == [1, 2, 3]


def test_resume_with_a_lower_learning_rate_is_allowed_and_said(tmp_path, capsys):
    """The stop at non-finite values advises a lower learning rate, then --resume latest: that resume is accepted, and
    the change is printed."""
    from stepdistill.strategies.progressive import ProgressiveConfig

    make_trainer(tmp_path, 2, checkpoint_every=1)[0].train()
    reset_accelerate_state()
    trainer, strategy = make_trainer(tmp_path, 3, resume="latest")
    strategy.config = ProgressiveConfig(teacher_steps=8, target_steps=2, steps_per_round=3, lr=5e-3)
    trainer.resolved_config["ProgressiveConfig"] = {**trainer.resolved_config["ProgressiveConfig"], "lr": 5e-3}
    trainer.train()
    assert "with changed settings: lr: 0.01 -> 0.005" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- a seed fixes weights
SEEDED_CASES = ["class-dmd-gan", "class-dmd-lora", "class-sid-lora", "class-consistency-lora"]


def test_the_same_seed_gives_the_same_export_whatever_ran_before(tmp_path):
    """Each strategy's GAN and LoRA variants, twice for 2 steps with torch's global RNG in different states before
    the script: byte-identical exports (the GAN head and the LoRA adapters are made after the script seeds)."""
    from golden_exports import build_teachers, fingerprint, run_case

    folders = build_teachers(str(tmp_path / "teachers"))
    for case in SEEDED_CASES:
        prints = []
        for i in range(2):
            out = str(tmp_path / f"{case}-{i}")
            run_case(case, folders, out, global_seed=1000 + i)
            prints.append(fingerprint(out, {out: "RUN"}))
        assert prints[0] == prints[1], case


# ----------------------------------------------------------------------------------------- no code unasked
def test_no_code_path_unpickles_or_runs_folder_code_without_an_opt_in():
    """Every torch.load call passes weights_only=True, and trust_remote_code=True is never a default nor a literal
    argument (the one use, on the toolkit's own freshly written pipeline file, is marked ``trusted:``)."""
    import ast

    problems = []
    for folder in ("stepdistill", "train", "eval", "pipelines"):
        for path in sorted(pathlib.Path(folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse(path.read_text())):
                where = f"{path}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call):
                    keywords = {k.arg: k.value for k in node.keywords}
                    func = node.func
                    if (
                        isinstance(func, ast.Attribute)
                        and func.attr == "load"
                        and getattr(func.value, "id", "") == "torch"
                    ):
                        flag = keywords.get("weights_only")
                        if not (isinstance(flag, ast.Constant) and flag.value is True):
                            problems.append(f"{where}: torch.load without weights_only=True")
                    flag = keywords.get("trust_remote_code")
                    if (
                        isinstance(flag, ast.Constant)
                        and flag.value is True
                        and "trusted:" not in lines[node.lineno - 1]
                    ):
                        problems.append(f"{where}: trust_remote_code=True")
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args.args[len(node.args.args) - len(node.args.defaults) :]
                    for arg, default in zip(args, node.args.defaults):
                        if arg.arg == "trust_remote_code" and getattr(default, "value", None) is True:
                            problems.append(f"{where}: trust_remote_code defaults to True")
    assert not problems, problems


def test_the_bench_command_runs_pipeline_code_only_when_asked(tmp_path):
    """eval/bench.py --pipelines: an export's pipeline file is refused without --trust-remote-code."""
    from eval.bench import inference_rows

    with pytest.raises(ValueError, match="carries its own pipeline code.*--trust-remote-code"):
        inference_rows(["benchmarks/students/cd@4"], "assets/fashion-teacher", 2, 1)


def test_a_damaged_text_cache_file_is_rebuilt_not_fatal(tmp_path):
    from stepdistill.text import _cached

    first = _cached(str(tmp_path), {"k": 1}, lambda: {"x": torch.ones(3)})
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(path.read_bytes()[:20])  # cut off
    with pytest.warns(UserWarning, match="unreadable.*encoding the data again"):
        again = _cached(str(tmp_path), {"k": 1}, lambda: {"x": torch.ones(3)})
    assert torch.equal(first["x"], again["x"]) and torch.equal(torch.load(path, weights_only=True)["x"], first["x"])


# ---------------------------------------------------------------------------------------- silently wrong
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: _trainer_config(lr_warmup_steps=-5), "lr_warmup_steps must be >= 0"),
        (lambda: _config("sid", lora_alpha=8.0), "--lora-alpha shape a LoRA adapter, but no LoRA rank is set"),
        (lambda: _config("consistency", lora_target_modules=["to_q"]), "--lora-target-modules shape a LoRA"),
        (lambda: _config("dmd", lora_rank=4, lora_alpha=0.0), "lora_alpha must be positive"),
        (lambda: _config("dmd", betas=[0.9]), "betas must be two numbers"),
    ],
)
def test_options_that_would_train_something_else_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _trainer_config(**options):
    from stepdistill.trainer import TrainerConfig

    return TrainerConfig(**options)


def _config(name, **options):
    from stepdistill.strategies import get_strategy

    return get_strategy(name).config_class(**options)


def test_a_string_for_a_list_option_in_a_json_config_is_one_clear_error(tmp_path):
    from stepdistill.config import parse_configs
    from stepdistill.strategies.dmd import DMDConfig

    path = tmp_path / "run.json"
    path.write_text('{"betas": "0.9"}')
    with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\), got \[0.9\]"):
        parse_configs([DMDConfig], ["--config", str(path)])


@pytest.mark.parametrize(
    "saved,message",
    [
        ({"num_inference_steps": 1, "guidance_scale": 1.0, "timesteps": [-500], "pass_timesteps": True}, "timesteps"),
        ({"num_inference_steps": 1, "guidance_scale": float("nan"), "timesteps": [999]}, "guidance_scale nan"),
        ({"num_inference_steps": 1, "guidance_scale": 1.0, "timesteps": [999], "sigmas": [2.0]}, "sigmas"),
    ],
)
def test_an_edited_stepdistill_json_is_refused_not_sampled(tmp_path, saved, message):
    from stepdistill.export import pipeline_call

    (tmp_path / "stepdistill.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=f"stepdistill.json: .*{message}.*Export the student again"):
        pipeline_call(tmp_path, 1)


# ------------------------------------------------------------------------------------------ bad input
def _captioned(tmp_path, rows: list[str], image_bytes: bytes | None = None):
    from PIL import Image

    folder = tmp_path / "captions"
    folder.mkdir()
    Image.new("L", (16, 16)).save(folder / "a.png")
    if image_bytes is not None:
        (folder / "b.png").write_bytes(image_bytes)
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.mark.parametrize(
    "rows,message",
    [
        (['{"file_name": "a.png", "text": "x"}', '{"file_name": "a.png", "te'], r"metadata.jsonl:2 is not valid JSON"),
        (['{"file_name": "a.png", "text": "x"}', '["a.png", "x"]'], r"metadata.jsonl:2 is list, not an object"),
        (['{"file_name": "../x.png", "text": "x"}'], r"row 1 names '../x.png', which is outside"),
    ],
)
def test_bad_metadata_lines_name_the_file_and_line(tmp_path, rows, message):
    from stepdistill.text import read_captions

    (tmp_path / "x.png").write_bytes(b"")  # what a path leaving the folder would read
    with pytest.raises(ValueError, match=message):
        read_captions(_captioned(tmp_path, rows))


def test_a_truncated_image_in_a_captioned_folder_names_the_file(tmp_path):
    from stepdistill.text import _load_rgb, read_captions

    good = (pathlib.Path("assets") / "fashion-text-teacher" / "samples.png").read_bytes()
    folder = _captioned(
        tmp_path, ['{"file_name": "a.png", "text": "x"}', '{"file_name": "b.png", "text": "y"}'], good[:200]
    )
    pairs = read_captions(folder)
    with pytest.raises(ValueError, match=r"Cannot read the image '.*b.png'.*replace it"):
        [_load_rgb(path, 8, 1) for path, _ in pairs]


def test_a_negative_shard_label_is_refused_before_training(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from stepdistill.streams import ImageFolderData

    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for key, label in (("a", "1"), ("b", "-1")):
            buffer = io.BytesIO()
            Image.new("L", (16, 16)).save(buffer, format="PNG")
            for name, data in ((f"{key}.png", buffer.getvalue()), (f"{key}.cls", label.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"Label 'b.png' in shard .* is '-1', not a class index"):
        ImageFolderData(str(tmp_path), 16, 1, 10)


def test_a_class_conditional_teacher_given_unlabelled_images_is_one_error(tmp_path):
    from PIL import Image

    from stepdistill.data import load_training_data

    for i in range(4):
        Image.new("L", (16, 16)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="no class labels, and the teacher is class-conditional.*class subfolder"):
        load_training_data(tmp_path, 16, num_classes=10)


def test_train_scripts_end_bad_input_in_one_error_line(tmp_path):
    """Through a train script's own entry point: one `error:` line, exit status 2, no traceback."""
    from stepdistill.cli import run_cli
    from train.consistency import main

    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("L", (16, 16)).save(flat / f"{i}.png")
    for argv, message in [
        (["--data", str(flat)], "no class labels"),
        (["--lr-warmup-steps=-5"], "lr_warmup_steps must be >= 0"),
        (["--lora-alpha", "8"], "no LoRA rank is set"),
        (["--teacher", "asset/fashion-teacher"], "did you mean 'assets/fashion-teacher'"),
    ]:
        out = ["--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2"]
        proc = run_entry_point(lambda argv=argv: run_cli(lambda: main([*argv, *out])), ["train/consistency.py"])
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "run").exists()


def test_a_mistyped_local_teacher_makes_no_network_request(monkeypatch):
    """asset/fashion-teacher (for assets/...) is refused with the folder it probably means, before the Hub is asked."""
    import huggingface_hub

    from stepdistill.config import ModelConfig
    from stepdistill.recipes import load_setup

    def no_network(*args, **kwargs):
        raise AssertionError("a Hub request was made")

    for name in ("hf_hub_download", "model_info", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    monkeypatch.setattr("huggingface_hub.file_download.hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError, match="did you mean 'assets/fashion-teacher'"):
        load_setup(ModelConfig(teacher="asset/fashion-teacher"))


def test_a_pipeline_folder_without_its_unet_is_one_clear_error(tmp_path):
    import shutil

    from stepdistill.evaluation import load_model

    shutil.copytree("benchmarks/students/cd", tmp_path / "cd")
    shutil.rmtree(tmp_path / "cd" / "unet")
    with pytest.raises(ValueError, match=r"lists unet in model_index.json but has no unet/ folder"):
        load_model(str(tmp_path / "cd"), "cpu", trust_remote_code=True)


def test_a_damaged_log_line_is_dropped_naming_its_file_and_line(tmp_path):
    """truncate_log names the file and line of every line it drops."""
    from stepdistill.checkpoints import truncate_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        truncate_log(str(path), 2)
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2]
    assert any(f"{path}:2" in str(w.message) for w in caught)


def test_sigkill_and_resume_of_a_gan_and_a_lora_run_equal_the_uninterrupted_runs(tmp_path):
    """A DMD2 run with the GAN term and a SiD LoRA run, each SIGKILLed once a checkpoint exists and resumed with
    --resume latest, export the same weights, byte for byte, as the same runs uninterrupted."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import tiny_scheduler, tiny_unet

    teacher = tmp_path / "teacher"
    tiny_unet(num_classes=10).save_pretrained(teacher / "unet")
    tiny_scheduler().save_pretrained(teacher / "scheduler")
    cases = {
        "gan": ["train/dmd.py", "--preset", "fashion", "--generator-steps", "2"],
        "lora": ["train/sid.py", "--preset", "fashion", "--lora-rank", "4", "--lr", "1e-3"],
    }
    common = ["--teacher", str(teacher), "--data", "assets/fashion-mnist", "--data-limit", "32", "--max-steps", "6"]
    common += ["--batch-size", "4", "--checkpoint-every", "1", "--keep-checkpoints", "8"]
    common += ["--eval-every", "0", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def start(case, out, *extra):
        command = [sys.executable, *cases[case], *common, "--output-dir", str(out), *extra]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    runs = {case: start(case, tmp_path / f"{case}-whole") for case in cases}
    killed = {case: start(case, tmp_path / f"{case}-killed") for case in cases}
    deadline, waiting = time.time() + 300, dict(killed)
    while waiting:  # SIGKILL each run once step 3's checkpoint is in place (step 4 may be mid-save); poll all at once
        for case, proc in list(waiting.items()):
            if (tmp_path / f"{case}-killed" / "checkpoints" / "step-00000003").is_dir():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                del waiting[case]
            else:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    resumed = {case: start(case, tmp_path / f"{case}-killed", "--resume", "latest") for case in cases}
    for proc in (*runs.values(), *resumed.values()):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    for case in cases:
        whole, again = tmp_path / f"{case}-whole", tmp_path / f"{case}-killed"
        weights = sorted(p.relative_to(whole) for p in whole.rglob("*.safetensors") if "checkpoints" not in p.parts)
        assert any("lora" in str(p) for p in weights) == (case == "lora") and weights
        for path in weights:
            assert (whole / path).read_bytes() == (again / path).read_bytes(), (case, path)


def test_a_checkpoint_from_before_an_option_was_added_still_resumes(tmp_path):
    """Options added since a checkpoint was written (the optimizer's betas of PD, the adversarial options) match when
    left at the value that reproduces the old run; set otherwise, they are refused like any other change."""
    make_trainer(tmp_path, 2, checkpoint_every=1)[0].train()
    for folder in list_checkpoints(str(tmp_path)):
        path = os.path.join(folder, "config.json")
        saved = json.load(open(path))
        del saved["ProgressiveConfig"]["betas"]
        open(path, "w").write(json.dumps(saved))
        from stepdistill.checkpoints import write_manifest

        os.remove(os.path.join(folder, "manifest.json"))
        write_manifest(folder, "progressive")
    reset_accelerate_state()
    trainer, _ = make_trainer(tmp_path, 3, resume="latest")
    trainer.train()
    assert trainer.step == 3
    reset_accelerate_state()
    old = os.path.join(str(tmp_path), "checkpoints", "step-00000002")  # still without betas
    trainer, strategy = make_trainer(tmp_path, 4, resume=old)
    trainer.resolved_config["ProgressiveConfig"]["betas"] = [0.5, 0.9]
    with pytest.raises(ValueError, match=r"betas: None in the checkpoint, \[0.5, 0.9\] now"):
        trainer.train()
