"""The one-step generator on SD-Turbo's and SDXL-Turbo's real classes at toy size."""

import pytest
import torch

from harness.generator import from_pretrained, resolve_local_model, tiny_sd, tiny_sdxl

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def gen(request):
    return tiny_sd(seed=0) if request.param == "sd" else tiny_sdxl(seed=0)


def test_shapes_range_and_determinism(gen):
    cond = gen.encode(["a photo of a red cat", "a blue dog"])
    noise = gen.noise([5, 6])
    assert noise.shape == (2, *gen.latent_shape)
    torch.testing.assert_close(noise, gen.noise([5, 6]))
    assert not torch.allclose(noise[0], noise[1])
    latents = gen.latents(noise, cond)
    images = gen.decode(latents)
    assert latents.shape == noise.shape and images.shape == (2, 3, gen.resolution, gen.resolution)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_x0_formula_at_t999(gen):
    """The latent is (z - sqrt(1-abar) eps) / sqrt(abar) (plus SD-Turbo's official re-noise to t=0)."""
    cond = gen.encode(["a cat"])
    z = gen.noise([1])
    with torch.no_grad():
        extra = {}
        if gen.family == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": cond.tensors["pooled"], "time_ids": cond.tensors["time_ids"]}
        eps = gen.unet(z, torch.tensor([999]), encoder_hidden_states=cond.tensors["hidden"], **extra).sample
        x0 = (z - (1 - gen._a999) ** 0.5 * eps) / gen._a999 ** 0.5
        if gen.family == "sd":  # official constants: 0.9996 x0 + 0.0292 eps
            x0 = 0.99958 * x0 + 0.02915 * eps
        torch.testing.assert_close(gen.latents(z, cond), x0, rtol=1e-3, atol=1e-3)
    assert abs(gen._a999 ** 0.5 - 0.0683) < 1e-3 and abs((1 - gen._a999) ** 0.5 - 0.9977) < 1e-3


def test_reference_is_the_base_and_gradients_reach_only_the_adapters(gen):
    cond, noise = gen.encode(["a cat"] * 2), gen.noise([1, 2])
    with gen.reference():
        before = gen.latents(noise, cond)
    assert not before.requires_grad
    gen.latents(noise, cond).square().mean().backward()
    trainable = gen.trainable()
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in gen.unet.parameters() if not p.requires_grad)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.05)
    after = gen.latents(noise, cond)
    with gen.reference():
        ref = gen.latents(noise, cond)
    torch.testing.assert_close(ref, before)
    assert not torch.allclose(after, before)
    assert all(p.requires_grad for p in gen.trainable())  # adapters re-enabled after the context
    with torch.no_grad():
        for p in trainable:
            p.sub_(0.05)
            p.grad = None


def test_adapter_loads_into_a_standard_diffusers_pipeline(tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    gen = tiny_sd(seed=0)
    with torch.no_grad():
        for p in gen.trainable():
            p.add_(torch.randn_like(p) * 0.1)
    gen.save_adapter(tmp_path)
    base = tiny_sd(seed=0)  # same base weights, fresh adapters
    from harness.lora import adapters_disabled

    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoders[0], tokenizer=base.tokenizers[0],
                                   unet=base.unet, scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cond, z = gen.encode(["a cat"]), gen.noise([3])
    t = torch.tensor([999])
    with adapters_disabled(base.unet):
        plain = base.unet(z, t, encoder_hidden_states=cond.tensors["hidden"]).sample
    pipe.load_lora_weights(str(tmp_path), adapter_name="driftbench")
    pipe.set_adapters(["driftbench"])
    with torch.no_grad():
        loaded = pipe.unet(z, t, encoder_hidden_states=cond.tensors["hidden"]).sample
        ours = gen.unet(z, t, encoder_hidden_states=cond.tensors["hidden"]).sample
    torch.testing.assert_close(loaded, ours, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, ours)


def test_missing_model_paths_name_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_local_model(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no unet/ subfolder"):
        resolve_local_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        from_pretrained("stabilityai/sd-turbo-not-cached", family="sd", name="x")
