"""Shared fixtures: tiny offline profiles, a scratch results store, and test-only rewards."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test ever downloads
# One thread: robust on shared 2-core machines, where two threads per process can run ten times slower.
torch.set_num_threads(1)


def tiny_run(tmp_path, **changes):
    """A RunConfig for a 2-update DrPO run on the tiny profile writing under ``tmp_path``."""
    from harness.config import RunConfig

    base = dict(method="drpo", profile="tiny", reward="jpeg", evals=("jpeg",), k=4, prompts_per_step=1,
                updates=2, eval_at=(0.0, 1.0), eval_seeds=1, eval_prompt_limit=2, out=str(tmp_path))
    return RunConfig(**{**base, **changes})


@pytest.fixture(autouse=True)
def _forget_remembered_secrets():
    """Secrets a command remembers (``harness.redact.remember``) are masked for the rest of its process; in the
    one pytest process a test's secret (CI's database password is the word "driftbench") would otherwise mask
    later tests' output."""
    from harness import redact

    known = list(redact._KNOWN)
    yield
    redact._KNOWN[:] = known


@pytest.fixture
def store(tmp_path):
    from harness.store import Store

    return Store(tmp_path)


class ConstantReward:
    """A black-box reward for tests: the mean brightness, optionally corrupted."""

    name = "test-brightness"
    version = 1
    differentiable = False
    requires = "tests only"

    def __init__(self, answer: str = "ok"):
        self.answer = answer

    def score(self, images, prompts):
        values = images.float().mean(dim=(1, 2, 3)).tolist()
        if self.answer == "nan":
            values[0] = float("nan")
        elif self.answer == "short":
            values = values[:-1]
        elif self.answer == "text":
            return "not scores"
        return values


@pytest.fixture
def test_reward(monkeypatch):
    """Register ``test-ok``, ``test-nan``, ``test-short`` and ``test-text`` rewards for one test."""
    from rewards import REWARDS

    for answer in ("ok", "nan", "short", "text"):
        monkeypatch.setitem(REWARDS._entries, f"test-{answer}", f"tests.conftest:make_{answer}")
    return REWARDS


def make_ok():
    return ConstantReward("ok")


def make_nan():
    return ConstantReward("nan")


def make_short():
    return ConstantReward("short")


def make_text():
    return ConstantReward("text")
