"""Evaluators: held-out metrics computed from images the harness generated.

``EVALS`` maps each name to a factory. The harness evaluates every run with ``heldout`` for each of its
evaluation rewards; the benchmark evaluators (GenEval, HPDv3, Pick-a-Pic/Parti) run after training through
``driftbench evaluate NAME --run RUN_ID`` (``evals/bench.py`` describes their shared shape).
"""

from harness.registry import Registry

EVALS = Registry("evaluator", {
    "heldout": "evals.heldout:HeldoutReward",
    "geneval": "evals.geneval_bench:GenEvalBenchmark",
    "hpdv3": "evals.hpdv3:HPDv3Benchmark",
    "pickapic-parti": "evals.pickapic:PickapicPartiBenchmark",
})
