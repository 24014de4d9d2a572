"""The main table's sections: per profile, which preset each section runs and which methods it compares.

Beside the presets (``harness/presets.py``) because a section is a preset plus a list of methods; read by
``driftbench table2`` (``harness/reporting/reproduce.py``) and by ``driftbench tune``, which tunes every
method of a tuned section with equal effort. ``DESIGNS`` holds each profile's evaluation design (seeds, test
and curve images), which the table and the limitations study share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    title: str
    preset: str
    methods: tuple[str, ...]
    tuned: bool = False
    """Take every method's config from the committed tuned file (``driftbench tune``), not the preset."""


PAPER_METHODS = ("drpo", "draft", "vggflow", "dpo1", "pso", "ngrpo")
"""The six methods of the paper's tables (DrPO, the two reward-backprop references, three gradient-free baselines)."""

_SHAPES_PREF_METHODS = ("drpo", "dpo1", "pso", "ngrpo", "draft", "vggflow")
_SHAPES_GENEVAL_METHODS = ("drpo", "dpo1", "pso", "ngrpo")
SECTIONS: dict[str, tuple[Section, ...]] = {
    "shapes": (
        Section("Shapes world, trained with shapes-pref (learned, differentiable), tuned", "shapes-pref",
                _SHAPES_PREF_METHODS, tuned=True),
        Section("Shapes world, trained with shapes-geneval (binary verifier, not differentiable), tuned",
                "shapes-geneval", _SHAPES_GENEVAL_METHODS, tuned=True),
    ),
    "shapes-defaults": (
        Section("Shapes world, trained with shapes-pref, paper-default (untuned) configurations", "shapes-pref",
                _SHAPES_PREF_METHODS),
        Section("Shapes world, trained with shapes-geneval, paper-default (untuned) configurations",
                "shapes-geneval", _SHAPES_GENEVAL_METHODS),
    ),
    # Edition 2 of the Shapes world (issue 18): its tuned sections read harness/tuned/shapes2.json once
    # `driftbench tune --profile shapes2` has written it; until then only the untuned sections run.
    "shapes2": (
        Section("Shapes world (edition 2), trained with shapes2-pref (learned, differentiable), tuned",
                "shapes2-pref", _SHAPES_PREF_METHODS, tuned=True),
        Section("Shapes world (edition 2), trained with shapes2-geneval (binary verifier), tuned",
                "shapes2-geneval", _SHAPES_GENEVAL_METHODS, tuned=True),
    ),
    "shapes2-defaults": (
        Section("Shapes world (edition 2), trained with shapes2-pref, paper-default (untuned) configurations",
                "shapes2-pref", _SHAPES_PREF_METHODS),
        Section("Shapes world (edition 2), trained with shapes2-geneval, paper-default (untuned) configurations",
                "shapes2-geneval", _SHAPES_GENEVAL_METHODS),
    ),
    "tiny": (Section("Tiny profile, trained with JPEG compressibility", "tiny-jpeg", ("drpo",)),),
    "sd-turbo": (Section("SD-Turbo, trained with PickScore (the paper's SD-Turbo setting)", "paper-sd-turbo",
                         PAPER_METHODS),),
    "sdxl-turbo": (Section("SDXL-Turbo, trained with PickScore (the paper's SDXL-Turbo MAE setting)", "paper-sdxl-turbo",
                           PAPER_METHODS),),
}
"""Table sections per profile."""

@dataclass(frozen=True)
class Design:
    """A table's evaluation design: what ``driftbench table2`` takes where its flags are left empty."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Training seeds."""
    test_seeds: int = 16
    """Test images per prompt."""
    curve_seeds: int = 4
    """Images per prompt of the over-optimisation curve's split."""


DESIGNS: dict[str, Design] = {"shapes2": Design(seeds=tuple(range(8)), test_seeds=4, curve_seeds=2)}
"""Per profile, where it differs from ``Design()``. Edition 2 (issue 18): in the committed pilot
(``results/power-pilot2/power.md``) the training seed is 88% of the test gold's variance and the observed sd of a
seed-paired difference is 0.019, so a 95% paired half-width of 0.015 needs 9 seeds (t(0.975, 8) x 0.019 / 3 =
0.0146), while 4 test images instead of 16 move the minimum detectable difference at 5 seeds only from 0.0312 to
0.0328: evaluation goes where it is cheap to cut and seeds where power comes from. At 8 test images a run spent 13-14 s
per test evaluation (its ``clock``, two per run when selection keeps an earlier point) against 30-35 s of training,
and the 90 runs paced at about 60 minutes on 2 cores, over the table's 45-minute ceiling.

Seeds, measured on the tuned table itself (``driftbench table2 --profile shapes2 --seeds 0 .. n-1`` over the
stored runs of 9 seeds; each seed is 10 runs, 10.8 minutes of one core, 5.4 on two): the widest 95% half-width of
a paired gold delta is 0.0191 / 0.0169 / 0.0157 / 0.0134 / 0.0120 at 5 / 6 / 7 / 8 / 9 seeds, and the 0.015
target holds for 5 / 7 / 7 / 8 / 8 of the 8 deltas. 8 seeds is the fewest that meets it on every delta and fits
about 45 minutes; 9 took 49.8 minutes (README)."""
