import json

import pytest
import torch
from conftest import tiny_scheduler, tiny_text_unet, tiny_unet, tiny_unet2d

from stepdistill.denoiser import Condition, Denoiser
from stepdistill.schedules import Schedule


def make(prediction="v_prediction", **kw):
    return Denoiser(
        tiny_unet(**kw), Schedule.from_scheduler_config(dict(tiny_scheduler().config)), prediction, null_class=3
    ).frozen()


def inputs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 1, 8, 8, generator=g),
        torch.rand(b, generator=g) * 0.9 + 0.05,
        Condition(labels=torch.randint(0, 3, (b,), generator=g)),
    )


def test_cfg_scale_one_is_unguided_and_formula_holds():
    den = make()
    x, t, cond = inputs()
    torch.testing.assert_close(den(x, t, cond, guidance_scale=1.0), den(x, t, cond))
    uncond = den.null_condition(cond)
    c, u = den(x, t, cond), den(x, t, uncond)
    torch.testing.assert_close(den(x, t, cond, guidance_scale=3.0), u + 3.0 * (c - u), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_guidance_is_the_same_in_every_parameterisation(kind):
    den = make()
    x, t, cond = inputs()
    uncond = den.null_condition(cond)
    c, u = den(x, t, cond, kind=kind), den(x, t, uncond, kind=kind)
    torch.testing.assert_close(den(x, t, cond, guidance_scale=2.5, kind=kind), u + 2.5 * (c - u), rtol=1e-4, atol=1e-4)


def test_predict_kinds_are_consistent():
    den = make()
    x, t, cond = inputs()
    alpha, sigma = den.schedule.alpha_sigma(t)
    x0, eps = den(x, t, cond), den(x, t, cond, kind="eps")
    torch.testing.assert_close(alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps, x, rtol=1e-4, atol=1e-4)
    native = den.native(x, t, cond)
    torch.testing.assert_close(den(x, t, cond, kind="v"), native)


def test_native_timestep_matches_direct_unet_call():
    den = make()
    x, _, cond = inputs()
    idx = torch.tensor([0, 10, 500, 999])
    direct = den.backbone(x, idx, encoder_hidden_states=None, class_labels=cond.labels).sample
    torch.testing.assert_close(den.native(x, (idx + 1) / 1000, cond), direct)


def test_guidance_embedding_backbone_takes_w_in_one_pass():
    den = make(time_cond_proj_dim=16)
    den.guidance_embedding_dim = 16
    x, t, cond = inputs()
    a, b = den(x, t, cond, guidance_scale=1.0), den(x, t, cond, guidance_scale=4.0)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="guidance-scale embedding"):
        den.native(x, t, cond)


def test_roles_teacher_student_fake_score():
    teacher = make()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    student = teacher.trainable_copy()
    assert all(p.requires_grad for p in student.parameters())
    x, t, cond = inputs()
    student(x, t, cond).pow(2).mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))


def test_lora_student_and_adapters_disabled():
    teacher = make()
    student = teacher.trainable_copy().add_lora(rank=2)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    x, t, cond = inputs()
    base = teacher(x, t, cond)
    torch.testing.assert_close(student(x, t, cond), base)  # LoRA B starts at zero
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    assert not torch.allclose(student(x, t, cond), base, atol=1e-4)
    with student.adapters_disabled():
        torch.testing.assert_close(student(x, t, cond), base)
    with pytest.raises(ValueError, match="do not exist"):
        teacher.trainable_copy().add_lora(rank=2, target_modules=["to_q", "not_a_layer"])


def test_from_pretrained_round_trip(tiny_model_dir):
    den = Denoiser.from_pretrained(tiny_model_dir)
    assert den.prediction == "v" and den.null_class == 3 and den.schedule.kind == "discrete"
    x, t, cond = inputs()
    torch.testing.assert_close(den(x, t, cond), make()(x, t, cond))
    # the UNet's own folder works too, given a scheduler config
    again = Denoiser.from_pretrained(tiny_model_dir / "unet", subfolder=None, scheduler=tiny_model_dir / "scheduler")
    torch.testing.assert_close(again(x, t, cond), den(x, t, cond))


def test_from_pretrained_errors(tiny_model_dir, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Denoiser.from_pretrained(tiny_model_dir / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Denoiser.from_pretrained("./missing/model")
    with pytest.raises(FileNotFoundError, match="did you mean 'assets/fashion-teacher'"):  # not sent to the Hub
        Denoiser.from_pretrained("asset/fashion-teacher")
    wrong = tmp_path_factory.mktemp("vae")
    (wrong / "unet").mkdir()
    (wrong / "unet" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="not a denoising UNet"):
        Denoiser.from_pretrained(wrong)
    (tiny_model_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "wiggly"}))
    with pytest.raises(ValueError, match="Bad scheduler config"):
        Denoiser.from_pretrained(tiny_model_dir)


