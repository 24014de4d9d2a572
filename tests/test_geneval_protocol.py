"""DrPO's options for the official GenEval path (resampling rounds, skip rule, positives-only drift, latent MSE,
all-tie skip): each rule on hand-computed values, and the harness's extra sampling rounds metered in full."""

import dataclasses

import pytest
import torch

from harness.api import Cond, Context, Rollout
from methods import drpo, ranking

pytestmark = pytest.mark.unit


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected).double(),
                               rtol=tol, atol=tol)


# --- the pure rules ---------------------------------------------------------------------------------

def test_verifier_anchors_take_m_random_correct_and_incorrect_or_skip():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.49])    # >= 0.5 correct: 0, 2, 4, 6
    seen_pos, seen_neg = set(), set()
    for seed in range(40):
        pos, neg = ranking.verifier_anchors(rewards, 2, torch.Generator().manual_seed(seed))
        assert len(pos) == len(neg) == 2 and len(set(pos.tolist())) == 2 and len(set(neg.tolist())) == 2
        seen_pos |= set(pos.tolist())
        seen_neg |= set(neg.tolist())
    assert seen_pos == {0, 2, 4, 6} and seen_neg == {1, 3, 5, 7}           # random among each kind, 0.5 correct
    # 4 correct, 4 incorrect: M = 5 is not met on either side; 1 correct of 4: M = 2 is not met.
    assert ranking.verifier_anchors(rewards, 5, torch.Generator()) == (None, None)
    assert ranking.verifier_anchors(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, torch.Generator()) == (None, None)
    assert ranking.verifier_anchors(torch.ones(4), 1, torch.Generator()) == (None, None)      # all tie


def test_verifier_counts_met_needs_every_prompt_to_have_m_of_each():
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert not ranking.verifier_counts_met(rewards, 2)                       # prompt 1 has 1 correct
    assert ranking.verifier_counts_met(rewards, 1)
    assert ranking.verifier_counts_met(rewards[:1], 2)
    assert not ranking.verifier_counts_met(torch.zeros(1, 8), 1)


