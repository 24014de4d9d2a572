"""The CPU rewards and the reward-answer checks."""

import pytest
import torch

from rewards import REWARDS, RewardError, build, check_images, check_scores

pytestmark = pytest.mark.unit


def test_jpeg_prefers_flat_images_and_returns_plain_floats():
    reward = build("jpeg")
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = reward.score(torch.cat([flat, noisy]), ["a", "b"])
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    assert scores[0] > scores[1] and not reward.differentiable


def test_colorfulness_hand_computed_and_differentiable():
    reward = build("colorfulness")
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = 1.0  # pure red: rg = 255, yb = 127.5 everywhere, no spread
    expected = 0.3 * (255.0 ** 2 + 127.5 ** 2) ** 0.5
    assert float(reward.score(image, ["x"])) == pytest.approx(expected, rel=1e-4)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    reward.score(x, ["a", "b"]).sum().backward()
    assert x.grad is not None and reward.differentiable


@pytest.mark.parametrize("answer,match", [([1.0, float("nan")], "non-finite"), ([1.0], r"shape \(1,\) for 2"),
                                          ("junk", "expected 2 numbers"), (torch.ones(2, 1), "shape")])
def test_bad_reward_answers_raise(answer, match):
    with pytest.raises(RewardError, match=match):
        check_scores(answer, 2, "r")


def test_image_contract():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_images(torch.full((1, 3, 4, 4), 2.0), ["a"], "r")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        check_images(torch.zeros(2, 3, 4, 4), ["a"], "r")


def test_unknown_reward_suggests():
    with pytest.raises(ValueError, match="did you mean 'jpeg'"):
        REWARDS.get("jpg")
