"""Latent text-to-image teachers (SD 1.5- and SDXL-shaped pipelines built locally, no network): prompt encoding as
diffusers does it, captioned data and prompt sets, every strategy's train script with --teacher set to the pipeline
folder, and exports in the teacher's own pipeline class (and LoRA) that plain diffusers loads in a fresh interpreter
and that reproduce the toolkit's sampler."""

import json
import os

import pytest
import torch
from test_export import BLOCK_STEPDISTILL, run_isolated
from tiny_text import PROMPTS, build_pipeline, build_sd3, captioned_folder

from stepdistill.denoiser import Denoiser
from stepdistill.sampling import consistency_sample, ddim_sample, multistep_sample
from stepdistill.strategies.meanflow import MeanFlowConfig, MeanFlowStrategy, meanflow_sample
from stepdistill.text import encode_captioned_folder, load_text_to_image, read_captions

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

FAMILIES = ("sd15", "sdxl", "sd3", "sd3-t5")
PIPELINE_CLASS = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sd3-t5": "StableDiffusion3Pipeline",
}


def without_t5(family):
    """The tiny "sd3" pipeline has no T5 encoder ("sd3-t5" has one); diffusers loads it only when told so."""
    return {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    folders = {family: build_pipeline(root / family, sdxl=family == "sdxl") for family in ("sd15", "sdxl")}
    folders["sd3"] = build_sd3(root / "sd3")
    folders["sd3-t5"] = build_sd3(root / "sd3-t5", t5=True)
    folders["data"] = captioned_folder(root / "data")
    with open(root / "prompts.txt", "w") as f:
        f.write("\n".join(PROMPTS) + "\n\n")
    folders["prompts"] = str(root / "prompts.txt")
    return folders


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_embeddings_equal_the_pipelines_encode_prompt(pipelines, family):
    """The toolkit's conditions (and its empty-prompt null condition for CFG) equal diffusers' encode_prompt."""
    from diffusers import DiffusionPipeline

    model = load_text_to_image(pipelines[family])
    pipe = DiffusionPipeline.from_pretrained(pipelines[family], **without_t5(family))
    cond = model.prompts.encode(PROMPTS[:3])
    more = {"prompt_2": None, "prompt_3": None} if family.startswith("sd3") else {}
    with torch.no_grad():  # as in the pipeline's __call__ (T5's attention may take another kernel with autograd)
        out = pipe.encode_prompt(
            PROMPTS[:3], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **more
        )
    assert torch.equal(out[0], cond.text) and torch.allclose(out[1][:1], model.teacher.null_text, atol=1e-6)
    if family != "sd15":  # pooled text
        assert torch.equal(out[2], cond.pooled) and torch.allclose(out[3][:1], model.teacher.null_pooled, atol=1e-6)
    if family == "sdxl":  # SDXL's zeroed empty prompt, and size conditioning of the 16 px images
        assert model.teacher.null_text.abs().max() == 0 and cond.time_ids[0].tolist() == [16, 16, 0, 0, 16, 16]
    if family == "sd3":  # 77 CLIP tokens, then 256 zero T5 tokens (no T5 encoder); a velocity-predicting flow
        assert cond.text.shape == (3, 77 + 256, 32) and cond.text[:, 77:].abs().max() == 0
        assert model.teacher.prediction == "flow" and model.teacher.schedule.kind == "flow"
    if family == "sd3-t5":  # the T5 encoder's 256 token embeddings after the CLIP ones, its params frozen too
        assert cond.text.shape == (3, 77 + 256, 32) and cond.text[:, 77:].abs().min() > 0
        assert len(model.prompts.encoders) == 3 and not model.prompts.encoders[2].training
    assert model.teacher.backbone.training is False and not any(p.requires_grad for p in model.prompts.parameters())


def test_captioned_data_is_encoded_once_and_cached(pipelines, tmp_path, monkeypatch):
    model = load_text_to_image(pipelines["sd15"])
    first = encode_captioned_folder(model, pipelines["data"], cache_dir=str(tmp_path / "cache"))
    assert first["x0"].shape == (12, 4, 8, 8) and first["text"].shape == (12, 77, 16)
    assert torch.equal(first["text"][6], model.prompts.encode([PROMPTS[0]]).text[0])  # captions cycle over PROMPTS
    monkeypatch.setattr(model.codec, "encode", lambda x: pytest.fail("the cache should have been used"))
    again = encode_captioned_folder(model, pipelines["data"], cache_dir=str(tmp_path / "cache"))
    assert torch.equal(again["x0"], first["x0"]) and len(os.listdir(tmp_path / "cache")) == 1


def test_caption_shards_give_the_same_batches_as_the_folder(pipelines, tmp_path):
    """Webdataset-style shards (KEY.png + KEY.txt) of the captioned folder encode to the same latents and prompts."""
    import tarfile

    pairs = read_captions(pipelines["data"])
    (tmp_path / "shards").mkdir()
    for shard, part in enumerate((pairs[:5], pairs[5:])):
        with tarfile.open(tmp_path / "shards" / f"{shard:05d}.tar", "w") as tar:
            for path, caption in part:
                key = os.path.basename(path).split(".")[0]
                tar.add(path, arcname=f"{key}.png")
                (tmp_path / f"{key}.txt").write_text(caption)
                tar.add(tmp_path / f"{key}.txt", arcname=f"{key}.txt")
    model = load_text_to_image(pipelines["sd15"])
    folder = encode_captioned_folder(model, pipelines["data"])
    shards = encode_captioned_folder(model, str(tmp_path / "shards"))
    assert torch.equal(folder["x0"], shards["x0"]) and torch.equal(folder["text"], shards["text"])
    with tarfile.open(tmp_path / "shards" / "00002.tar", "w") as tar:  # an image without its caption
        tar.add(pairs[0][0], arcname="orphan.png")
    with pytest.raises(ValueError, match="no KEY.txt caption: 'orphan.png'"):
        read_captions(str(tmp_path / "shards"))


def test_bad_captioned_folders_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        read_captions(str(tmp_path))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "missing.png", "text": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_captions(str(tmp_path))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="row 1 needs"):
        read_captions(str(tmp_path))


