"""What ``driftbench list`` prints: every registered component with its requirements.

Reward and method attributes are read from their classes and modules without building anything heavy.
"""

from __future__ import annotations

from evals import EVALS
from harness.presets import PRESETS
from harness.profiles import PROFILES
from harness.registry import load
from methods import METHODS
from rewards import REWARDS


def _first_line(obj) -> str:
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def describe() -> str:
    lines = ["methods (reward gradient: the method backpropagates through the reward):"]
    for name in METHODS:
        module = METHODS.get(name)
        grad = "yes" if module.REWARD_GRADIENT else "no"
        lines.append(f"  {name:<10} v{module.VERSION}  reward gradient: {grad:<3}  {_first_line(module)}")
    lines.append("rewards (differentiable: usable by reward-gradient methods):")
    for name in REWARDS:
        cls = load(REWARDS.target(name))
        diff = "yes" if getattr(cls, "differentiable", False) else "no"
        lines.append(f"  {name:<24} differentiable: {diff:<3}  needs: {getattr(cls, 'requires', '?')}")
    for prefix in REWARDS.patterns():
        cls = load(REWARDS.target(prefix + "x"))
        lines.append(f"  {prefix + '...':<24} differentiable: no   needs: {getattr(cls, 'requires', '?')}")
    lines.append("evaluators:")
    lines += [f"  {name:<16} {_first_line(load(EVALS.target(name)))}" for name in EVALS]
    lines.append("profiles:")
    lines += [f"  {name:<18} {_first_line(load(PROFILES.target(name)))}" for name in PROFILES]
    lines.append("presets:")
    lines += [f"  {name:<20} {preset.description}" for name, preset in PRESETS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``driftbench list``."""
    if argv:
        raise ValueError(f"driftbench list takes no options, got {' '.join(argv)}")
    print(describe())
    return 0
