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
LOAD_SCRIPT = (
    BLOCK_STEPDISTILL
    + r"""
from diffusers import DiffusionPipeline
folder, steps, w, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
g = torch.Generator().manual_seed(0)
images = pipe(class_labels=[0, 1, 2, 0], num_inference_steps=steps, guidance_scale=w, generator=g,
              output_type="pt").images
torch.save({"images": images, "class": type(pipe).__name__, "timesteps": pipe.scheduler.timesteps.tolist()}, out)
"""
)


# One interpreter serves every export-loading script of the session: started with `python -I` and the block above,
# it imports torch and diffusers once (the slow part, 10-20 s here) and runs each script in a fresh namespace with
# its own argv and cwd. It never imports stepdistill, and the remote-code modules a script loads (diffusers'
# `diffusers_modules.*`) are dropped after it, so each load reads its export's own files, as a new process would.
WORKER = (
    BLOCK_STEPDISTILL
    + r"""
import json, os, traceback
import diffusers
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what scripts and libraries print goes to the log, not into the replies
meta_path = list(sys.meta_path)
for line in sys.stdin:
    request = json.loads(line)
    os.chdir(request["cwd"])
    sys.argv = ["-c", *request["args"]]
    try:
        exec(compile(request["script"], "<isolated script>", "exec"), {"__name__": "__main__"})
        answer = {"ok": True}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    for name in [m for m in sys.modules if m.split(".")[0] in ("diffusers_modules", "transformers_modules")]:
        del sys.modules[name]
    sys.meta_path[:] = meta_path
    reply.write(json.dumps(answer) + "\n")
    reply.flush()
"""
)


class _Worker:
    """The shared ``python -I`` interpreter (started on first use, restarted if a script kills it)."""

    proc = None
    log = None

    @classmethod
    def run(cls, script: str, args, cwd, timeout: float) -> None:
        import atexit
        import json
        import select
        import tempfile

        if cls.proc is None or cls.proc.poll() is not None:
            cls.log = tempfile.TemporaryFile(mode="w+")
            cls.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=cls.log,
                text=True,
            )
            atexit.register(cls.proc.kill)
        cls.log.seek(0, 2)
        start = cls.log.tell()
        cls.proc.stdin.write(json.dumps({"script": script, "args": list(args), "cwd": str(cwd)}) + "\n")
        cls.proc.stdin.flush()
        ready, _, _ = select.select([cls.proc.stdout], [], [], timeout)
        line = cls.proc.stdout.readline() if ready else ""
        if not line:  # timed out or died: start a new one next time
            cls.proc.kill()
            cls.proc.wait()
        cls.log.seek(start)
        printed = cls.log.read()[-3000:]
        assert line, f"the isolated interpreter {'timed out' if not ready else 'died'}:\n{printed}"
        answer = json.loads(line)
        assert answer["ok"], answer["error"][-3000:] + printed


def run_isolated(script: str, *args, cwd, timeout: float = 300) -> None:
    """Run ``script`` (with ``sys.argv[1:]`` = ``args``, in ``cwd``) in an interpreter started with ``python -I``
    (no cwd, PYTHONPATH or user site on the path) that cannot import stepdistill, and require success."""
    _Worker.run(script, [str(a) for a in args], cwd, timeout)


def assert_export_reproduces_sampler(strategy, tmp_path, steps: int) -> dict:
    """Export ``strategy``'s student with its scheduler spec, load it with plain diffusers in an interpreter without
    stepdistill, and require the pipeline's images to equal ``strategy.sample`` from the same noise to 1e-4 (a tiny
    class-conditional UNet teacher). Returns what the loading script saved (its timesteps among them)."""
    from stepdistill.export import export_student, pipeline_call

    folder = tmp_path / "export"
    interval = strategy.export_spec(0).interval_input  # MeanFlow: the pipeline's guidance input is 1 / steps
    spec = strategy.scheduler_spec()
    export_student(strategy.student.frozen(), folder, steps, 1.0, "# t\n", {}, spec, interval_input=interval)
    w = pipeline_call(folder / "pipeline", steps)["guidance_scale"]  # as the evaluation command calls it
    out = tmp_path / "out.pt"
    run_isolated(LOAD_SCRIPT, str(folder / "pipeline"), str(steps), str(w), str(out), cwd=tmp_path)
    result = torch.load(out)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 1, 8, 8, generator=g)
    ours = strategy.sample(noise, Condition(labels=torch.tensor([0, 1, 2, 0])), generator=g)
    assert (result["images"] - ours).abs().max() < 1e-4
    return result


def test_the_isolated_interpreter_cannot_import_stepdistill(tmp_path):
    """What the export tests below rely on: their loading scripts run where stepdistill cannot be imported, and a
    failing script fails the test with its error."""
    with pytest.raises(AssertionError, match="stepdistill must not be needed"):
        run_isolated("import stepdistill", cwd=tmp_path)
    with pytest.raises(AssertionError, match="stepdistill must not be needed"):
        run_isolated("import pipelines.pipeline_class_conditional", cwd=tmp_path)
    run_isolated(
        "import diffusers, sys; assert 'stepdistill' not in sys.modules and sys.argv[1:] == ['a']", "a", cwd=tmp_path
    )


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
    run_isolated(LOAD_SCRIPT, folder, str(steps), str(w), str(out), cwd=tmp_path)
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