def test_a_guidance_embedding_on_sd3_names_the_flag_that_bakes_w_in(pipelines, tmp_path):
    """SD3's transformer has no guidance input (LCM's default w-conditioned student): one error naming the fix."""
    from train.consistency import main

    argv = ["--teacher", pipelines["sd3"], "--data", pipelines["data"], "--output-dir", str(tmp_path / "run")]
    with pytest.raises(TypeError, match="SD3Transformer2DModel.*--guidance-embedding-dim none"):
        main([*argv, "--max-steps", "1", "--batch-size", "2"])


def test_unreachable_hub_id_is_one_clear_error():
    """(The suite runs with HF_HUB_OFFLINE=1, set in conftest: the Hub cannot be reached.)"""
    from stepdistill.config import ModelConfig
    from stepdistill.recipes import load_setup

    with pytest.raises(FileNotFoundError, match="pass the local folder"):
        load_setup(ModelConfig(teacher="nobody-here/no-such-model"))


LOAD_TEXT_SCRIPT = (
    BLOCK_STEPDISTILL
    + r"""
import json
from diffusers import DiffusionPipeline
import diffusers
folder, lora, teacher, steps, w, io = sys.argv[1:7]
index = json.load(open(f"{folder}/model_index.json"))
absent = {k: None for k, v in index.items() if v == [None, None]}  # the tiny SD3 has no T5
pipe = DiffusionPipeline.from_pretrained(teacher if lora != "-" else folder, **absent)
if lora != "-":  # the teacher's own pipeline + the adapter and the scheduler it was trained for
    scheduler_class = json.load(open(f"{lora}/scheduler/scheduler_config.json"))["_class_name"]
    pipe.scheduler = getattr(diffusers, scheduler_class).from_pretrained(lora, subfolder="scheduler")
    pipe.load_lora_weights(lora)
pipe.set_progress_bar_config(disable=True)
inputs = torch.load(io)
g = torch.Generator().manual_seed(0)
when = {"num_inference_steps": int(steps)}
if inputs["timesteps"]:
    when = {"timesteps": inputs["timesteps"]}
if inputs["sigmas"]:
    when = {"sigmas": inputs["sigmas"]}
torch.manual_seed(0)  # SD3's pipeline does not hand `generator` to the scheduler: re-noising draws the global RNG
out = pipe(prompt=inputs["prompts"], guidance_scale=float(w), latents=inputs["noise"], generator=g,
           output_type="latent", **when).images
torch.save({"latents": out, "class": type(pipe).__name__}, io)
"""
)