def test_latent_mse_by_hand():
    # ((1-0)^2 + (2-0)^2 + (0-1)^2 + (3-1)^2) / 4 = (1 + 4 + 1 + 4) / 4 = 2.5
    close(drpo.latent_mse(torch.tensor([[1.0, 2.0], [0.0, 3.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])), 2.5)


def test_rollout_extend_keeps_each_prompts_candidates_adjacent():
    def rollout(offset):
        x = torch.arange(4.0)[:, None] + offset                               # P=2 x K=2, prompt-major
        return Rollout(prompts=["a", "b"], k=2, cond=Cond({"h": x}), noise=x, latents=x, ref_latents=None,
                       scored_latents=x, images=x, rewards=x.flatten())
    joined = rollout(0).extend(rollout(10))
    assert joined.k == 4 and joined.ref_latents is None
    assert joined.rewards.tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    assert joined.cond.tensors["h"].flatten().tolist() == [0, 1, 10, 11, 2, 3, 12, 13]


# --- DrPO's step with the options --------------------------------------------------------------------

def _batch(rewards, seed=0):
    """One prompt, K = len(rewards) candidates of 2-d latents (as (K, 2, 1, 1)), reference at 0.3 * latents."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(rewards), 2, 1, 1, generator=g).requires_grad_()
    return x, Rollout(prompts=["p"], k=len(rewards), cond=None, noise=x.detach(), latents=x,
                      ref_latents=0.3 * x.detach(), scored_latents=x.detach(), images=None,
                      rewards=torch.tensor(rewards))


def _ctx(k, seed=0):
    features = lambda space: (lambda latents: {"x": latents.flatten(1)[:, None, :]})  # noqa: E731
    return Context(k=k, reward=None, decode=None, features=features, rng=torch.Generator().manual_seed(seed))


def _cfg(**changes):
    return dataclasses.replace(drpo.Config(m=2, features="latent"), **changes)


def test_the_skip_rule_drops_the_prompt_reference_term_included():
    x, batch = _batch([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])                        # 1 correct < M = 2
    loss, logs = drpo.step(_cfg(require_both=True), {}, batch, _ctx(6))
    assert float(loss) == 0.0 and not loss.requires_grad and logs["skipped"] == 1.0
    # Without the rule the same prompt ranks its candidates and keeps both terms.
    loss, logs = drpo.step(_cfg(), {}, batch, _ctx(6))
    assert loss.requires_grad and logs["ref_loss"] > 0 and "skipped" not in logs


def test_the_skip_rule_anchors_are_correct_and_incorrect_candidates():
    x, batch = _batch([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    cfg = _cfg(require_both=True, drift_set="positives", lam=0.0)
    loss, logs = drpo.step(cfg, {}, batch, _ctx(6))
    loss.backward()
    moved = (x.grad.flatten(1).abs().sum(1) > 0).tolist()
    # Only positives drift: two of the correct candidates (0, 2, 4) get a gradient, no incorrect one does.
    assert sum(moved) == 2 and not any(moved[i] for i in (1, 3, 5)) and logs["skipped"] == 0.0


def test_positives_only_drift_is_the_drift_of_the_positives_against_the_negatives():
    from methods.drift import drift_loss

    rewards = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]                                # top-2: 0, 2; bottom-2: 3, 1
    x, batch = _batch(rewards)
    loss, _ = drpo.step(_cfg(drift_set="positives", lam=0.0), {}, batch, _ctx(6))
    f = x.flatten(1)
    expected, _ = drift_loss(f[[0, 2]][None], f[[0, 2]].detach()[None], f[[1, 3]].detach()[None],
                             positive_weight=3000.0, negative_weight=3000.0, radii=(0.02, 0.05, 0.2))
    close(loss, expected.mean())
    loss.backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).tolist() == [True, False, True, False, False, False]


def test_latent_mse_is_added_on_the_drifted_set_with_its_weight():
    x, batch = _batch([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    base, _ = drpo.step(_cfg(drift_set="positives"), {}, batch, _ctx(6))
    with_l2, logs = drpo.step(_cfg(drift_set="positives", latent_l2=0.2), {}, batch, _ctx(6))
    # x - 0.3 x = 0.7 x on the positives 0 and 2.
    mse = float((0.7 * x.detach()[[0, 2]]).square().mean())
    close(logs["latent_l2"], mse)
    close(with_l2 - base, 0.2 * mse)
    assert drpo.needs(_cfg(lam=0.0, latent_l2=0.2)).reference              # the base latents are sampled for it


def test_an_all_tie_prompt_keeps_the_reference_term_unless_skip_tied():
    x, batch = _batch([1.0] * 6)
    loss, logs = drpo.step(_cfg(), {}, batch, _ctx(6))
    assert logs["no_preference"] == 1.0 and logs["pref_loss"] == 0.0 and float(loss.detach()) > 0   # lambda V_ref alone
    loss, logs = drpo.step(_cfg(skip_tied=True), {}, batch, _ctx(6))
    assert float(loss) == 0.0 and logs["skipped"] == 1.0


def test_needs_declare_rounds_their_stop_rule_and_the_binary_reward():
    plain = drpo.needs(drpo.Config())
    assert plain.rounds == 1 and plain.enough is None and plain.binary_reward == ""
    official = drpo.needs(_cfg(rounds=4, require_both=True))
    assert official.rounds == 4 and official.binary_reward == "--drpo.rounds 4, --drpo.require-both"
    assert not official.enough(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert official.enough(torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    # Positives-only drift, the latent MSE and the all-tie skip rank any reward.
    assert drpo.needs(_cfg(drift_set="positives", latent_l2=0.2, skip_tied=True)).binary_reward == ""


def test_the_paper_geneval_preset_sets_the_official_values():
    from harness import presets

    preset = presets.get("paper-geneval")
    cfg = preset.method_config("drpo")
    assert (cfg.m, cfg.rounds, cfg.require_both, cfg.drift_set, cfg.latent_l2, cfg.skip_tied, cfg.lam) == \
        (8, 4, True, "positives", 0.2, True, 0.2)
    assert (preset.run.k, preset.run.reward) == (24, "geneval-mmdet")


def test_the_search_space_adds_the_matched_budget_options_only_for_a_binary_reward():
    from harness.studies.space import SpaceTrial, method_space

    class Low:
        def suggest_float(self, name, low, high, **kw):
            return low

        def suggest_int(self, name, low, high, **kw):
            return low

        def suggest_categorical(self, name, choices):
            return choices[-1]

    plain = drpo.space(SpaceTrial(Low()))
    verifier = drpo.space(SpaceTrial(Low(), binary_reward=True))
    assert set(verifier) - set(plain) == {"require_both", "drift_set", "latent_l2", "skip_tied"}
    assert "rounds" not in verifier and "rounds" not in method_space(drpo)   # rounds spend more samples
    assert {"require_both", "drift_set", "latent_l2", "skip_tied"} <= set(method_space(drpo))


# --- the harness: extra rounds, metered; a non-binary reward refused ---------------------------------

class Verifier:
    """A binary stand-in verifier: candidate i of a prompt (in call order) is correct iff i is in ``correct``."""

    name, version, differentiable, binary = "test-verifier", 1, False, True
    correct: tuple[int, ...] = ()

    def score(self, images, prompts):
        return [1.0 if i in self.correct else 0.0 for i in range(len(prompts))]


@pytest.fixture
def verifier(monkeypatch):
    from rewards import REWARDS

    monkeypatch.setitem(REWARDS._entries, "test-verifier", "tests.test_geneval_protocol:Verifier")
    return Verifier


@pytest.mark.parametrize("correct,rounds", [((), 3), ((0, 1), 1), ((0,), 2)])
def test_extra_rounds_stop_when_enough_and_every_sample_is_metered(tmp_path, verifier, monkeypatch, correct, rounds):
    from harness.run import run
    from harness.store import Store
    from tests.conftest import tiny_run

    # The same candidates are correct in every round: none (3 rounds, then skipped), 2 of 4 (enough at once),
    # 1 of 4 (2 correct after 2 rounds).
    monkeypatch.setattr(Verifier, "correct", correct)
    cfg = tiny_run(tmp_path, reward="test-verifier", evals=("jpeg",), k=4, run_id="r", eval_at=(1.0,))
    run(cfg, drpo.Config(m=2, rounds=3, require_both=True), progress=False)
    rows = Store(tmp_path).rows("r", "train")
    images = 2 * 4 * rounds                                                   # 2 updates x K=4 x rounds
    assert [rows[-1][f"budget/{k}"] for k in ("images", "reward_calls", "reference_images")] == [images] * 3
    assert all(r["train/sample_rounds"] == rounds for r in rows)
    assert Store(tmp_path).manifest("r")["per_update"]["max_rounds"] == 3


def test_a_non_binary_reward_is_refused_before_anything_is_written(tmp_path):
    from harness.run import CapabilityError, run
    from tests.conftest import tiny_run

    with pytest.raises(CapabilityError, match="--drpo.require-both read the reward as correct or incorrect"):
        run(tiny_run(tmp_path, reward="shapes-geneval-clauses"), drpo.Config(m=2, require_both=True), progress=False)
    assert not (tmp_path / "runs").exists()
