"""The distilled students kept in ``benchmarks/students/``: each folder loads with plain diffusers (its pipeline
code inside it) and still draws garments of the asked class, far better than the teacher's own sampler at the
same step count. The README's comparison table is scored from these folders, so a diffusers release or a change
of the bundled pipeline code that breaks them shows here."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from stepdistill.data import to_uint8
from stepdistill.denoiser import Denoiser
from stepdistill.evaluation import balanced_labels, domain_scorers, generate

STUDENTS = sorted(p.parent for p in Path("benchmarks/students").glob("*/model_index.json"))
NUM_SAMPLES = 500
# Each student at the step count it was trained for, plus the extra step counts the README's comparison recommends.
EXTRA_STEPS = {"sid-4step": [2]}
# Known misses, kept visible: strict, so the test fails the day such a student starts passing and the entry must go.
KNOWN_MISSES = {
    ("sid-4step", 4): "few-step SiD's 4-step FD is about 0.6x the teacher's 4-step sampler, not 0.5x: its four steps "
    "drift darker while their mixture matches the data (README, SiD section); the same generator passes at 2 steps",
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


@pytest.mark.parametrize("folder,steps", list(cases()))
def test_student_loads_with_plain_diffusers_and_beats_the_teachers_sampler(folder, steps):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(NUM_SAMPLES, 10)
    out = pipe(
        class_labels=labels, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    student = score(to_uint8(out.images), labels)
    teacher = Denoiser.from_pretrained("assets/fashion-teacher").frozen()
    own = score(generate(teacher, NUM_SAMPLES, steps, 1.0, seed=0, labels=labels, progress=False), labels)
    assert student["accuracy"] >= 0.8, student
    # the pixel benchmark's margin: at most half the teacher's FD at the same step count
    assert student["fd_domain"] <= 0.5 * own["fd_domain"], (student, own)
