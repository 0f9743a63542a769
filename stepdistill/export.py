"""Export a student as a diffusers pipeline folder that loads with plain diffusers.

The folder holds ``unet/``, ``scheduler/`` (configured so that ``set_timesteps(N)`` gives exactly the
student's timesteps), ``model_index.json``, the self-contained pipeline file from ``pipelines/`` (diffusers
loads it from the folder, so stepdistill need not be installed), the resolved training config and a
model card.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import torch

from .denoiser import Denoiser
from .io import atomic_dir

PIPELINES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines")
CLASS_CONDITIONAL = ("pipeline_class_conditional", "ClassConditionalPipeline")
# LCMScheduler's c_skip = 0.25 / ((timestep * scaling)^2 + 0.25): below 1e-13 from timestep 1 on with this scaling, so
# each step takes the network's x0 as it is (the few-step generators of DMD and SiD)
IDENTITY_TIMESTEP_SCALING = 1e7


@dataclass
class ExportSpec:
    """What a strategy exports after training (``Strategy.export_spec``); ``export_student`` writes it.

    Attributes:
        num_steps: the student's sampling steps.
        scheduler: ``configure_scheduler``'s keyword arguments (``scheduler_class``, ``times``, ``scheduler_options``)
            that reproduce the strategy's sampler.
        method: the model card's method line (paper and arXiv id).
        details: the model card's sentence on how it was trained.
        guidance_scale: the guidance the student samples with (1 when the teacher's guidance is baked in).
        lora_method: the LoRA card's name of the method (LCM, DMD2, SiD).
        folder: the pipeline folder's name in the run folder.
        interval_input: the network's guidance embedding takes the length of each jump, ``1 / num_inference_steps``
            (MeanFlow), not a guidance scale; recorded so that ``pipeline_call`` passes it for any step count.
    """

    num_steps: int
    scheduler: dict = field(default_factory=dict)
    method: str = ""
    details: str = ""
    guidance_scale: float = 1.0
    lora_method: str = ""
    folder: str = "pipeline"
    interval_input: bool = False


def student_timesteps(denoiser: Denoiser, times: torch.Tensor) -> list[int]:
    """The diffusers integer timesteps of sampling times ``times``; raises if one is not on the training grid."""
    raw = denoiser.schedule.model_timestep(times.double())
    rounded = raw.round()
    if (raw - rounded).abs().max() > 1e-6:
        raise ValueError(
            f"Sampling times {times.tolist()} do not fall on the schedule's integer timesteps "
            f"({raw.tolist()}); choose a step count that divides {denoiser.schedule.num_train_timesteps}."
        )
    return [int(v) for v in rounded]


def exportable_steps(denoiser: Denoiser, num_steps: int) -> bool:
    """Whether the uniform grid ``t = k / num_steps`` falls on the schedule's integer timesteps (any grid does for a
    flow, whose pipelines take the times as ``sigmas``)."""
    if denoiser.schedule.kind == "flow":
        return True
    try:
        student_timesteps(denoiser, torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps)
    except ValueError:
        return False
    return denoiser.schedule.kind == "discrete"


def configure_scheduler(
    denoiser: Denoiser,
    num_steps: int,
    scheduler_class: str = "DDIMScheduler",
    times: torch.Tensor | None = None,
    scheduler_options: dict | None = None,
):
    """A diffusers scheduler for ``denoiser`` whose ``set_timesteps(num_steps)`` gives exactly the student's times.

    Args:
        denoiser: the student (a discrete, diffusers-style schedule).
        num_steps: the student's step count.
        scheduler_class: diffusers scheduler class name (``DDIMScheduler`` or ``LCMScheduler``).
        times: the student's sampling times (default: the uniform grid ``t = k / num_steps``).
        scheduler_options: extra scheduler config (e.g. LCM's ``original_inference_steps``).

    Raises:
        ValueError: for a continuous schedule, times off the integer grid, or a scheduler that gives other timesteps.
    """
    import diffusers

    schedule = denoiser.schedule
    if schedule.kind == "flow":
        return _flow_scheduler(denoiser, num_steps, scheduler_class, times)
    if schedule.kind != "discrete":
        raise ValueError("Pipeline export supports discrete-schedule (diffusers DDPM-family) and flow students only.")
    if times is None:
        times = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps
    timesteps = student_timesteps(denoiser, times)
    prediction = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[denoiser.prediction]
    source = {k: v for k, v in (schedule.scheduler_config or {}).items() if not k.startswith("_")}
    if not source:  # no diffusers config to copy: give betas that rebuild alphas_cumprod
        source = {"num_train_timesteps": schedule.num_train_timesteps, "trained_betas": _betas(schedule).tolist()}
    scheduler = getattr(diffusers, scheduler_class).from_config(
        {
            **source,
            "prediction_type": prediction,
            "timestep_spacing": "trailing",
            "clip_sample": False,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            **(scheduler_options or {}),
        }
    )
    scheduler.set_timesteps(num_steps)
    if scheduler.timesteps.tolist() != timesteps:
        raise ValueError(
            f"{scheduler_class} gives timesteps {scheduler.timesteps.tolist()} for {num_steps} steps, "
            f"but the student was trained for {timesteps}."
        )
    return scheduler


def _flow_scheduler(denoiser: Denoiser, num_steps: int, scheduler_class: str, times):
    """A rectified-flow student's ``FlowMatchEulerDiscreteScheduler`` (no shift) at its times, given to the pipeline
    as ``sigmas=``: deterministic Euler steps for a ``DDIMScheduler`` spec (PD and phased consistency; for a flow
    these are DDIM's steps), or for an ``LCMScheduler`` spec (consistency students, DMD's and SiD's few-step
    generators) ``stochastic_sampling``, which takes the network's x0 at each time and re-noises it to the next with
    fresh noise, as the toolkit's sampler does. LCM's scheduler options do not apply: a flow's consistency function
    has no boundary scalings (``schedules.boundary_scalings``) and the times are given as they are."""
    import diffusers

    stochastic = scheduler_class == "LCMScheduler"
    if times is None:
        times = torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps
    source = {k: v for k, v in (denoiser.schedule.scheduler_config or {}).items() if not k.startswith("_")}
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        {
            **source,
            "num_train_timesteps": denoiser.schedule.num_train_timesteps,
            "shift": 1.0,
            "use_dynamic_shifting": False,
            "stochastic_sampling": stochastic,
        }
    )
    scheduler.set_timesteps(sigmas=times.tolist())
    if (scheduler.sigmas[:-1].double() - times.double()).abs().max() > 1e-6:
        raise ValueError(f"FlowMatchEulerDiscreteScheduler gives sigmas {scheduler.sigmas.tolist()}, not {times}.")
    return scheduler


def export_pipeline(
    denoiser: Denoiser,
    folder: str | os.PathLike,
    num_steps: int,
    guidance_scale: float = 1.0,
    card: str = "",
    config: dict | None = None,
    scheduler_class: str = "DDIMScheduler",
    times: torch.Tensor | None = None,
    scheduler_options: dict | None = None,
    source: str | None = None,
    interval_input: bool = False,
) -> str:
    """Write ``denoiser`` as a few-step pipeline folder (atomically): the toolkit's class-conditional pipeline, or
    for a text-to-image teacher (``source``, an SD 1.x/2.x, SDXL or SD3 pipeline) the teacher's own pipeline class
    with the student's network and scheduler, which plain diffusers loads without custom code.

    Args:
        denoiser: the student (its backbone is saved in float32).
        folder: output folder (replaced as a whole).
        num_steps: the student's step count; the scheduler is set to trailing spacing so that
            ``set_timesteps(num_steps)`` reproduces the uniform grid ``t = k / num_steps``.
        guidance_scale: the guidance scale the student is meant to be sampled with (recorded).
        card: model card markdown (README.md).
        config: resolved training config, saved as ``training_config.json``.
        scheduler_class: diffusers scheduler to configure (``DDIMScheduler`` or ``LCMScheduler``).
        times: the student's sampling times (default: the uniform grid ``t = k / num_steps``); the scheduler
            must reproduce their timesteps, or export fails.
        scheduler_options: extra scheduler config (e.g. LCM's ``original_inference_steps``).
        source: the teacher's folder or Hub id; a text-to-image pipeline there is exported in its own class, its
            VAE, tokenizers and text encoders copied unchanged.
        interval_input: ``ExportSpec.interval_input``.

    Returns:
        the folder path.
    """
    from .text import is_text_to_image

    scheduler = configure_scheduler(denoiser, num_steps, scheduler_class, times, scheduler_options)
    text = source is not None and is_text_to_image(source)
    flow = denoiser.schedule.kind == "flow"
    if flow and not text:
        raise ValueError("Flow students are exported in their teacher's pipeline class (SD3): pass its source.")
    with atomic_dir(folder) as tmp:
        saved = {"num_inference_steps": num_steps, "guidance_scale": guidance_scale}
        saved.update(timesteps=scheduler.timesteps.tolist(), **({"interval_input": True} if interval_input else {}))
        if flow:  # SD3's pipeline takes the student's times as `sigmas=[...]`
            saved["sigmas"] = [float(v) for v in scheduler.sigmas[:-1]]
            card += f"\nCall the pipeline with `sigmas={saved['sigmas']}` (not `num_inference_steps`).\n"
            card += _global_rng_note(scheduler, "\n")
        if text:
            card += _write_text_pipeline(tmp, denoiser, scheduler, source, saved)
        else:
            _write_class_conditional(tmp, denoiser.backbone, scheduler)
        _write_json(os.path.join(tmp, "stepdistill.json"), saved)
        if config is not None:
            _write_json(os.path.join(tmp, "training_config.json"), config)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
    return os.fspath(folder)


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _write_text_pipeline(folder: str, denoiser: Denoiser, scheduler, source: str, saved: dict) -> str:
    """The teacher's own pipeline class around the student (``DiffusionPipeline.from_pretrained`` loads it without
    custom code); records in ``saved`` how it must be called and returns the card's sentences saying so."""
    import diffusers

    from .text import absent_components

    card = ""
    scheduler, pass_timesteps = text_pipeline_scheduler(scheduler)
    if pass_timesteps:
        saved["pass_timesteps"] = True
        card += f"\nCall the pipeline with `timesteps={saved['timesteps']}` (not `num_inference_steps`).\n"
    component = "transformer" if denoiser.schedule.kind == "flow" else "unet"
    # components the teacher leaves out (SD3 without T5: [null, null] in model_index.json) stay out
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        source, **absent_components(source), **{component: denoiser.backbone}, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    if denoiser.guidance_embedding_dim:  # diffusers' SD pipelines embed guidance_scale - 1 (LCM's w)
        w = saved["guidance_scale"]
        saved["pipeline_guidance_scale"] = w + 1
        card += (
            f"\nThis student takes the guidance scale as an input; diffusers' {type(pipe).__name__} embeds "
            f"`guidance_scale - 1`, so call it with `guidance_scale={w + 1:g}` for w = {w:g}.\n"
        )
    return card


def text_pipeline_scheduler(scheduler):
    """The scheduler a text-to-image pipeline of diffusers (or a LoRA loaded into one) is given, and whether the
    pipeline must then be called with ``timesteps=[...]``: diffusers' SD pipelines reset a scheduler's
    ``steps_offset`` to 1, which would move a one-step generator below the top time (SiD) off its timestep, so that
    one becomes an LCMScheduler with identity boundary scalings at its timesteps, which returns the student's x0
    from there; any other scheduler is returned as it is."""
    import diffusers

    if scheduler.config.get("steps_offset", 0) <= 1:
        return scheduler, False
    timesteps = scheduler.timesteps.tolist()
    scheduler = diffusers.LCMScheduler.from_config(
        {**scheduler.config, "timestep_scaling": IDENTITY_TIMESTEP_SCALING, "steps_offset": 0}
    )
    scheduler.set_timesteps(timesteps=timesteps)
    return scheduler, True


def pipeline_call(folder: str | os.PathLike, num_steps: int, guidance_scale: float = 1.0) -> dict:
    """The step and guidance arguments under which an exported pipeline reproduces its student (read from the
    folder's ``stepdistill.json``; ``num_inference_steps`` and ``guidance_scale`` as given for any other folder).

    A flow student (SD3) is called with its ``sigmas``, a one-step generator below the top time with its
    ``timesteps``; a guidance-embedding student of diffusers' SD pipelines with ``guidance_scale = w + 1`` (they embed
    ``guidance_scale - 1``), ``guidance_scale`` being the standard-form ``w`` here.

    Raises:
        ValueError: for a step count other than the one a student with its own times was exported for.
    """
    path = os.path.join(folder, "stepdistill.json")
    saved = {}
    if os.path.isfile(path):
        with open(path) as f:
            try:
                saved = json.load(f)
            except ValueError as err:
                raise ValueError(f"{path} is not valid JSON ({err}): export the student again.") from None
        _check_saved_call(saved, path)
    call = {"num_inference_steps": num_steps, "guidance_scale": guidance_scale}
    if saved.get("interval_input"):  # the embedding takes each jump's length, 1 / K; the guidance is baked in
        if guidance_scale != 1:
            raise ValueError(
                f"{os.fspath(folder)!r} has its guidance baked in and takes the jump's length as its guidance input: "
                "evaluate it at guidance 1."
            )
        guidance_scale = call["guidance_scale"] = 1.0 / num_steps
    if "pipeline_guidance_scale" in saved:
        call["guidance_scale"] = guidance_scale + saved["pipeline_guidance_scale"] - saved["guidance_scale"]
    times = "sigmas" if "sigmas" in saved else "timesteps" if saved.get("pass_timesteps") else None
    if times is None:
        return call
    if num_steps != saved["num_inference_steps"]:
        raise ValueError(
            f"{os.fspath(folder)!r} samples at its own {times} for {saved['num_inference_steps']} steps "
            f"(stepdistill.json), not {num_steps}: evaluate it at @{saved['num_inference_steps']}."
        )
    del call["num_inference_steps"]
    return {**call, times: saved[times]}


def _check_saved_call(saved, path: str) -> None:
    """Refuse a ``stepdistill.json`` whose sampling arguments no export writes (a hand edit, a damaged file): the
    pipeline would be sampled and scored at nonsense times or guidance instead of failing."""
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    problems = []
    if not isinstance(saved, dict):
        problems.append("it is not a JSON object")
        saved = {}
    steps = saved.get("num_inference_steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        problems.append(f"num_inference_steps {steps!r} is not a positive integer")
    if not isinstance(saved.get("interval_input", False), bool):
        problems.append(f"interval_input {saved['interval_input']!r} is not true or false")
    for key in ("guidance_scale", "pipeline_guidance_scale"):
        if key in saved and not number(saved[key]):
            problems.append(f"{key} {saved[key]!r} is not a finite number")
    timesteps = saved.get("timesteps", [])  # integers, or a flow scheduler's float timesteps
    if not isinstance(timesteps, list) or not all(number(v) and v >= 0 for v in timesteps):
        problems.append(f"timesteps {timesteps!r} are not non-negative numbers")
    sigmas = saved.get("sigmas", [])
    if not isinstance(sigmas, list) or not all(number(v) and 0 < v <= 1 for v in sigmas):
        problems.append(f"sigmas {sigmas!r} are not numbers in (0, 1]")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}. Export the student again (stepdistill writes this file).")


def _write_class_conditional(folder: str, backbone, scheduler) -> None:
    """The toolkit's class-conditional pipeline: the UNet, the scheduler, the self-contained pipeline file."""
    import diffusers

    backbone.save_pretrained(os.path.join(folder, "unet"))
    scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    module, cls = CLASS_CONDITIONAL
    shutil.copy(os.path.join(PIPELINES_DIR, f"{module}.py"), os.path.join(folder, f"{module}.py"))
    index = {
        "_class_name": [module, cls],
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(backbone).__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def export_lora(
    denoiser: Denoiser, folder: str | os.PathLike, card: str = "", adapter_name: str = "default", scheduler=None
) -> str:
    """Write a student's LoRA adapter in diffusers' format (atomically), loadable with plain diffusers/peft.

    ``folder/pytorch_lora_weights.safetensors`` holds diffusers' key names under the ``unet.`` prefix (``transformer.``
    for SD3's transformer), the form ``pipe.load_lora_weights`` and ``unet.load_lora_adapter(folder, prefix="unet")``
    read. A ``scheduler`` (from ``configure_scheduler``) is saved in ``folder/scheduler`` for
    ``LCMScheduler.from_pretrained(folder, subfolder="scheduler")``: the adapter samples as intended only with the
    scheduler it was trained for.

    Raises:
        ValueError: if the network has no LoRA adapter of that name.
    """
    backbone = denoiser.backbone
    config = getattr(backbone, "peft_config", {}) if getattr(backbone, "_hf_peft_config_loaded", False) else {}
    if adapter_name not in config:
        raise ValueError(
            f"The network has no LoRA adapter {adapter_name!r} to export (adapters: {sorted(config)}); "
            "train with a LoRA rank > 0, or export the full pipeline instead."
        )
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(backbone, adapter_name=adapter_name)
    prefix = "unet" if "UNet" in type(backbone).__name__ else "transformer"  # the pipeline's component name
    state = {f"{prefix}.{k}": v.detach().float().contiguous() for k, v in state.items()}
    if not state or not all("lora" in k for k in state):
        raise ValueError("The LoRA state dict is empty or holds non-LoRA weights; nothing sensible to export.")
    with atomic_dir(folder) as tmp:
        save_file(state, os.path.join(tmp, LORA_WEIGHTS_NAME), metadata={"format": "pt"})
        if scheduler is not None:
            scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        lora = config[adapter_name]
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(
                {"r": lora.r, "lora_alpha": lora.lora_alpha, "target_modules": sorted(lora.target_modules)},
                f,
                indent=2,
            )
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
    return os.fspath(folder)


def _global_rng_note(scheduler, lead: str) -> str:
    """The sentence that model and LoRA cards add for a scheduler that re-noises with torch's global generator
    (diffusers' stochastic ``FlowMatchEulerDiscreteScheduler``: SD3's pipeline passes no ``generator=`` to it), after
    ``lead``; empty for every other scheduler."""
    if not getattr(scheduler.config, "stochastic_sampling", False):
        return ""
    return (
        f"{lead}Its scheduler re-noises between steps with torch's global generator (the pipeline does not pass "
        "`generator=` to it): call `torch.manual_seed(...)` first for repeatable images.\n"
    )


def lora_card(
    method: str,
    teacher: str,
    rank: int,
    num_steps: int,
    guidance_scale: float,
    scheduler,
    pass_timesteps: bool = False,
) -> str:
    """Markdown card of an exported LoRA: how to load it into the teacher's pipeline with the scheduler it was trained
    for (``scheduler``, as saved beside it), and how to call the pipeline: a flow student's times are given as
    ``sigmas``, a one-step generator below the top time (``pass_timesteps``) as ``timesteps``."""
    name = type(scheduler).__name__
    if name == "FlowMatchEulerDiscreteScheduler":
        call = f"`sigmas={[round(float(v), 6) for v in scheduler.sigmas[:-1]]}`"
    elif pass_timesteps:
        call = f"`timesteps={scheduler.timesteps.tolist()}`"
    else:
        call = f"`num_inference_steps={num_steps}`"
    return (
        f"# {method} LoRA of `{teacher}` (rank {rank}), diffusers format\n\n"
        f"Load into the teacher's pipeline with `pipe.load_lora_weights(FOLDER)` and use the scheduler in "
        f'`scheduler/` (`pipe.scheduler = {name}.from_pretrained(FOLDER, subfolder="scheduler")`), '
        f"then sample with {call}, `guidance_scale={guidance_scale:g}`.\n" + _global_rng_note(scheduler, "")
    )


def export_student(
    student: Denoiser,
    output_dir: str | os.PathLike,
    num_steps: int,
    guidance_scale: float,
    card: str,
    config: dict | None,
    scheduler: dict,
    lora_method: str = "",
    teacher: str = "",
    folder: str = "pipeline",
    interval_input: bool = False,
) -> list[str]:
    """Write ``output_dir/<folder>`` (default ``pipeline``), and for a LoRA student first ``output_dir/lora`` (the
    adapter with its scheduler); the pipeline then holds the fused weights. ``scheduler`` holds
    ``configure_scheduler``'s keyword arguments (``scheduler_class``, ``times``, ``scheduler_options``). Returns the
    folders written."""
    from .lora import has_lora, lora_rank
    from .text import is_text_to_image

    written = []
    if student.backbone is not None and has_lora(student.backbone):
        lora_scheduler, pass_timesteps = configure_scheduler(student, num_steps, **scheduler), False
        if teacher and is_text_to_image(teacher):  # the scheduler its pipeline export gets, for the same call
            lora_scheduler, pass_timesteps = text_pipeline_scheduler(lora_scheduler)
        rank = lora_rank(student.backbone)
        card_text = lora_card(lora_method, teacher, rank, num_steps, guidance_scale, lora_scheduler, pass_timesteps)
        written.append(export_lora(student, os.path.join(output_dir, "lora"), card_text, scheduler=lora_scheduler))
        student = student.merged_copy()
    pipeline = os.path.join(output_dir, folder)
    written.append(
        export_pipeline(
            student,
            pipeline,
            num_steps,
            guidance_scale,
            card=card,
            config=config,
            source=teacher or None,
            interval_input=interval_input,
            **scheduler,
        )
    )
    return written


def export_spec(
    student: Denoiser, spec: ExportSpec, output_dir: str | os.PathLike, teacher: str, config: dict | None
) -> list[str]:
    """The one export of every strategy: ``spec`` (``Strategy.export_spec``) written by ``export_student``, with its
    model card, for every pipeline kind (class-conditional, SD/SDXL, SD3) and LoRA. Returns the folders written
    (none, with a message, for a step count off the teacher's integer timesteps)."""
    if spec.scheduler.get("times") is None and not exportable_steps(student, spec.num_steps):
        print(f"{spec.folder}: {spec.num_steps} steps are not on the teacher's integer timesteps; not exported")
        return []
    card = model_card(spec.method, teacher, spec.num_steps, spec.guidance_scale, spec.details)
    return export_student(
        student,
        output_dir,
        spec.num_steps,
        spec.guidance_scale,
        card,
        config,
        spec.scheduler,
        spec.lora_method,
        teacher,
        spec.folder,
        spec.interval_input,
    )


def model_card(
    method: str, teacher: str, num_steps: int, guidance_scale: float, details: str = "", metrics: str | None = None
) -> str:
    """Markdown model card of an exported student: method, teacher, how to sample it, and measured quality."""
    from .text import absent_components, is_text_to_image

    if is_text_to_image(teacher):  # the teacher's own pipeline class: no custom code to trust
        absent = "".join(f", {name}=None" for name in absent_components(teacher))  # e.g. SD3 without T5
        load, inputs = f"DiffusionPipeline.from_pretrained(FOLDER{absent})", 'prompt=["a photo of a cat"]'
    else:
        load, inputs = "DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)", "class_labels=[0, 1, 2]"
    usage = (
        f"```python\nfrom diffusers import DiffusionPipeline\n\npipe = {load}\n"
        f"images = pipe({inputs}, num_inference_steps={num_steps}, guidance_scale={guidance_scale:g}).images\n```\n"
    )
    quality = metrics or "Not measured at export time: run `eval/evaluate.py --model NAME=FOLDER` to score it.\n"
    return (
        f"# {num_steps}-step student of `{teacher}`\n\n"
        f"Method: {method}. {details}\n\n"
        f"Sample with `num_inference_steps={num_steps}` and `guidance_scale={guidance_scale:g}` "
        "(the scheduler in `scheduler/` is set to the student's timesteps):\n\n"
        f"{usage}\n## Quality\n\n{quality}\nTraining configuration: `training_config.json`.\n"
    )


def _betas(schedule) -> torch.Tensor:
    """Betas that reproduce the schedule's ``alphas_cumprod`` exactly (diffusers rebuilds it from betas)."""
    ac = schedule.alphas_cumprod.double()
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return 1.0 - ac / prev
