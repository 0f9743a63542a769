"""The bundled teacher and classifier: loadable with plain diffusers/torch, and good enough to be a baseline."""

import json

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from stepdistill.data import to_uint8
from stepdistill.denoiser import Denoiser
from stepdistill.evaluation import ReferenceStats, balanced_labels, domain_scorers, generate

TEACHER = "assets/fashion-teacher"
CLASSIFIER = "assets/fashion-classifier"


def score(images, labels=None):
    scorers = domain_scorers(CLASSIFIER)
    scorers.update(images, labels)
    return scorers.compute()


def plain_diffusers_samples(unet, scheduler, labels, steps, guidance_scale, seed=0):
    """A sampling loop with nothing but diffusers: what a user without stepdistill would write."""
    scheduler.set_timesteps(steps)
    x = torch.randn(
        len(labels), 1, unet.config.sample_size, unet.config.sample_size, generator=torch.Generator().manual_seed(seed)
    )
    null = torch.full_like(labels, unet.config.num_class_embeds - 1)
    with torch.no_grad():
        for t in scheduler.timesteps:
            u, c = unet(torch.cat([x, x]), t, None, class_labels=torch.cat([null, labels])).sample.chunk(2)
            x = scheduler.step(u + guidance_scale * (c - u), t, x).prev_sample
    return x.clamp(-1, 1)


def test_teacher_loads_with_plain_diffusers_and_draws_garments():
    unet = UNet2DConditionModel.from_pretrained(f"{TEACHER}/unet").eval()
    scheduler = DDIMScheduler.from_pretrained(f"{TEACHER}/scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and unet.config.num_class_embeds == 11
    labels = balanced_labels(100, 10)
    images = to_uint8(plain_diffusers_samples(unet, scheduler, labels, steps=20, guidance_scale=2.0))
    assert score(images, labels)["accuracy"] >= 0.8
    # the toolkit's sampler gives the same images as the plain diffusers loop
    ours = generate(Denoiser.from_pretrained(TEACHER).frozen(), 100, 20, 2.0, seed=0, labels=labels, progress=False)
    assert (ours.int() - images.int()).abs().max() <= 1  # both quantised to the uint8 grid


def test_few_step_teacher_is_clearly_worse_than_many_step():
    den = Denoiser.from_pretrained(TEACHER).frozen()
    labels = balanced_labels(500, 10)
    fd = {n: score(generate(den, 500, n, 1.0, seed=1, labels=labels, progress=False))["fd_domain"] for n in (1, 8)}
    assert fd[1] > 3 * fd[8], fd


def test_classifier_reference_matches_training_record():
    record = json.load(open("assets/fashion-classifier/training.json"))
    assert record["test_accuracy"] > 0.88
    reference = ReferenceStats.load(f"{CLASSIFIER}/reference-test.npz")
    assert reference.mu.shape == (128,) and reference.sigma.shape == (128, 128) and reference.n == 10000


def real_test_images_16px(count=1000):
    """The shipped real test images at the classifier's 16x16, uint8 ``[N, 1, 16, 16]``, and their labels."""
    from stepdistill.data import from_uint8, load_fashion_mnist

    images, labels = load_fashion_mnist("assets/fashion-mnist", "test")
    return to_uint8(from_uint8(images[:count], 16)), torch.from_numpy(labels[:count])


def half_mirrored(images):
    """Every other image flipped left-right: a generator that draws half its shoes facing the wrong way."""
    out = images.clone()
    out[::2] = out[::2].flip(-1)
    return out


def shifted_one_pixel(images):
    """Every image moved one pixel right and one down, the background (0) filling the gap."""
    out = torch.zeros_like(images)
    out[..., 1:, 1:] = images[..., :-1, :-1]
    return out


def binomial_blur(images):
    """A 3x3 binomial blur ([1, 2, 1] / 4 in each direction, edges replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    x = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(x, kernel).round().clamp(0, 255).to(torch.uint8)


def test_feature_network_sees_mirroring_shifts_and_blur():
    """The shipped classifier must not be blind to errors a generator can make (it is trained without flips):
    FD against the real test statistics rises >= 8x when half the images are mirrored or all are shifted by one
    pixel, >= 3x under a light blur, and class accuracy falls on mirrored shoes."""
    images, labels = real_test_images_16px()
    base = score(images, labels)
    scores = {
        name: score(fn(images), labels)
        for name, fn in {"mirrored": half_mirrored, "shifted": shifted_one_pixel, "blurred": binomial_blur}.items()
    }
    ratios = {name: s["fd_domain"] / base["fd_domain"] for name, s in scores.items()}
    assert ratios["mirrored"] >= 8 and ratios["shifted"] >= 8 and ratios["blurred"] >= 3, (base, ratios)
    assert base["accuracy"] - scores["mirrored"]["accuracy"] >= 0.05, (base, scores["mirrored"])


TEXT_TEACHER = "assets/fashion-text-teacher"


def test_text_teacher_loads_with_plain_diffusers_and_follows_its_prompts():
    """The bundled text-to-image teacher is a plain StableDiffusionPipeline whose guided samples show the prompt's
    class; the toolkit loads it as a teacher with the pipeline's own prompt embeddings."""
    from diffusers import StableDiffusionPipeline

    from stepdistill.evaluation import generate_with_pipeline
    from stepdistill.text import load_text_to_image, read_prompt_labels, read_prompts

    pipe = StableDiffusionPipeline.from_pretrained(TEXT_TEACHER)
    pipe.set_progress_bar_config(disable=True)
    prompts, classes = read_prompts(f"{TEXT_TEACHER}/prompts.csv"), read_prompt_labels(f"{TEXT_TEACHER}/prompts.csv")
    images = generate_with_pipeline(pipe, 100, 20, 2.0, seed=0, prompts=prompts, progress=False)
    assert images.shape == (100, 1, 16, 16)
    assert score(images, classes[torch.arange(100) % 10])["accuracy"] >= 0.9  # measured 0.97; chance is 0.1
    model = load_text_to_image(TEXT_TEACHER)
    assert model.teacher.prediction == "v" and model.image_size == 16
