"""The evaluation set's base side: computed once, and reused for images that are the base's bit for bit."""

import pytest
import torch

from harness.config import RunConfig
from harness.evaluation import EvalSet, generate
from harness.profiles import PROFILES
from harness.shapes.pretrain_common import lr_factor
from rewards import build


class Counting:
    """A reward wrapper that counts the images it scores."""

    def __init__(self, reward):
        self.reward, self.images = reward, 0
        self.name, self.version, self.differentiable = reward.name, reward.version, reward.differentiable

    def score(self, images, prompts):
        self.images += images.shape[0]
        return self.reward.score(images, prompts)


def test_unchanged_weights_reuse_the_base_scores_and_changed_weights_are_scored():
    world = PROFILES.get("tiny")(RunConfig(profile="tiny", device="cpu"))
    reward = Counting(build("jpeg"))
    evals = EvalSet("eval", world.prompts("test")[:3], 2, 123, {"jpeg": reward})
    fresh, _ = evals.evaluate(world.generator)  # a fresh adapter: the base's images
    assert reward.images == 6  # the base once, not the same images twice
    assert fresh["eval/jpeg/mean"] == fresh["eval/jpeg/base_mean"] and fresh["eval/drift/pixel_rms"] == 0.0
    noise = torch.Generator().manual_seed(0)  # a fixed move: JPEG size cannot see some small random ones
    with torch.no_grad():
        for p in world.generator.trainable():
            p.add_(0.5 * torch.randn(p.shape, generator=noise))
    moved, _ = evals.evaluate(world.generator)
    assert reward.images == 12 and moved["eval/drift/pixel_rms"] > 0
    assert moved["eval/jpeg/mean"] != moved["eval/jpeg/base_mean"]
    images, prompts, _ = generate(world.generator, evals.prompts, evals.seeds, seed_base=evals.seed_base)
    assert evals.last_scores["jpeg"] == pytest.approx([float(v) for v in reward.reward.score(images, prompts)])


def test_lr_factor_warms_up_holds_and_decays_over_the_last_steps():
    assert [lr_factor(s, 10, 2) for s in range(10)] == [0.5] + [1.0] * 9  # no decay: constant after warm-up
    assert [lr_factor(s, 10, 2, decay=4) for s in range(10)] == [0.5, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]


def test_table_design_fills_only_what_is_left_empty():
    from harness.reporting.reproduce import Table2Config, with_design

    assert with_design(Table2Config(profile="shapes")).seeds == (0, 1, 2, 3, 4)
    second = with_design(Table2Config(profile="shapes2"))
    assert (second.seeds, second.test_seeds, second.curve_seeds) == (tuple(range(8)), 4, 2)
    mine = with_design(Table2Config(profile="shapes2", seeds=(3,), test_seeds=5))
    assert (mine.seeds, mine.test_seeds, mine.curve_seeds) == ((3,), 5, 2)
    defaults = with_design(Table2Config(profile="shapes2-defaults"))
    assert (defaults.seeds, defaults.test_seeds) == (tuple(range(8)), 4)


def test_a_table_reads_its_own_profiles_tuned_file():
    from harness.reporting.reproduce import Table2Config, tuned_file

    assert tuned_file(Table2Config(profile="shapes2")).name == "shapes2.json"
    assert tuned_file(Table2Config(profile="shapes2-defaults")).name == "shapes2.json"
    assert tuned_file(Table2Config(profile="shapes")).name == "shapes.json"
    assert str(tuned_file(Table2Config(profile="shapes2", tuned_file="x/t.json"))) == "x/t.json"


def test_base_scores_are_shared_across_runs_only_for_the_same_reward_pixels_and_prompts():
    from harness.evaluation import shared_base_scores
    from rewards.shapes_pref import PrefConfig, ShapesPref

    images, prompts = torch.rand(4, 3, 64, 64), ["a photo of a circle"] * 4
    calls = []

    class Fingerprinted(ShapesPref):
        def score(self, images, prompts):
            calls.append(self.fingerprint)
            return super().score(images, prompts)

    torch.manual_seed(0)
    a, b = Fingerprinted(PrefConfig()), Fingerprinted(PrefConfig())  # two initialisations: different weights
    same_as_a = Fingerprinted(PrefConfig(), state=a.model.state_dict())
    first = shared_base_scores(a, images, prompts)
    assert torch.equal(shared_base_scores(same_as_a, images, prompts)[0], first[0]) and len(calls) == 1
    shared_base_scores(b, images, prompts)  # other weights
    shared_base_scores(a, images.flip(-1), prompts)  # other pixels
    shared_base_scores(a, images, ["a photo of a square"] * 4)  # other prompts
    assert len(calls) == 4 and a.fingerprint != b.fingerprint
    plain = Counting(build("jpeg"))  # declares no fingerprint: scored every time
    shared_base_scores(plain, images, prompts), shared_base_scores(plain, images, prompts)
    assert plain.images == 8
