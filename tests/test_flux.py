"""FLUX.1 transformers as networks of the toolkit (``backbones.FluxTransformerAdapter``): the Denoiser's call is the
one ``FluxPipeline`` makes (packed 2x2 latent patches, image and text position ids, ``sigma`` as the timestep), and a
guidance-distilled transformer (FLUX.1-dev) is guided through its guidance input, in one pass, with no unconditional
branch to fall back on."""

import pytest
import torch
from tiny_text import PROMPTS, build_flux, tiny_flux_transformer

from stepdistill.backbones import adapter_for, latent_image_ids, pack_latents, unpack_latents
from stepdistill.denoiser import Condition, Denoiser
from stepdistill.discriminator import Discriminator, read_features
from stepdistill.schedules import Schedule


def flux_denoiser(guidance_embeds: bool = True) -> Denoiser:
    return Denoiser(tiny_flux_transformer(guidance_embeds), Schedule.flow(), "flow").frozen()


def condition(b: int = 2) -> Condition:
    gen = torch.Generator().manual_seed(1)
    return Condition(text=torch.randn(b, 7, 32, generator=gen), pooled=torch.randn(b, 16, generator=gen))


def pipeline_call(transformer, latents, sigma, cond, guidance):
    """The transformer's output as ``FluxPipeline.__call__`` computes it (its own packing helpers), unpacked."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    packed = FluxPipeline._pack_latents(latents, b, c, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    text_ids = torch.zeros(cond.text.shape[1], 3)
    timestep = torch.full((b,), sigma * 1000.0)
    out = transformer(
        hidden_states=packed,
        timestep=timestep / 1000,
        guidance=None if guidance is None else torch.full([1], guidance).expand(b),
        pooled_projections=cond.pooled,
        encoder_hidden_states=cond.text,
        txt_ids=text_ids,
        img_ids=ids,
        return_dict=False,
    )[0]
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)


def test_packing_and_position_ids_are_fluxpipelines():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 4)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 4))
    assert torch.equal(unpack_latents(packed, 6, 4), latents)
    assert torch.equal(latent_image_ids(6, 4), FluxPipeline._prepare_latent_image_ids(2, 3, 2, "cpu", torch.float32))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 16, 5, 4))


def test_guidance_distilled_teacher_is_its_transformer_called_at_that_guidance():
    """FLUX.1-dev: the real score at guidance w is the pipeline's own transformer call at guidance w, exactly, and
    there is no unconditional branch: asking for one is an error that names the guidance input."""
    net = flux_denoiser(guidance_embeds=True)
    assert net.guidance_distilled and net.can_guide
    x, cond = torch.randn(2, 16, 4, 4), condition()
    t = torch.full((2,), 0.7)
    for w in (1.0, 3.5):
        ours = net.guided_native(x, t, cond, guidance_scale=w)
        assert torch.equal(ours, pipeline_call(net.backbone, x, 0.7, cond, w))
    assert not torch.allclose(net.guided_native(x, t, cond, 1.0), net.guided_native(x, t, cond, 3.5))
    # x0 through the flow parameterisation: x0 = x_t - t * v
    torch.testing.assert_close(
        net(x, t, cond, guidance_scale=3.5), x - 0.7 * pipeline_call(net.backbone, x, 0.7, cond, 3.5)
    )
    with pytest.raises(ValueError, match="no unconditional branch"):
        net.null_condition(cond)
    with pytest.raises(ValueError, match="guidance scale as an input"):
        net.native(x, t, cond)


def test_schnell_shaped_transformer_takes_no_guidance_input():
    net = flux_denoiser(guidance_embeds=False)
    assert not net.guidance_distilled
    x, cond, t = torch.randn(2, 16, 4, 4), condition(), torch.full((2,), 0.3)
    assert torch.equal(net.native(x, t, cond), pipeline_call(net.backbone, x, 0.3, cond, None))
    adapter, timestep = adapter_for(net.backbone), torch.full((2,), 300.0)
    with pytest.raises(TypeError, match="no guidance input"):
        adapter(net.backbone, x, timestep, cond, None, guidance=torch.full((2,), 3.5))


def test_flux_features_for_a_critic_lie_on_the_patch_grid():
    """The critic's features of a FLUX teacher (three double-stream depths, and the middle one as the bottleneck)
    come back on the grid of packed patches, a non-square latent included."""
    net = flux_denoiser()
    critic, names = Discriminator.for_network(net)
    x, cond, t = torch.randn(2, 16, 6, 4), condition(), torch.full((2,), 0.5)
    features = read_features(net, x, t, cond, names)
    assert [tuple(f.shape) for f in features] == [(2, 32, 3, 2)] * len(names)
    assert critic(features, cond).shape == (2,)
    out, bottleneck = net(x, t, cond, guidance_scale=2.0, return_features=True)
    assert out.shape == x.shape and bottleneck.shape == (2, 32, 3, 2)


def test_a_flux_pipeline_loads_as_a_teacher_and_encodes_prompts_as_fluxpipeline(tmp_path):
    """load_text_to_image on a FLUX.1-dev-shaped pipeline: the transformer is a guidance-distilled flow teacher,
    and the prompt encoder gives exactly FluxPipeline.encode_prompt's T5 token embeddings and pooled CLIP output."""
    from diffusers import FluxPipeline

    from stepdistill.text import load_text_to_image

    folder = build_flux(tmp_path / "flux")
    loaded = load_text_to_image(folder)
    assert loaded.pipeline_class == "FluxPipeline" and loaded.prompts.family == "flux"
    assert loaded.teacher.schedule.kind == "flow" and loaded.teacher.prediction == "flow"
    assert loaded.teacher.guidance_distilled
    # FLUX's latents before packing, at FluxPipeline's default size (its transformer config has no sample_size)
    assert loaded.teacher.sample_shape == (16, 128, 128) and loaded.image_size == 128 * loaded.codec.scale_factor
    cond = loaded.prompts.encode(PROMPTS[:3])
    pipe = FluxPipeline.from_pretrained(folder)
    with torch.no_grad():  # as in the pipeline's __call__ (T5's attention may take another kernel with autograd)
        text, pooled, text_ids = pipe.encode_prompt(PROMPTS[:3], prompt_2=None, device="cpu")
    assert cond.text.shape == (3, 512, 32) and torch.equal(cond.text, text)
    assert torch.equal(cond.pooled, pooled) and torch.equal(text_ids, torch.zeros(512, 3))


def test_training_on_a_flux_teacher_is_refused_in_one_line(tmp_path):
    """Students of FLUX teachers are not trained yet: the train scripts stop with one line naming the teachers
    they do take, instead of failing deep inside a strategy."""
    from stepdistill.config import ModelConfig
    from stepdistill.recipes import load_setup

    folder = build_flux(tmp_path / "flux")
    with pytest.raises(ValueError, match=r"FLUX\.1 pipeline.*SD 1\.x/2\.x, SDXL or SD3"):
        load_setup(ModelConfig(teacher=folder, prompts="p.txt"), data_free=True)
