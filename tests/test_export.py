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

# Runs with `python -I` (isolated: no cwd, no PYTHONPATH, no user site) and with stepdistill imports blocked,
# so only diffusers and torch are available, as for a user without this toolkit.
LOAD_SCRIPT = r"""
import sys, json, torch
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("stepdistill", "pipelines"):
            raise ImportError("stepdistill must not be needed to load an export")
sys.meta_path.insert(0, Block())
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