def test_unguided_text_condition_needs_uncond():
    den = make()
    x, t, _ = inputs()
    with pytest.raises(ValueError, match="uncond"):
        den.null_condition(Condition(text=torch.zeros(4, 2, 8)))


def test_with_guidance_embedding_starts_as_the_unguided_network():
    teacher = make()
    student = teacher.trainable_copy().with_guidance_embedding(32)
    x, t, cond = inputs()
    torch.testing.assert_close(student(x, t, cond, guidance_scale=3.0), teacher(x, t, cond))
    with torch.no_grad():
        student.backbone.time_embedding.cond_proj.weight.normal_()
    assert not torch.allclose(student(x, t, cond, guidance_scale=3.0), student(x, t, cond, guidance_scale=1.0))


def test_condition_from_batch():
    labels, text = torch.arange(3), torch.randn(3, 2, 8)
    assert torch.equal(Condition.from_batch({"x0": torch.zeros(3), "labels": labels}).labels, labels)
    assert torch.equal(Condition.from_batch({"encoder_hidden_states": text}).text, text)
    assert Condition.from_batch({"x0": torch.zeros(3)}) is None


def test_features_of_the_bottleneck_come_with_the_prediction():
    den = make()
    x, t, cond = inputs()
    out, features = den(x, t, cond, return_features=True)
    torch.testing.assert_close(out, den(x, t, cond))
    mid = den.backbone.config.block_out_channels[-1]
    assert features.shape == (4, mid, 4, 4)
    _, guided = den(x, t, cond, guidance_scale=2.0, return_features=True)  # the conditional half of the CFG batch
    torch.testing.assert_close(guided, features)
    assert not den.backbone.mid_block._forward_hooks  # the hook is gone afterwards


def test_text_guidance_uses_the_denoisers_empty_prompt_embeddings():
    schedule = Schedule.from_scheduler_config(dict(tiny_scheduler().config))
    null_text = torch.randn(1, 5, 12)
    den = Denoiser(tiny_text_unet(), schedule, "eps", null_text=null_text).frozen()
    x, t, _ = inputs()
    cond = Condition(text=torch.randn(4, 5, 12))
    c = den(x, t, cond)
    u = den(x, t, Condition(text=null_text.expand(4, -1, -1)))
    torch.testing.assert_close(den(x, t, cond, guidance_scale=3.0), u + 3.0 * (c - u), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="empty prompt"):
        Denoiser(tiny_text_unet(), schedule, "eps").null_condition(cond)


def test_unet2dmodel_backbone_through_its_adapter():
    from stepdistill.backbones import UNet2DAdapter, adapter_for

    unet = tiny_unet2d(num_class_embeds=4)
    den = Denoiser(unet, Schedule.from_scheduler_config(dict(tiny_scheduler().config)), "v", null_class=3).frozen()
    assert isinstance(adapter_for(unet), UNet2DAdapter)
    x, t, cond = inputs()
    direct = unet(x, den.schedule.model_timestep(t), class_labels=cond.labels).sample
    torch.testing.assert_close(den.native(x, t, cond), direct)
    with pytest.raises(ValueError, match="no text condition"):
        den(x, t, Condition(text=torch.zeros(4, 2, 8)))
    with pytest.raises(TypeError, match="Unsupported backbone"):
        Denoiser(torch.nn.Linear(2, 2), den.schedule, "v")


def test_sd3_transformer_features_are_its_middle_blocks_image_tokens_on_the_patch_grid():
    """DMD2's GAN head on an SD3 teacher reads the middle joint-attention block's image tokens as [B, C, h, w]."""
    from tiny_text import _transformer

    transformer = _transformer(0)
    den = Denoiser(transformer, Schedule.flow(), "flow").frozen()
    x, t = torch.randn(2, 4, 8, 8), torch.full((2,), 0.7)
    cond = Condition(text=torch.randn(2, 5, 32), pooled=torch.randn(2, 32))
    tokens = {}
    middle = transformer.transformer_blocks[len(transformer.transformer_blocks) // 2]
    handle = middle.register_forward_hook(lambda m, i, out: tokens.update(image=out[1]))
    out, features = den(x, t, cond, return_features=True)
    handle.remove()
    torch.testing.assert_close(out, den(x, t, cond))
    assert features.shape == (2, 16, 4, 4)  # 2 heads x 8 channels on the 8 / 2 patch grid
    assert torch.equal(features[:, :, 1, 2], tokens["image"][:, 1 * 4 + 2])  # row-major patch order
    assert not middle._forward_hooks and not transformer._forward_pre_hooks
