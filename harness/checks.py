"""Every static check of a run, in one place, before anything is built.

:func:`check_run` is the one gate :func:`harness.run.prepare` passes before it builds a component: names
(profile, method, rewards, nearest match on a typo), bounds and choices of the run's and the method's
configs, capabilities (a reward-gradient method needs a differentiable reward and the exact economy), the
method's declared needs against the run (K >= 2M), the data-parallel layout, the precision on this device,
the trackers and the selection metric's form. ``prepare`` then only builds.

Two checks are repeated on the *built* rewards: the selection metric's reward (a ``remote:URL`` reward is
keyed by the name its server reports, ``harness.selection.check_select_metric``) and whether the training
reward is binary (a served reward reports it; an option such as ``fraction=true`` changes it).
"""

from __future__ import annotations

from typing import Any

import rewards as reward_registry
from harness import distributed, economy, init_from, trackers
from harness.api import Needs
from harness.config import RunConfig
from harness.profiles import DEFAULT_REWARDS, PROFILES
from harness.registry import load
from harness.shapes import editions
from harness.validate import check as check_fields
from harness.world import dtype_for
from methods import METHODS


class CapabilityError(ValueError):
    """A method asked to run with a component it cannot use (e.g. reward backprop on a black-box reward)."""


def check_run(cfg: RunConfig, method_cfg: Any = None) -> tuple[Any, Any, Needs]:
    """Check ``cfg`` and the method's config against each other; returns (method module, its config, needs).

    Raises a one-line ``ValueError`` (``CapabilityError`` for a capability) naming the value and what is valid.
    """
    cfg.validate()
    PROFILES.check(cfg.profile)
    reward_name = cfg.reward or DEFAULT_REWARDS[cfg.profile]
    for name in dict.fromkeys([reward_name, *cfg.evals, *cfg.eval_split_rewards]):
        reward_registry.REWARDS.check(name)
        check_world(cfg.profile, name)
    method = METHODS.get(cfg.method)
    method_cfg = method_cfg if method_cfg is not None else method.Config()
    if not isinstance(method_cfg, method.Config):
        raise TypeError(f"method config for '{cfg.method}' must be {method.__name__}.Config")
    check_fields(method_cfg, cfg.method)
    needs = method.needs(method_cfg)
    check_anchors(cfg.method, needs, cfg.k)
    if needs.rounds < 1:
        raise ValueError(f"method '{cfg.method}' asked for {needs.rounds} sampling rounds; it needs at least 1")
    if not reward_name.startswith(tuple(reward_registry.REWARDS.patterns())):  # a served reward: once reached
        check_binary(needs, load(reward_registry.REWARDS.target(reward_name)), reward_name)
    _check_capabilities(cfg, method, reward_name)
    trackers.check(cfg.log_with)
    distributed.check_divides(cfg.grad_accum, cfg.prompts_per_step, cfg.k, distributed.layout(cfg.device).world)
    dtype_for(cfg)  # bf16 on a device without it fails here
    init_from.check(cfg)  # the run to start from: complete, same generator
    if cfg.select_metric and not cfg.select_metric.split("/")[0]:
        raise ValueError(f"--select-metric '{cfg.select_metric}' must be REWARD or REWARD/METRIC")
    return method, method_cfg, needs


def check_world(profile: str, reward: str) -> None:
    """A Shapes reward scores its own edition's prompts and shapes: ``shapes-*`` runs on profile ``shapes`` and
    ``shapes2-*`` on ``shapes2`` (edition 2's prompts and colours mean nothing to edition 1's detector)."""
    owner = editions.reward_edition(reward)
    if owner is None or profile not in editions.PROFILE_EDITIONS:
        return
    mine = editions.PROFILE_EDITIONS[profile]
    if owner.number != mine.number:
        fixed = editions.reward_name(reward, mine)
        raise ValueError(f"reward '{reward}' belongs to the Shapes world's edition {owner.number} (profile "
                         f"'{owner.profile}'), but the run's profile '{profile}' is edition {mine.number}; "
                         f"use '{fixed}'")


def check_anchors(method: str, needs: Needs, k: int) -> None:
    """The one K >= 2M rule: a method that ranks M positives and M negatives per prompt needs disjoint sets."""
    if needs.anchors and k < 2 * needs.anchors:
        raise ValueError(f"method '{method}' ranks M={needs.anchors} positives and M negatives per prompt, which "
                         f"needs K >= 2M = {2 * needs.anchors}; got K={k} (lower M or raise --k)")


def check_binary(needs: Needs, reward: Any, name: str) -> None:
    """A config that reads the reward as correct or incorrect (``Needs.binary_reward``) needs a binary reward
    (``rewards.is_binary`` of the reward's class, or of the built reward)."""
    if needs.binary_reward and not reward_registry.is_binary(reward):
        raise CapabilityError(f"{needs.binary_reward} read the reward as correct or incorrect (>= 0.5), but reward "
                              f"'{name}' is not binary; train with a verifier (shapes-geneval, geneval-mmdet) or turn "
                              "them off")


def _check_capabilities(cfg: RunConfig, method: Any, reward_name: str) -> None:
    if not method.REWARD_GRADIENT:
        return
    differentiable = getattr(load(reward_registry.REWARDS.target(reward_name)), "differentiable", False)
    if not differentiable:
        raise CapabilityError(f"method '{cfg.method}' backpropagates through the reward, but reward "
                              f"'{reward_name}' is not differentiable; use a reward-gradient-free method")
    if economy.check(cfg.reward_economy) != "exact":
        raise CapabilityError(f"method '{cfg.method}' backpropagates through the reward; reward economy "
                              f"'{cfg.reward_economy}' only serves ranking (use exact)")
