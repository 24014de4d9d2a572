"""The baselines' loss functions on tiny hand-computed cases, and the behaviour each update rule relies on."""

import itertools
import math

import pytest
import torch

from harness.api import Context, Rollout
from methods import dpo1, draft, ngrpo, pso, ranking, vggflow

pytestmark = pytest.mark.unit


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected).double(),
                               rtol=tol, atol=tol)


def softplus(x):
    """-log sigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


# --- DPO-1step ------------------------------------------------------------------------------------

def test_dpo_closeness_and_loss_by_hand():
    policy = torch.tensor([[1.0, 0.0], [2.0, 0.0]])         # K=2 candidates x D=2
    chosen, rejected = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # s(X, C) = -mean(mean_d(1, 0), mean_d(0, 0)) = -(0.5 + 0) / 2; s(X, R) = -(0.5 + 2) / 2.
    close(dpo1.closeness(policy, chosen), -0.25)
    close(dpo1.closeness(policy, rejected), -1.25)
    # Policy gap 1, reference gap 0 (both reference rows are equidistant), so logit = beta * 1.
    loss, logit = dpo1.dpo_loss(policy, ref, chosen, rejected, beta=0.5)
    close(logit, 0.5)
    close(loss, softplus(0.5))


def test_dpo_loss_falls_as_the_policy_moves_towards_the_chosen_set():
    torch.manual_seed(0)
    ref = torch.randn(6, 5)
    chosen, rejected = ref[:2] + 1.0, ref[4:] - 1.0
    centre = chosen.mean(0)
    losses = [float(dpo1.dpo_loss(ref + t * (centre - ref), ref, chosen, rejected, beta=30.0)[0])
              for t in (0.0, 0.1, 0.2, 0.4)]
    assert losses[0] == pytest.approx(math.log(2))          # policy == reference: logit 0
    assert all(a > b for a, b in itertools.pairwise(losses))
    # And its gradient points the policy that way: one descent step moves every sample closer to C.
    policy = ref.clone().requires_grad_(True)
    dpo1.dpo_loss(policy, ref, chosen, rejected, beta=30.0)[0].backward()
    moved = policy.detach() - 0.01 * policy.grad
    assert -dpo1.closeness(moved, chosen) < -dpo1.closeness(ref, chosen)


def test_dpo_ranking_is_disjoint_breaks_ties_at_random_and_skips_all_ties():
    rng = torch.Generator().manual_seed(0)
    top, bottom = ranking.rank_anchors(torch.tensor([0.1, 0.9, 0.5, 0.3]), 2, rng)
    assert sorted(top.tolist()) == [1, 2] and sorted(bottom.tolist()) == [0, 3]
    picks = {int(ranking.rank_anchors(torch.tensor([1.0, 1.0, 1.0, 0.0]), 1, rng)[0]) for _ in range(30)}
    assert picks == {0, 1, 2}
    assert ranking.rank_anchors(torch.ones(4), 2, rng) == (None, None)


# --- PSO ------------------------------------------------------------------------------------------

def test_pso_gaussian_logprob_and_pair_loss_by_hand():
    action, mean = torch.tensor([[0.1, 0.0]]), torch.zeros(1, 2)
    close(pso.gaussian_logprob(action, mean, sigma=0.1), [-0.25])   # -1/2 mean((1, 0)^2)
    # One pair, first wins: log-ratios (0.05, 0) lie inside the clip, logit = 10 * (0.05 - 0).
    loss, logs = pso.pso_loss(torch.tensor([[0.05, 0.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]),
                              beta=10.0, clip=0.1, max_log_ratio=10.0)
    close(loss, softplus(0.5))
    assert logs["tie_fraction"] == 0.0 and logs["pair_accuracy"] == 1.0


def test_pso_ignores_tied_pairs_and_all_tied_prompts():
    logp = torch.tensor([[0.3, -0.2, 0.05, 0.0]], requires_grad=True)
    rewards = torch.tensor([[1.0, 1.0, 0.0, 2.0]])          # pair 1 ties, pair 2: second wins
    loss, logs = pso.pso_loss(logp, torch.zeros(1, 4), rewards, beta=10.0, clip=0.1, max_log_ratio=10.0)
    close(loss, softplus(10 * (0.0 - 0.05)))                 # only pair 2 counts
    loss.backward()
    assert logp.grad[0, :2].abs().sum() == 0 and logp.grad[0, 2:].abs().sum() > 0
    assert logs["tie_fraction"] == 0.5
    # A second prompt whose pairs all tie adds a zero term to the prompt mean.
    both, _ = pso.pso_loss(torch.tensor([[0.05, 0.0], [0.3, 0.1]]), torch.zeros(2, 2),
                           torch.tensor([[1.0, 0.0], [2.0, 2.0]]), beta=10.0, clip=0.1, max_log_ratio=10.0)
    close(both, softplus(0.5) / 2)


def test_pso_clamps_the_ratio_and_the_log_ratio():
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)    # ratio e^0.5 = 1.65 -> 1.1
    loss, logs = pso.pso_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), beta=10.0, clip=0.1,
                              max_log_ratio=10.0)
    close(loss, softplus(10 * math.log(1.1)))
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0     # the clipped member gets no gradient
    close(logs["ratio_mean"], (1.1 + 1.0) / 2)
    # Without the ratio clip, the log-ratio itself is clamped to +-max_log_ratio.
    loss, _ = pso.pso_loss(torch.tensor([[50.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]),
                           beta=1.0, clip=0.0, max_log_ratio=10.0)
    close(loss, softplus(10.0))


def test_pso_action_adds_sigma_times_standardised_noise():
    torch.manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8), 2.0 + 3.0 * torch.randn(3, 4, 8, 8)
    z = (pso.act(pso.Config(sigma=0.05), latents, noise) - latents) / 0.05
    close(z.flatten(1).mean(1), torch.zeros(3), tol=1e-4)
    close(z.flatten(1).std(1, unbiased=False), torch.ones(3), tol=1e-4)


# --- Neighbor-GRPO ----------------------------------------------------------------------------------

def test_ngrpo_quasi_norm_advantages_by_hand():
    # r = (0, 1): centred (-1/2, 1/2), ||.||_0.8 = (2 * 0.5^0.8)^(1/0.8) = 2^0.25, so A = sqrt(2)/2 / 2^0.25.
    expected = [[-(2 ** -0.75), 2 ** -0.75]]
    close(ngrpo.quasi_norm_advantages(torch.tensor([[0.0, 1.0]]), p=0.8, clip=5.0), expected)
    close(ngrpo.quasi_norm_advantages(torch.tensor([[0.0, 1.0]]), p=0.8, clip=0.5), [[-0.5, 0.5]])
    assert ngrpo.quasi_norm_advantages(torch.full((1, 4), 3.0), p=0.8, clip=5.0).abs().sum() == 0


def test_ngrpo_advantages_are_scale_free_and_clipped():
    torch.manual_seed(0)
    r = torch.randn(2, 6)
    a = ngrpo.quasi_norm_advantages(r, p=0.8, clip=5.0)
    close(ngrpo.quasi_norm_advantages(7.0 * r - 3.0, p=0.8, clip=5.0), a)
    # p = 2 is the L2 norm: sqrt(K) * c / ||c||_2, i.e. the population z-score.
    z = (r - r.mean(1, keepdim=True)) / r.std(1, unbiased=False, keepdim=True)
    close(ngrpo.quasi_norm_advantages(r, p=2.0, clip=0.0), z)
    # One outlier among K = 10^4: sqrt(K) (1 - 1/K) / ((1 - 1/K)^0.8 + (K - 1) K^-0.8)^1.25 = 8.3 > 5.
    outlier = torch.zeros(1, 10_000)
    outlier[0, 0] = 1.0
    close(ngrpo.quasi_norm_advantages(outlier, p=0.8, clip=0.0)[0, 0],
          100 * 0.9999 / (0.9999 ** 0.8 + 9999 * 1e-4 ** 0.8) ** 1.25)
    assert float(ngrpo.quasi_norm_advantages(outlier, p=0.8, clip=5.0)[0, 0]) == 5.0


def test_ngrpo_surrogate_value_and_gradient_at_ratio_one_by_hand():
    candidates = torch.tensor([[[0.0], [1.0]]])              # P=1, K=2, D=1
    anchor = torch.tensor([[[0.0]]], requires_grad=True)     # the anchor is candidate 0
    loss, logs = ngrpo.ngrpo_loss(candidates, anchor, anchor.detach(), torch.tensor([[-1.0, 1.0]]),
                                  ppo_clip=0.2, max_log_ratio=10.0, temperature=1.0)
    close(loss, 0.0)                                          # ratio 1: -mean(A) = 0
    close(logs["ratio_mean"], 1.0)
    loss.backward()
    # d log pi_k / da = 2 x_k - 2 sum_j pi_j x_j with pi = softmax(0, -1) = (0.731, 0.269):
    # (-0.538, 1.462), so dL/da = -(1/2)(-1 * -0.538 + 1 * 1.462) = -1: the anchor moves towards x = 1.
    close(anchor.grad, [[[-1.0]]])


def test_ngrpo_ppo_clip_stops_the_gradient_beyond_one_plus_minus_eps():
    candidates = torch.tensor([[[0.0], [1.0]]])
    old = torch.tensor([[[0.0]]])
    # The anchor moved to -1: pi = softmax(-1, -4) = (0.953, 0.047) against (0.731, 0.269) before,
    # so the ratios are (1.303, 0.176), outside [0.8, 1.2] on both sides.
    anchor = torch.tensor([[[-1.0]]], requires_grad=True)
    loss, logs = ngrpo.ngrpo_loss(candidates, anchor, old, torch.tensor([[1.0, -1.0]]), 0.2, 10.0, 1.0)
    close(loss, -(1.2 - 0.8) / 2)                             # both terms take the clipped value
    assert logs["clip_fraction"] == 1.0
    loss.backward()
    assert float(anchor.grad.abs().sum()) == 0.0
    # With the opposite advantages the unclipped terms are the minimum, so the gradient flows.
    anchor.grad = None
    loss, _ = ngrpo.ngrpo_loss(candidates, anchor, old, torch.tensor([[-1.0, 1.0]]), 0.2, 10.0, 1.0)
    pi_new, pi_old = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))
    close(loss, -(-pi_new / pi_old + (1 - pi_new) / (1 - pi_old)) / 2)
    loss.backward()
    assert float(anchor.grad.abs().sum()) > 0


def test_ngrpo_neighbours_share_the_base_noise():
    torch.manual_seed(0)
    k, sigma = 8, 0.3
    noise = torch.randn(2, k, 4, 64, 64)
    z = ngrpo.propose(ngrpo.Config(sigma=sigma), noise)
    # The deltas sum to zero, so the neighbours' mean is sqrt(1 - s^2) n0 with n0 = sqrt(K) mean(noise).
    close(z.mean(1), math.sqrt(1 - sigma ** 2) * math.sqrt(k) * noise.mean(1), tol=1e-5)
    flat = z.flatten(2)
    assert abs(float(flat.var()) - 1.0) < 0.03                                     # each z_k ~ N(0, I)
    corr = float((flat[:, 0] * flat[:, 1]).mean())
    assert abs(corr - ((1 - sigma ** 2) - sigma ** 2 / (k - 1))) < 0.03           # ~0.90 between neighbours


# --- DRaFT ----------------------------------------------------------------------------------------

def test_draft_loss_by_hand():
    rewards, latents, ref = torch.tensor([[1.0, 3.0]]), torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    close(draft.draft_loss(rewards, latents, None, 0.0, 0.0), -2.0)
    close(draft.draft_loss(rewards, latents, ref, 0.5, 0.0), -2.0 + 0.5 * 1.0)
    close(draft.draft_loss(rewards, latents, None, 0.0, 1.0), -2.0 - 1.0)     # population std of (1, 3) = 1


def test_draft_gradient_per_score_is_minus_one_over_k():
    rewards = torch.tensor([[0.3, 1.2, -0.5, 2.0]], requires_grad=True)
    draft.draft_loss(rewards, torch.zeros(4, 1), None, 0.0, 0.0).backward()
    close(rewards.grad, torch.full((1, 4), -0.25))


# --- VGG-Flow -------------------------------------------------------------------------------------

def test_vggflow_clip_caps_norms_at_the_threshold_and_the_quantile_sets_the_next_one():
    gradient = torch.tensor([[3.0, 4.0], [0.3, 0.4]])        # norms 5 and 0.5
    clipped, norms = vggflow.clip_reward_gradient(gradient, threshold=1.0)
    close(clipped, [[0.6, 0.8], [0.3, 0.4]])                  # the first rescaled to norm 1, the second kept
    close(norms, [5.0, 0.5])
    close(vggflow.next_threshold(norms, 0.8), 0.5 + 0.8 * (5.0 - 0.5))    # linear-interpolated 0.8-quantile


def test_vggflow_loss_by_hand():
    # target = ref + 1 * 1000 * g = (1, 2); (2 - 1)^2 and (0 - 2)^2 average to 2.5.
    close(vggflow.vggflow_loss(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[0.001, 0.002]]),
                               eta=1.0, scale=1000.0), 2.5)
    close(vggflow.vggflow_loss(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.zeros(2, 2), torch.zeros(2, 2),
                               eta=1.0, scale=1000.0), 0.5)


def test_vggflow_threshold_is_set_once_per_update_from_every_micro_batch_and_process():
    cfg = vggflow.Config()
    weights = [torch.tensor([[0.1], [1.0]]), torch.tensor([[2.0], [4.0]])]   # r_k = w_k sum(x_k): |g_k| = 2 w_k

    def micro(state, ctx, w):
        x = torch.zeros(2, 1, 2, 2, requires_grad=True)
        latents = x * 1.0
        batch = Rollout(prompts=["a"], k=2, cond=None, noise=x.detach(), latents=latents,
                        ref_latents=torch.zeros(2, 1, 2, 2), scored_latents=latents.detach(), images=None,
                        rewards=(w * latents.flatten(1)).sum(1))
        return vggflow.step(cfg, state, batch, ctx)

    # One process, two micro-batches: both clipped at the initial 1.0; the threshold moves only at the end.
    ctx = Context(k=2, reward=None, decode=None, features=None, rng=torch.Generator())
    state = vggflow.init(cfg, ctx)
    for w in weights:
        _, logs = micro(state, ctx, w)
        assert logs["clip_threshold"] == 1.0 and state["threshold"] == 1.0
    vggflow.end_update(cfg, state, ctx)
    norms = torch.tensor([0.2, 2.0, 4.0, 8.0])
    close(state["threshold"], 4.0 + 0.4 * (8.0 - 4.0))        # 0.8-quantile of all four: position 2.4
    assert state["norms"] == []
    # Two processes, one micro-batch each: each sees only its own norms until the gather joins them.
    states = [vggflow.init(cfg, ctx) for _ in weights]
    mine = []
    for state, w in zip(states, weights):
        micro(state, ctx, w)
        mine.append(torch.cat(state["norms"]))
    shared = Context(k=2, reward=None, decode=None, features=None, rng=torch.Generator(), gather=lambda v: mine)
    for state in states:
        vggflow.end_update(cfg, state, shared)
        close(state["threshold"], torch.quantile(norms, 0.8))
    # The next update is clipped there: only w = 4 (norm 8) exceeds 5.6, so its target shrinks.
    loss, logs = micro(states[1], ctx, weights[1])
    target = 1000 * (norms[2:].clamp(max=5.6) / 2)[:, None].expand(2, 4)    # per-element g = norm / 2
    close(loss, (target ** 2).mean(), tol=1e-4)
    assert logs["clip_fraction"] == 0.5


# --- tie handling shared by DrPO and DPO-1step -----------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("correct", range(17))
def test_strict_ties_keep_every_separable_anchor_for_0_to_16_correct_of_16(correct):
    """A binary reward with c correct of K = 16, M = 4: strict anchors are min(M, c) correct positives and
    min(M, K - c) incorrect negatives; all-tied prompts (c = 0 or 16) have no preference."""
    rewards = torch.tensor([1.0] * correct + [0.0] * (16 - correct))[torch.randperm(16, generator=torch.Generator().manual_seed(correct))]
    pos, neg = ranking.rank_anchors(rewards, 4, torch.Generator().manual_seed(1), strict=True)
    if correct in (0, 16):
        assert pos is None and neg is None
        return
    assert len(pos) == min(4, correct) and len(neg) == min(4, 16 - correct)
    assert (rewards[pos] == 1).all() and (rewards[neg] == 0).all()
    assert not set(pos.tolist()) & set(neg.tolist())


@pytest.mark.unit
def test_strict_ties_match_plain_ranking_without_ties_and_shrink_only_at_a_tied_boundary():
    distinct = torch.tensor([0.3, 0.9, 0.1, 0.7, 0.5, 0.2])
    strict = ranking.rank_anchors(distinct, 2, torch.Generator().manual_seed(0), strict=True)
    plain = ranking.rank_anchors(distinct, 2, torch.Generator().manual_seed(0))
    assert [sorted(t.tolist()) for t in strict] == [sorted(t.tolist()) for t in plain] == [[1, 3], [2, 5]]
    # Three 0.5s straddle the top-2 / bottom-2 boundary: no cut keeps two on each side, both best cuts keep 3.
    tied = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1])
    pos, neg = ranking.rank_anchors(tied, 2, torch.Generator().manual_seed(0), strict=True)
    assert float(tied[pos].min()) > float(tied[neg].max())
    assert (len(pos), len(neg)) == (2, 1) or (len(pos), len(neg)) == (1, 2)