SIDA = ["--gan-generator-weight", "1e-2", "--gan-critic-weight", "1"]
# (family, script, extra flags, export folder, sampler): a few steps of every strategy on the tiny pipelines
CASES = [
    (
        "sd15",
        "progressive",
        ["--teacher-steps", "8", "--target-steps", "4", "--steps-per-round", "2"],
        "pipeline-4steps",
        "ddim",
    ),
    ("sd15", "consistency", ["--sample-steps", "2"], "pipeline", "lcm"),
    ("sd15", "consistency", ["--lora-rank", "4", "--lr", "1e-3", "--sample-steps", "2"], "lora", "lcm"),
    ("sd15", "consistency", ["--phases", "2", "--sample-steps", "2"], "pipeline", "phased"),
    ("sd15", "dmd", ["--preset", "fashion", "--generator-steps", "2"], "pipeline", "multistep"),
    ("sd15", "dmd", ["--lora-rank", "4", "--lr", "1e-3"], "lora", "multistep"),
    ("sd15", "sid", ["--preset", "fashion"], "pipeline", "multistep"),
    ("sd15", "sid", ["--preset", "fashion", "--lora-rank", "4", "--lr", "1e-3"], "lora", "multistep"),
    (
        "sdxl",
        "progressive",
        ["--teacher-steps", "4", "--target-steps", "2", "--steps-per-round", "2"],
        "pipeline-2steps",
        "ddim",
    ),
    ("sdxl", "consistency", ["--lora-rank", "4", "--lr", "1e-3", "--sample-steps", "2"], "lora", "lcm"),
    # LCM-SDXL: a full student with a guidance input (time_cond_proj_dim), w drawn from LCM's range in training
    ("sdxl", "consistency", ["--sample-steps", "2"], "pipeline", "lcm"),
    ("sdxl", "dmd", ["--preset", "fashion"], "pipeline", "multistep"),
    ("sdxl", "sid", ["--preset", "fashion-4step"], "pipeline", "multistep"),
    (
        "sd3",
        "progressive",
        ["--teacher-steps", "4", "--target-steps", "2", "--steps-per-round", "2"],
        "pipeline-2steps",
        "ddim",
    ),
    # a flow's consistency function is its x0 (no boundary scalings): the stochastic FlowMatch scheduler samples it;
    # SD3's transformer has no guidance input, so the full student bakes its w in
    ("sd3", "consistency", ["--guidance-embedding-dim", "none", "--sample-steps", "2"], "pipeline", "lcm"),
    ("sd3", "consistency", ["--lora-rank", "4", "--lr", "1e-3", "--sample-steps", "2"], "lora", "lcm"),
    (
        "sd3",
        "consistency",
        ["--phases", "2", "--sample-steps", "2", "--guidance-embedding-dim", "none"],
        "pipeline",
        "phased",
    ),
    ("sd3", "dmd", ["--generator-steps", "2", "--lora-rank", "4", "--lr", "1e-3"], "lora", "multistep"),
    ("sd3", "sid", ["--preset", "fashion"], "pipeline", "multistep"),
    ("sd3-t5", "dmd", ["--preset", "fashion"], "pipeline", "multistep"),
    # the adversarial family: SiDA (the fake score's encoder logits) and SiD²A-style teacher-feature critic, LADD
    ("sd15", "sid", ["--preset", "fashion", *SIDA, "--gan-features", "teacher"], "pipeline", "multistep"),
    ("sd3", "sid", ["--preset", "fashion", *SIDA], "pipeline", "multistep"),
    ("sd15", "ladd", ["--preset", "fashion"], "pipeline", "multistep"),
    ("sd3", "ladd", ["--generator-steps", "2", "--lora-rank", "4", "--lr", "1e-3"], "lora", "multistep"),
    # continuous-time consistency: the JVP through the SD 1.5 UNet (forward-mode AD) and SD3's transformer (LoRA)
    ("sd15", "scm", ["--preset", "fashion"], "pipeline", "multistep"),
    ("sd3", "scm", ["--lora-rank", "4", "--lr", "1e-3"], "lora", "multistep"),
    # MeanFlow: the interval input through the SD 1.5 UNet's time_cond_proj_dim, TCDScheduler's deterministic jumps
    ("sd15", "meanflow", ["--preset", "fashion"], "pipeline", "meanflow"),
]