LORA_LOAD_SCRIPT = (
    BLOCK_STEPDISTILL
    + r"""
import json
import diffusers
from diffusers import DiffusionPipeline
base, lora, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
pipe = DiffusionPipeline.from_pretrained(base, trust_remote_code=True)  # the teacher's pipeline
pipe.set_progress_bar_config(disable=True)
scheduler_class = json.load(open(f"{lora}/scheduler/scheduler_config.json"))["_class_name"]  # as the card says
pipe.scheduler = getattr(diffusers, scheduler_class).from_pretrained(lora, subfolder="scheduler")
def sample():
    g = torch.Generator().manual_seed(0)
    return pipe(class_labels=[0, 1, 2, 0], num_inference_steps=steps, generator=g, output_type="pt").images
results = {"plain": sample()}
pipe.load_lora_weights(lora)
results["adapted"] = sample()
pipe.fuse_lora()
results["fused"] = sample()
pipe.unfuse_lora()
results["unfused"] = sample()
pipe.unload_lora_weights()
results["unloaded"] = sample()
results["timesteps"] = pipe.scheduler.timesteps.tolist()
torch.save(results, out)
"""
)


def test_lora_loads_into_teacher_pipeline_fuses_and_unfuses_in_fresh_process(tmp_path):
    """LCM-LoRA export + plain diffusers: load_lora_weights into the teacher's pipeline, the exported LCM scheduler,
    fuse/unfuse/unload; images equal the toolkit's multistep consistency sampler with and without the adapter."""
    from stepdistill.export import configure_scheduler, export_lora
    from stepdistill.sampling import consistency_sample
    from stepdistill.schedules import lcm_times

    steps, solver_steps = 2, 10
    teacher = student().frozen()
    base = export_pipeline(teacher, tmp_path / "teacher", 4)
    lora_student = teacher.trainable_copy().add_lora(rank=4)
    with torch.no_grad():
        for name, p in lora_student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    times = lcm_times(teacher.schedule, steps, solver_steps)
    scheduler = configure_scheduler(
        lora_student, steps, "LCMScheduler", times, {"original_inference_steps": solver_steps}
    )
    folder = export_lora(lora_student, tmp_path / "lora", card="# lora\n", scheduler=scheduler)
    out = tmp_path / "out.pt"
    run_isolated(LORA_LOAD_SCRIPT, base, folder, str(steps), str(out), cwd=tmp_path)
    r = torch.load(out)
    assert r["timesteps"] == [999, 499]

    def ours(net):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(4, 1, 8, 8, generator=g)
        cond = Condition(labels=torch.tensor([0, 1, 2, 0]))
        return consistency_sample(net, noise, cond, steps, solver_steps=solver_steps, generator=g)

    with torch.no_grad():
        adapted, plain = ours(lora_student), ours(teacher)
    assert (r["adapted"] - adapted).abs().max() < 1e-4 and (adapted - plain).abs().max() > 1e-2
    assert (r["plain"] - plain).abs().max() < 1e-4
    assert (r["fused"] - adapted).abs().max() < 1e-4  # fusing bakes the adapter in
    assert (r["unfused"] - adapted).abs().max() < 1e-4  # unfusing restores the base weights, adapter still on
    assert (r["unloaded"] - plain).abs().max() < 1e-4  # unloading gives back exactly the teacher


def test_phased_consistency_export_matches_toolkit_sampler(tmp_path):
    """A 4-phase student exports as trailing DDIM at its segment tops; plain diffusers reproduces our sampler."""
    from stepdistill.sampling import consistency_sample
    from stepdistill.schedules import timestep_grid

    den = student()
    folder = export_pipeline(den, tmp_path / "pipe", 4, times=timestep_grid(den.schedule, 4))
    out = tmp_path / "out.pt"
    run_isolated(LOAD_SCRIPT, folder, "4", "1.0", str(out), cwd=tmp_path)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = Condition(labels=torch.tensor([0, 1, 2, 0]))
    with torch.no_grad():
        ours = consistency_sample(den, noise, cond, 4, phases=4)
    assert (torch.load(out)["images"] - ours).abs().max() < 1e-4


def test_lora_export_errors(tmp_path):
    from stepdistill.export import export_lora

    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_lora(student(), tmp_path / "none")
    with pytest.raises(ValueError, match="exceeds the width"):
        student().trainable_copy().add_lora(rank=64)
    with pytest.raises(ValueError, match="do not exist"):
        student().trainable_copy().add_lora(rank=2, target_modules=["to_q", "no_such_layer"])
    assert not (tmp_path / "none").exists()


def test_lora_card_tells_how_to_call_each_scheduler():
    """The LoRA card names the call its saved scheduler needs: SD3's stochastic flow scheduler takes `sigmas=` and
    re-noises with torch's global generator (so the card says to seed it), a one-step generator below the top time
    takes `timesteps=`, and an LCM student plain `num_inference_steps`, with no seeding advice."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LCMScheduler

    from stepdistill.export import lora_card

    flow = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    flow.set_timesteps(sigmas=[1.0, 0.5])
    card = lora_card("LCM", "tiny-sd3", 4, 2, 1.0, flow)
    assert "`sigmas=[1.0, 0.5]`" in card and "FlowMatchEulerDiscreteScheduler.from_pretrained" in card
    assert "torch.manual_seed" in card
    lcm = LCMScheduler()
    lcm.set_timesteps(4)
    card = lora_card("LCM", "tiny-sd15", 4, 4, 1.0, lcm)
    assert "`num_inference_steps=4`" in card and "manual_seed" not in card
    card = lora_card("SiD", "tiny-sd15", 4, 1, 1.0, lcm, pass_timesteps=True)
    assert f"`timesteps={lcm.timesteps.tolist()}`" in card
