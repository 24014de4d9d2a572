"""Evaluators: held-out metrics computed from images the harness generated.

``EVALS`` maps each name to a factory. The harness evaluates every run with ``heldout`` for each of its
evaluation rewards; the benchmark evaluators (GenEval layout, HPDv3, Pick-a-Pic/Parti) are listed here too.
"""

from harness.registry import Registry

EVALS = Registry("evaluator", {
    "heldout": "evals.heldout:HeldoutReward",
})
