"""The distilled students kept in ``benchmarks/students/``: each folder loads with plain diffusers (its pipeline
code inside it) and still draws garments of the asked class, far better than the teacher's own sampler at the
same step count. The README's comparison table is scored from these folders, so a diffusers release or a change
of the bundled pipeline code that breaks them shows here."""

import functools
import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from stepdistill.data import to_uint8
from stepdistill.denoiser import Denoiser
from stepdistill.evaluation import balanced_labels, domain_scorers, generate
from stepdistill.export import pipeline_call

STUDENTS = sorted(p.parent for p in Path("benchmarks/students").glob("*/model_index.json"))
NUM_SAMPLES = 500
# Each student at the step count it was trained for, plus the extra step counts the README's comparison recommends.
EXTRA_STEPS = {"sid-4step": [2]}
# Known misses, kept visible: strict, so the test fails the day such a student starts passing and the entry must go.
KNOWN_MISSES = {
    ("sid-4step", 4): "few-step SiD's 4-step FD is about 0.6x the teacher's 4-step sampler, not 0.5x: its four steps "
    "drift darker while their mixture matches the data (README, SiD section); the same generator passes at 2 steps",
    ("meanflow", 2): "MeanFlow's kept student scores about what the teacher's own DDIM does at 2 steps (32.93 against "
    "34.42 at 5,000 samples): it did not learn the long jumps in its budget (docs/meanflow.md)",
}


def cases():
    for folder in STUDENTS:
        trained = json.loads((folder / "stepdistill.json").read_text())["num_inference_steps"]
        for steps in [trained, *EXTRA_STEPS.get(folder.name, [])]:
            miss = KNOWN_MISSES.get((folder.name, steps))
            marks = [pytest.mark.xfail(reason=miss, strict=True)] if miss else []
            yield pytest.param(folder, steps, id=f"{folder.name}@{steps}", marks=marks)


def score(images, labels):
    scorers = domain_scorers("assets/fashion-classifier")
    scorers.update(images, labels)
    return scorers.compute()


@functools.cache
def teacher_score(steps):
    """The teacher's own DDIM sampler at ``steps``, the same labels and seed as the students (once per worker)."""
    teacher = Denoiser.from_pretrained("assets/fashion-teacher").frozen()
    labels = balanced_labels(NUM_SAMPLES, 10)
    return score(generate(teacher, NUM_SAMPLES, steps, 1.0, seed=0, labels=labels, progress=False), labels)


@pytest.mark.parametrize("folder,steps", list(cases()))
def test_student_loads_with_plain_diffusers_and_beats_the_teachers_sampler(folder, steps):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(NUM_SAMPLES, 10)
    call = pipeline_call(folder, steps)  # as its card says (MeanFlow: the jump's length as guidance_scale = 1/K)
    out = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="pt", **call)
    student = score(to_uint8(out.images), labels)
    own = teacher_score(steps)
    assert student["accuracy"] >= 0.8, student
    # the pixel benchmark's margin: at most half the teacher's FD at the same step count
    assert student["fd_domain"] <= 0.5 * own["fd_domain"], (student, own)


def test_step_outputs_scores_each_step_of_the_students_own_sampler():
    """eval/step_outputs.py (the README's per-step table): its last step is exactly the sample of the toolkit's
    K-step sampler with the same seeds, across batches, and its earlier steps are the intermediate predictions."""
    import sys

    sys.path.insert(0, "eval")
    try:
        from step_outputs import step_outputs
    finally:
        sys.path.pop(0)
    from stepdistill.denoiser import Condition
    from stepdistill.sampling import multistep_sample

    folder = Path("benchmarks/students/sid-4step-unroll")
    meta = json.loads((folder / "stepdistill.json").read_text())
    net = Denoiser.from_pretrained(folder).frozen()
    times = (torch.tensor(meta["timesteps"], dtype=torch.float32) + 1) / 1000
    labels = balanced_labels(10, 10)
    outs = step_outputs(net, times, labels, num_samples=10, batch_size=4, seed=3)
    assert len(outs) == len(times) and all(o.shape == (10, 1, 16, 16) and o.dtype == torch.uint8 for o in outs)
    noise_gen, renoise_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    expected = []
    for start in range(0, 10, 4):
        b = min(4, 10 - start)
        noise = torch.randn((b, 1, 16, 16), generator=noise_gen)
        with torch.no_grad():
            cond = Condition(labels=labels[start : start + b])
            expected.append(to_uint8(multistep_sample(net, noise, cond, times, generator=renoise_gen)))
    assert torch.equal(outs[-1], torch.cat(expected))
    # the first step's prediction from pure noise is far from the last (this student's step 0 is no image at all)
    assert (outs[0].float() - outs[-1].float()).abs().mean() > 10