def _toolkit_sample(folder, sampler, noise, cond, saved):
    """The toolkit's own sampler for an exported student (its UNet and scheduler read back from the folder)."""
    if "sigmas" in saved:  # a flow student: its times are the sigmas
        den, times = Denoiser.from_pretrained(folder, "transformer").frozen(), torch.tensor(saved["sigmas"])
    else:
        den = Denoiser.from_pretrained(folder).frozen()
        times = (torch.tensor(saved["timesteps"], dtype=torch.float64) + 1) / 1000
    g = torch.Generator().manual_seed(0)
    w = saved["guidance_scale"]
    if sampler == "ddim":
        return ddim_sample(den, noise, cond, guidance_scale=w, times=times)
    if sampler == "lcm":
        return consistency_sample(den, noise, cond, len(times), guidance_scale=w, times=times, generator=g)
    if sampler == "phased":  # the toolkit's own edge-to-edge jumps; diffusers steps at the exported timesteps
        return consistency_sample(den, noise, cond, len(times), guidance_scale=w, phases=len(times))
    if sampler == "meanflow":  # deterministic jumps down the grid to index 0, the interval input 1 / K
        return meanflow_sample(den, noise, cond, times, float(den.schedule.index_time(0)))
    return multistep_sample(den, noise, cond, times, generator=g)


@pytest.mark.parametrize(
    "family,script,flags,export,sampler", CASES, ids=[f"{c[0]}-{c[1]}-{c[3]}-{c[4]}" for c in CASES]
)
def test_train_script_on_a_text_teacher_exports_what_plain_diffusers_reproduces(
    pipelines, tmp_path, family, script, flags, export, sampler
):
    import importlib

    main = importlib.import_module(f"train.{script}").main
    out = tmp_path / "run"
    data_free = script == "sid" and "--gan-critic-weight" not in flags  # SiDA's critic reads real images
    data = ["--prompts", pipelines["prompts"]] if data_free else ["--data", pipelines["data"]]
    common = ["--max-steps", "2", "--batch-size", "4", "--log-every", "1", "--output-dir", str(out)]
    main(["--teacher", pipelines[family], *data, *common, *flags])
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert logs and all(v == v for entry in logs for v in entry.values())  # finite, logged every step
    assert (out / "grids").is_dir() and os.listdir(out / "grids")  # decoded through the VAE
    pipeline = out / ("pipeline" if export == "lora" else export)
    saved = json.load(open(pipeline / "stepdistill.json"))
    index = json.load(open(pipeline / "model_index.json"))
    expected_class = PIPELINE_CLASS[family]
    assert index["_class_name"] == expected_class and not list(pipeline.glob("*.py"))  # no custom code
    card = (pipeline / "README.md").read_text()  # its usage loads the folder as it is (the tiny SD3 has no T5)
    assert ("text_encoder_3=None, tokenizer_3=None" in card) == (family == "sd3")
    prompts = PROMPTS[:3]
    cond = load_text_to_image(pipelines[family]).prompts.encode(prompts)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = _toolkit_sample(pipeline, sampler, noise, cond, saved)
    io = tmp_path / "io.pt"
    timesteps = saved["timesteps"] if saved.get("pass_timesteps") else None  # documented in the card
    torch.save({"prompts": prompts, "noise": noise, "timesteps": timesteps, "sigmas": saved.get("sigmas")}, io)
    lora = str(out / "lora") if export == "lora" else "-"
    if export == "lora":  # the card names the scheduler the adapter was trained for, and how to call the pipeline
        card = (out / "lora" / "README.md").read_text()
        scheduler_class = json.load(open(out / "lora" / "scheduler" / "scheduler_config.json"))["_class_name"]
        assert f"{scheduler_class}.from_pretrained" in card and ("sigmas=" in card) == ("sigmas" in saved)
        assert ("timesteps=" in card) == bool(saved.get("pass_timesteps"))  # as the pipeline export is called
    w = saved.get("pipeline_guidance_scale", saved["guidance_scale"])
    args = (pipeline, lora, pipelines[family], saved["num_inference_steps"], w, io)
    run_isolated(LOAD_TEXT_SCRIPT, *args, cwd=tmp_path)
    result = torch.load(io)
    assert result["class"] == expected_class
    assert (result["latents"] - ours).abs().max() < 1e-4
    assert ours.abs().max() > 0.1  # not a degenerate all-zero sample
    _check_evaluation_samples_the_student(pipeline, sampler, saved, prompts, cond)


