"""The budget and the meter: limits, FLOP counts on hand-computed layers, and backward attribution."""

import pytest
import torch

from harness.budget import Budget, Meter, Spend, count_flops, format_flops

pytestmark = pytest.mark.unit


def test_budget_fraction_is_the_largest_ratio_and_validates():
    budget = Budget(updates=10, images=100)
    assert budget.fraction(Spend(updates=5, images=80)) == pytest.approx(0.8)
    assert not budget.done(Spend(updates=9, images=99)) and budget.done(Spend(updates=10))
    with pytest.raises(ValueError, match="sets no limit"):
        Budget()
    with pytest.raises(ValueError, match="must be positive"):
        Budget(updates=-1)


def test_count_flops_matches_hand_computed_linear_layers():
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    counted = count_flops(layer, [x], params=[layer.weight])
    assert counted.forward == 2 * 3 * 8 * 4
    assert counted.backward == 2 * (2 * 3 * 8 * 4)  # input grad and weight grad
    with torch.no_grad():
        assert count_flops(layer, [x.detach()]).backward == 0


def test_sdpa_is_counted_on_cpu():
    q = torch.randn(1, 2, 16, 8)
    counted = count_flops(lambda a: torch.nn.functional.scaled_dot_product_attention(a, a, a), [q])
    assert counted.forward == 2 * (2 * 2 * 16 * 16 * 8)  # QK^T and AV; the CPU flash kernel would count 0


def test_inference_mode_is_refused():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        count_flops(torch.nn.Linear(2, 2), [torch.randn(1, 2)])


def test_backward_is_split_between_components():
    """generator -> decoder -> reward, backpropagated once: each component's backward is charged to it."""
    gen, dec, rew = torch.nn.Linear(4, 8), torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)
    for m in (dec, rew):
        m.requires_grad_(False)
    meter = Meter()
    x = torch.randn(5, 4)
    latents = meter.call("generate", gen, x, backward="generator_backward", params=list(gen.parameters()))
    images = meter.call("decode", dec, latents, backward="decode_backward")
    scores = meter.call("reward", rew, images, backward="reward_backward")
    with meter.phase("generator_backward"):
        (-scores.mean()).backward()
    stats = meter.stats
    assert stats["generate"].flops == 2 * 5 * 4 * 8
    assert stats["reward_backward"].flops == 2 * 5 * 16 * 1  # input grad only: the reward is frozen
    assert stats["decode_backward"].flops == 2 * 5 * 8 * 16
    assert stats["generator_backward"].flops == 2 * 5 * 4 * 8  # weight grad (x needs none)
    assert all(stats[p].seconds >= 0 for p in stats) and stats["generator_backward"].calls == 1
    seconds, flops = meter.totals()
    assert flops == sum(s.flops for s in stats.values()) and seconds > 0


def test_counts_are_cached_per_shape():
    meter = Meter()
    layer = torch.nn.Linear(4, 4)
    calls = []
    fn = lambda t: (calls.append(1), layer(t))[1]  # noqa: E731
    for _ in range(3):
        meter.call("reward", fn, torch.randn(2, 4))
    meter.call("reward", fn, torch.randn(3, 4))
    assert len(calls) == (1 + 3) + (1 + 1)  # one counting pass per new shape, then the real calls
    assert meter.stats["reward"].flops == 3 * 64 + 96


def test_unknown_phase_and_format():
    with pytest.raises(ValueError, match="unknown phase"):
        with Meter().phase("nonsense"):
            pass
    assert format_flops(2.5e12) == "2.5 TFLOP" and format_flops(0) == "0"
