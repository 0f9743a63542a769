"""Export: the pipeline folder loads in a fresh process with plain diffusers and reproduces our sampler."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_scheduler, tiny_unet

from stepdistill.denoiser import Condition, Denoiser
from stepdistill.export import export_pipeline, student_timesteps
from stepdistill.sampling import ddim_sample
from stepdistill.schedules import Schedule

BLOCK_STEPDISTILL = r"""
import sys, torch
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("stepdistill", "pipelines"):
            raise ImportError("stepdistill must not be needed to load an export")
sys.meta_path.insert(0, Block())
"""

# Runs with `python -I` (isolated: no cwd, no PYTHONPATH, no user site) and with stepdistill imports blocked,
# so only diffusers and torch are available, as for a user without this toolkit.
LOAD_SCRIPT = BLOCK_STEPDISTILL + r"""
from diffusers import DiffusionPipeline
folder, steps, w, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
g = torch.Generator().manual_seed(0)
images = pipe(class_labels=[0, 1, 2, 0], num_inference_steps=steps, guidance_scale=w, generator=g,
              output_type="pt").images
torch.save({"images": images, "class": type(pipe).__name__, "timesteps": pipe.scheduler.timesteps.tolist()}, out)
"""


def student(guidance_dim=None):
    den = Denoiser(tiny_unet(), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3)
    if guidance_dim:
        den = den.with_guidance_embedding(guidance_dim)
        with torch.no_grad():
            den.backbone.time_embedding.cond_proj.weight.normal_(0, 0.1)
    return den.frozen()


@pytest.mark.parametrize("steps,w,guidance_dim", [(4, 2.0, None), (2, 1.0, None), (4, 3.0, 16)])
def test_exported_pipeline_matches_toolkit_sampler_in_fresh_process(tmp_path, steps, w, guidance_dim):
    den = student(guidance_dim)
    folder = export_pipeline(den, tmp_path / "pipe", steps, guidance_scale=w, card="# test\n", config={"a": 1})
    out = tmp_path / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_SCRIPT, folder, str(steps), str(w), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    assert result["class"] == "ClassConditionalPipeline"
    assert result["timesteps"] == [int(1000 * k / steps) - 1 for k in range(steps, 0, -1)]
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    times = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    ours = ddim_sample(den, noise, Condition(labels=torch.tensor([0, 1, 2, 0])), guidance_scale=w, times=times)
    assert (result["images"] - ours).abs().max() < 1e-4
    assert json.load(open(tmp_path / "pipe" / "stepdistill.json"))["num_inference_steps"] == steps


def test_export_rejects_steps_off_the_integer_grid(tmp_path):
    den = student()
    with pytest.raises(ValueError, match="divides 1000"):
        student_timesteps(den, torch.arange(16, 0, -1, dtype=torch.float64) / 16)
    with pytest.raises(ValueError, match="divides 1000"):
        export_pipeline(den, tmp_path / "p", 16)
    assert not (tmp_path / "p").exists()


LORA_LOAD_SCRIPT = BLOCK_STEPDISTILL + r"""
from diffusers import UNet2DConditionModel
base, lora, out = sys.argv[1], sys.argv[2], sys.argv[3]
unet = UNet2DConditionModel.from_pretrained(base).eval()
x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
t, labels = torch.tensor([999, 499]), torch.tensor([0, 2])
call = lambda: unet(x, t, None, class_labels=labels).sample
plain = call()
unet.load_lora_adapter(lora, weight_name="pytorch_lora_weights.safetensors", prefix="unet", adapter_name="student")
adapted = call()
unet.fuse_lora()
fused = call()
unet.unfuse_lora()
unfused = call()
unet.disable_lora()
disabled = call()
torch.save({"plain": plain, "adapted": adapted, "fused": fused, "unfused": unfused, "disabled": disabled, "x": x}, out)
"""


def test_lora_export_loads_fuses_and_unfuses_in_fresh_process(tmp_path):
    from stepdistill.export import export_lora

    teacher = student().frozen()
    teacher.backbone.save_pretrained(tmp_path / "base")
    lora_student = teacher.trainable_copy().add_lora(rank=4)
    with torch.no_grad():
        for name, p in lora_student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    folder = export_lora(lora_student, tmp_path / "lora", card="# lora\n")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LORA_LOAD_SCRIPT, str(tmp_path / "base"), folder, str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = torch.load(tmp_path / "out.pt")
    t, labels = torch.tensor([999, 499]), torch.tensor([0, 2])
    with torch.no_grad():
        ours = lora_student.backbone(r["x"], t, None, class_labels=labels).sample
    assert (r["adapted"] - ours).abs().max() < 1e-4 and (r["adapted"] - r["plain"]).abs().max() > 1e-2
    assert (r["fused"] - r["adapted"]).abs().max() < 1e-4  # fusing bakes the adapter in
    assert (r["unfused"] - r["adapted"]).abs().max() < 1e-4  # unfusing restores the base weights, adapter still on
    assert (r["disabled"] - r["plain"]).abs().max() < 1e-4  # and without the adapter: exactly the base model


def test_lora_export_errors(tmp_path):
    from stepdistill.export import export_lora

    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_lora(student(), tmp_path / "none")
    with pytest.raises(ValueError, match="exceeds the width"):
        student().trainable_copy().add_lora(rank=64)
    with pytest.raises(ValueError, match="do not exist"):
        student().trainable_copy().add_lora(rank=2, target_modules=["to_q", "no_such_layer"])
    assert not (tmp_path / "none").exists()