def _check_evaluation_samples_the_student(folder, sampler, saved, prompts, cond):
    """The evaluation command loads the export and calls it as its card says (``export.pipeline_call``: sigmas for
    SD3, a guidance-embedding offset for SDXL's LCM): its images are the toolkit sampler's, decoded by the VAE."""
    import sys

    from stepdistill.evaluation import generate_with_pipeline, seeded_noise
    from stepdistill.export import pipeline_call

    sys.path.insert(0, "eval")
    try:
        from evaluate import load_model
    finally:
        sys.path.pop(0)
    pipe = load_model(str(folder), "cpu")
    steps = saved["num_inference_steps"]
    w = 1.0 if saved.get("interval_input") else saved["guidance_scale"]  # MeanFlow: guidance baked, 1 / K passed
    call = pipeline_call(folder, steps, w)
    images = generate_with_pipeline(pipe, 3, steps, prompts=prompts, batch_size=3, progress=False, call=call)
    latents = _toolkit_sample(folder, sampler, seeded_noise(3, (4, 8, 8), seed=0), cond, saved)
    vae = pipe.vae
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0)).sample
    expected = (pipe.image_processor.postprocess(decoded, output_type="pt") * 255).round()
    assert (images.float() - expected).abs().max() <= 1  # uint8 rounding


def test_prompt_csv_labels_give_each_prompt_its_class(tmp_path):
    from stepdistill.text import read_prompt_labels, read_prompts

    (tmp_path / "p.csv").write_text("caption,label\na photo of a bag,8\na sneaker,7\n")
    assert read_prompts(tmp_path / "p.csv") == ["a photo of a bag", "a sneaker"]
    assert read_prompt_labels(tmp_path / "p.csv").tolist() == [8, 7]
    (tmp_path / "q.csv").write_text("caption\na bag\n")
    (tmp_path / "q.txt").write_text("a bag\n")
    assert read_prompt_labels(tmp_path / "q.csv") is None and read_prompt_labels(tmp_path / "q.txt") is None
    (tmp_path / "bad.csv").write_text("caption,label\na bag,bag\n")
    with pytest.raises(ValueError, match="not an integer class id"):
        read_prompt_labels(tmp_path / "bad.csv")


def test_a_short_prompt_set_is_repeated_into_whole_batches(pipelines):
    """Data-free training on a few prompts (the bundled teacher's 10 evaluation prompts): the set is repeated whole,
    so a batch larger than the set can be drawn and every prompt is drawn equally often per epoch."""
    from stepdistill.config import ModelConfig
    from stepdistill.recipes import MIN_PROMPT_EPOCH, load_setup

    setup = load_setup(ModelConfig(teacher=pipelines["sd15"], prompts=pipelines["prompts"]), data_free=True)
    text = setup.data["text"]
    assert len(text) >= MIN_PROMPT_EPOCH and len(text) % len(PROMPTS) == 0
    one = load_text_to_image(pipelines["sd15"]).prompts.encode(PROMPTS).text
    assert torch.equal(text, one.repeat(len(text) // len(PROMPTS), 1, 1))


def test_text_encoders_are_released_once_the_prompts_are_encoded(pipelines):
    """The training setup keeps the embeddings, the UNet and the VAE decoder (sample grids) but no text encoder: once
    the captions are encoded, their memory is free (the estimate of the README's memory table leaves them out)."""
    import gc

    from transformers import PreTrainedModel

    from stepdistill.config import ModelConfig
    from stepdistill.recipes import load_setup

    setup = load_setup(ModelConfig(teacher=pipelines["sdxl"], data=pipelines["data"]))
    gc.collect()
    ours = [
        o
        for o in gc.get_objects()
        if isinstance(o, PreTrainedModel) and str(o.config._name_or_path).startswith(pipelines["sdxl"])
    ]
    assert setup.data["text"].shape[0] == 12 and setup.decode is not None
    assert not ours, [type(o).__name__ for o in ours]


def test_meanflow_refuses_a_transformer_teacher_naming_the_input_it_lacks(pipelines):
    """SD3's transformer has no timestep_cond slot for MeanFlow's interval input: one error saying so."""
    teacher = load_text_to_image(pipelines["sd3"]).teacher
    with pytest.raises(TypeError, match="time_cond_proj_dim input: A guidance embedding needs a UNet2DConditionModel"):
        MeanFlowStrategy(MeanFlowConfig(), teacher)
