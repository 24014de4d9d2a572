"""Edition 2's generator: the mixture prior (its KL, how the noise picks a component) and the open-colour rule of
its renders; edition 1 keeps one Gaussian and random open colours."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.shapes import editions as E
from harness.shapes.generator import component_pick, pooled_code
from harness.shapes.model import NetConfig, ShapesNet
from harness.shapes.pretrain import EDITION_OVERRIDES, GeneratorConfig, prior_kl, with_overrides
from harness.shapes.prompts import split
from harness.shapes.render import sample_scene


def test_one_component_kl_is_the_closed_form_by_hand():
    # q = N(0, 1), p = N(1, 1) in each of 2 dims: 0.5 * (0 - 0 + (1 + 1) / 1 - 1) = 0.5 per dim.
    mu_q, lv_q = torch.zeros(1, 2), torch.zeros(1, 2)
    kl = prior_kl(torch.zeros(1, 2), mu_q, lv_q, torch.zeros(1, 1), torch.ones(1, 1, 2), torch.zeros(1, 1, 2))
    assert kl.item() == pytest.approx(1.0)


def test_mixture_kl_is_log_q_minus_log_mixture_at_the_draw_by_hand():
    # z = 0, q = N(0, 1); prior 1/2 N(-1, 1) + 1/2 N(1, 1): log q(0) - log p(0) = -0.5 log 2pi - (-0.5 log 2pi - 0.5).
    logits = torch.zeros(1, 2)
    kl = prior_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), logits,
                  torch.tensor([[[-1.0], [1.0]]]), torch.zeros(1, 2, 1))
    assert kl.item() == pytest.approx(0.5)
    # Unequal weights (logits log 3, 0: 3/4 and 1/4) with one component at the draw: -log(3/4 + 1/4 e^-0.5).
    kl = prior_kl(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[math.log(3), 0.0]]),
                  torch.tensor([[[0.0], [1.0]]]), torch.zeros(1, 2, 1))
    assert kl.item() == pytest.approx(-math.log(0.75 + 0.25 * math.exp(-0.5)))


def test_the_pick_is_uniform_and_independent_of_the_code():
    noise = torch.randn(20000, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    pick, u = component_pick(noise), pooled_code(noise)
    counts = torch.histc(pick, bins=10, min=0.0, max=1.0)
    assert counts.min() > 1800 and counts.max() < 2200  # 2000 expected per decile, SD 42
    corr = torch.corrcoef(torch.cat([pick[None] - 0.5, u.T]))[0, 1:]
    assert corr.abs().max() < 0.04  # SD of a null correlation at n = 20,000: 0.007


def test_the_pick_chooses_the_component_by_the_inverse_cdf_of_its_weights():
    net = ShapesNet(NetConfig(code_dim=1, prior_components=3), d_text=8)
    mu = torch.tensor([[[10.0], [20.0], [30.0]]]).expand(4, 3, 1)
    weights = torch.tensor([0.2, 0.5, 0.3])
    net.prior = lambda text: (weights.log().expand(4, 3), mu, torch.full((4, 3, 1), -8.0))
    net.decode_code = lambda z, text: z
    z = net(torch.zeros(4, 1), {}, torch.tensor([0.1, 0.3, 0.69, 0.71]))
    assert z.squeeze(1).tolist() == [10.0, 20.0, 20.0, 30.0]


def test_one_component_keeps_edition_1s_prior_head():
    assert NetConfig().prior_components == 1
    head = ShapesNet(NetConfig(), d_text=128).prior_head[-1]
    assert head.out_features == 2 * NetConfig().code_dim
    assert ShapesNet(NetConfig(prior_components=4), d_text=128).prior_head[-1].out_features == 4 * 2 * 64 + 4


def test_edition_2s_generator_config_has_the_mixture_prior():
    cfg = with_overrides(GeneratorConfig(), EDITION_OVERRIDES[2]["generator"])
    assert cfg.model.net.prior_components == 16 and GeneratorConfig().model.net.prior_components == 1


@pytest.mark.parametrize("correct", [True, False])
def test_edition_2_draws_open_colours_in_the_shapes_colour(correct):
    rng = np.random.default_rng(0)
    for meta in split("val", 0, E.SECOND):
        named = {c["class"]: c.get("color") for c in meta["include"]}
        for obj in sample_scene(meta, rng, correct=correct, ed=E.SECOND).objects:
            if named.get(obj.shape) is None and meta["tag"] not in ("colors", "color_attr"):
                assert obj.color == E.SECOND.shape_colour(obj.shape), (meta["prompt"], obj)


def test_edition_1_keeps_random_open_colours():
    rng = np.random.default_rng(0)
    meta = next(m for m in split("train", 0, E.FIRST) if m["tag"] == "single_object")
    colours = {sample_scene(meta, rng, ed=E.FIRST).objects[0].color for _ in range(40)}
    assert E.FIRST.open_colour == "random" and colours == set(E.FIRST.colors)


def test_pretrain_set_refuses_an_unknown_field_in_one_line(capsys):
    from harness.shapes.pretrain import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generator", "--set", "bogus=1"])
    assert exit_info.value.code == 2
    assert "--set bogus: no such field of generator; choose from ae_steps" in capsys.readouterr().err
