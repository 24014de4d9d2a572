"""The plan of ``driftbench limitations`` (issue 22): its config, its two scales and the runs each part needs.

The study sweeps one factor at a time around a base DrPO configuration (the section's tuned point, or its
preset when no tuned file covers it) and trains every other method of the section beside it, so that the
report can set DrPO against the base generator, the best baseline, best-of-K at inference and an offline
start. Everything here is pure: it builds run configurations and counts work; ``limitations.py`` runs them.

K is swept two ways (:func:`k_points`):

* **matched images**: K x prompts per micro-batch is held at the base's, so a larger K sees fewer prompts per
  update for the same samples, reference passes and reward calls;
* **matched prompts**: prompts per micro-batch are held, so a larger K is more images (and compute) per update.

The paper's K ablation (SD-Turbo, PickScore 23.24 -> 23.53 -> 23.57 at K = 16, 24, 32) is the second kind
[inferred from the official launch script, drpo.sh@61329a4: prompts per update are fixed by 4 GPUs x 1 prompt x
grad-accum 8, and K is ``batchsize_gen`` alone]: each step of it also spends more images per update.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from harness.config import K_MAX, RunConfig
from harness.presets import get as get_preset
from harness.sections import DESIGNS
from harness.studies.tuned import tuned_configs
from harness.validate import Bound, at_least, within

PARTS = ("sweeps", "prompts", "best-of-k", "offline")
"""The report's parts: one-factor sweeps, prompt selection, best-of-K, offline -> online."""
FACTORS = ("bandwidth", "k-images", "k-prompts", "m", "lambda", "reference", "features")
"""The swept factors: the radius scale of the preference field's kernel, K at matched images, K at matched
prompts, M, lambda (the reference drift's weight), the reference objective and the feature space."""


@dataclass(frozen=True)
class Scale:
    """One size of the study: its world, the section it sweeps around and every factor's values."""

    profile: str
    preset: str
    """The section's preset: its RunConfig and its methods' configurations."""
    methods: tuple[str, ...]
    """The section's methods, DrPO first: the others are the baselines."""
    seeds: tuple[int, ...]
    test_seeds: int
    run: dict[str, Any]
    """RunConfig changes to the preset's (smoke: fewer updates and evaluation images)."""
    method_changes: dict[str, dict[str, Any]]
    """Per-method Config changes applied after the tuned or preset configuration (smoke: M that fits its K)."""
    bandwidth: tuple[float, ...]
    """Scales of the base's preference-kernel radii (``radii``), as DrPO's search space scales them."""
    k: tuple[int, ...]
    m: tuple[int, ...]
    lam: tuple[float, ...]
    reference: tuple[str, ...]
    """Reference objectives (``drpo.Config.reference``), searched by the sensitivity study as an extra parameter
    and swept here on test."""
    features: tuple[str, ...]
    best_of_k: tuple[int, ...]
    """Best-of-K references on the test split (the run's K, the matched one, is always added; K = 1 is the base)."""
    offline_updates: int
    split: str
    """Which test evaluation the report reads: "test_selected" (the validation-selected checkpoint, as the table) or
    "test" (the final weights)."""
    study: str
    """Name of DrPO's sensitivity study (``driftbench study``) whose stored report is quoted."""
    study_space: tuple[str, ...]
    """The study's ``--space`` entries beside the held learning rate: K at matched prompts and the reference
    objective (an extra parameter: DrPO's ``space()``, which tuning uses, leaves it out)."""
    earlier_study: tuple[str, str]
    """An earlier sensitivity study of the same section, quoted beside this one, and how it differs ("", "": none):
    another draw of random trials shows whether the importances would rank alike."""
    study_trials: int
    """Its trials, all drawn at random (``--startup-trials`` = ``--trials``: uniform coverage of the space, which
    importances need, rather than TPE's crowding near the best) and none pruned."""
    reps: int
    """Prompt-bootstrap replicates."""


_METHODS = ("drpo", "dpo1", "pso", "ngrpo", "draft", "vggflow")
SCALES: dict[str, Scale] = {
    # About a minute on one free core: 2 updates of 2 prompts x K 4 on the first Shapes edition, 2 seeds, 4
    # validation prompts and 2 test images per prompt; a learning rate of 1e-2 for every method so that 2 updates
    # move the generator, read at the final weights (selection on 4 validation images keeps the start). Its
    # numbers show the pipeline works, nothing more.
    "smoke": Scale(profile="shapes", preset="shapes-pref", methods=_METHODS, seeds=(0, 1), test_seeds=2,
                   run=dict(updates=2, k=4, prompts_per_step=2, eval_at=(0.0, 1.0), eval_seeds=1,
                            eval_prompt_limit=4, checkpoint_every=0),
                   method_changes={m: {"lr": 1e-2, **({"m": 2} if m in ("drpo", "dpo1") else {})} for m in _METHODS},
                   bandwidth=(0.5, 1.0), k=(4, 8), m=(1, 2),
                   lam=(0.0, 0.2), reference=("drift", "none"), features=("latent", "latent-tokens", "encoder"), best_of_k=(1, 2), offline_updates=2, split="test",
                   study="shapes-drpo-sensitivity", study_space=("k=4:8", "reference=drift,none"), earlier_study=("", ""), study_trials=8, reps=500),
    # The real study (issue 22) on the second Shapes edition: the section's full budget (96 updates of
    # 2 prompts x K 16), 5 seeds per point, the test split at 4 images per prompt and the test curve at 2 as the
    # table has them (``harness.sections.DESIGNS``; so the base point and the baselines are the table's runs of
    # seeds 0-4, reused by key).
    "full": Scale(profile="shapes2", preset="shapes2-pref", methods=_METHODS, seeds=(0, 1, 2, 3, 4),
                  test_seeds=DESIGNS["shapes2"].test_seeds,
                  run=dict(curve_split="test", curve_seeds=DESIGNS["shapes2"].curve_seeds), method_changes={}, bandwidth=(0.25, 0.5, 1.0, 2.0, 4.0), k=(8, 16, 24, 32), m=(2, 4, 6, 8),
                  lam=(0.0, 0.2, 0.5, 1.0), reference=("drift", "perceptual", "none"), features=("encoder", "latent-tokens", "latent"), best_of_k=(1, 4, 16),
                  offline_updates=96, split="test_selected", study="shapes2-drpo-sensitivity-v2",
                  study_space=("k=16:32", "reference=drift,perceptual,none"), study_trials=36,
                  earlier_study=("shapes2-drpo-sensitivity", "K from 8 to 32, the reference objective not searched"),
                  reps=4000),
}


@dataclass(frozen=True)
class LimitationsConfig:
    """``driftbench limitations`` / ``nox -s limitations``."""

    scale: Literal["smoke", "full"] = "full"
    """"full": the study on the second Shapes edition (hours of CPU: the smoke report ends with the estimate);
    "smoke": the same plan in a minute or two on the first edition (CI, tests; its numbers answer nothing)."""
    seeds: tuple[int, ...] = ()
    """Training seeds of every point (empty: the scale's: smoke 0 1, full 0-4)."""
    test_seeds: int = 0
    """Test images per prompt (0: the scale's: smoke 2, full 4, as the table)."""
    base: Literal["auto", "tuned", "preset"] = "auto"
    """The configurations swept around: "tuned" (the tuned file's section), "preset", or "auto" (tuned where
    the tuned file has the section and method, else the preset)."""
    tuned_file: str = ""
    """Tuned file for --base tuned/auto; empty: ``harness/tuned/<profile>.json``."""
    parts: tuple[Literal["sweeps", "prompts", "best-of-k", "offline"], ...] = PARTS
    """Which parts to run and report."""
    factors: tuple[Literal["bandwidth", "k-images", "k-prompts", "m", "lambda", "reference", "features"], ...] = FACTORS
    """Which factors the sweeps part varies."""
    k: tuple[int, ...] = ()
    """K values of both K sweeps (empty: the scale's)."""
    reps: int = 0
    """Prompt-bootstrap replicates (0: the scale's)."""
    out: str = "results"
    """Results root: runs in <out>/runs, best-of-K in <out>/references, the report in <out>/limitations.md
    (smoke: limitations-smoke.md) with its figures in <out>/limitations[-smoke]/."""
    jobs: int = 2
    """Runs in parallel, one torch thread each."""
    progress: bool = True
    """Show the progress bar."""
    plots: bool = True
    """Draw the figures."""
    wait: bool = False
    """Wait for another process writing this root's study (or a run it needs) instead of refusing."""
    source: Literal["runs", "record"] = "runs"
    """"runs": run (or reuse) the plan in <out>/runs, then write the report and its record
    (<out>/limitations[-smoke]/record.tar.xz: what the report reads, about 1 MB); "record": write the report from that
    record alone, training nothing (how a fresh clone re-renders the committed report; ``limitations_record``)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"seeds": Bound(low=0, distinct=True), "test_seeds": at_least(1, zero=True),
                                          "k": within(2, K_MAX), "reps": at_least(2, zero=True), "jobs": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


@dataclass(frozen=True)
class KPoint:
    k: int
    prompts: int
    """Prompts per micro-batch (0: the point cannot be run; ``note`` says why)."""
    images: int
    """Images per update: K x prompts x grad-accum."""
    note: str = ""


def k_points(k0: int, prompts0: int, grad_accum: int, ks: tuple[int, ...], way: str, m: int = 1) -> list[KPoint]:
    """The K sweep around K = ``k0`` with ``prompts0`` prompts per micro-batch: ``way`` "k-images" holds
    K x prompts at k0 x prompts0 (a K that does not divide it cannot), "k-prompts" holds the prompts. A K below
    2M cannot hold M disjoint positives and negatives."""
    if way not in ("k-images", "k-prompts"):
        raise ValueError(f"unknown K sweep '{way}'; valid: k-images, k-prompts")
    out = []
    for k in ks:
        if k < 2 * m:
            out.append(KPoint(k, 0, 0, f"K={k} < 2M = {2 * m}: no disjoint top-M and bottom-M"))
        elif way == "k-prompts":
            out.append(KPoint(k, prompts0, k * prompts0 * grad_accum))
        elif (k0 * prompts0) % k:
            out.append(KPoint(k, 0, 0, f"K={k} does not divide the {k0 * prompts0} images per micro-batch"))
        else:
            out.append(KPoint(k, k0 * prompts0 // k, k0 * prompts0 * grad_accum))
    return out


@dataclass(frozen=True)
class Point:
    """One configuration of the plan, run at every seed."""

    part: str
    """"base", a factor of FACTORS, "baseline", "offline", "online" (the offline runs continued online) or "long"
    (online from scratch for the offline plus the online updates)."""
    value: str
    """The factor's value as the report shows it (a method name for baselines)."""
    method: str
    run: RunConfig
    """Its RunConfig; the seed (and for "online" the source run) is set per run."""
    method_cfg: Any
    note: str = ""
    """Why the point is not run (then ``run`` is the base's and nothing is trained for it)."""

    @property
    def images(self) -> int:
        return self.run.k * self.run.prompts_per_step * self.run.grad_accum

    @property
    def label(self) -> str:
        return f"{self.part}-{self.value}" if self.part not in ("base", "offline", "online", "long") else self.part


@dataclass(frozen=True)
class Resolved:
    """The section's configurations: the shared RunConfig per method and each method's Config."""

    runs: dict[str, RunConfig]
    configs: dict[str, Any]
    source: dict[str, str] = field(default_factory=dict)
    """Per method: "tuned (FILE)" or "preset NAME"."""


def scale_of(cfg: LimitationsConfig) -> Scale:
    """The scale with the config's overrides (seeds, test seeds, K values, replicates) applied."""
    scale = SCALES[cfg.scale]
    return dataclasses.replace(scale, seeds=cfg.seeds or scale.seeds, test_seeds=cfg.test_seeds or scale.test_seeds,
                               k=cfg.k or scale.k, reps=cfg.reps or scale.reps)


def resolve(cfg: LimitationsConfig, scale: Scale) -> Resolved:
    """Every method's RunConfig and Config in the section (tuned or preset, then the scale's changes)."""
    preset = get_preset(scale.preset)
    tuned: dict[str, Any] = {}
    where = cfg.tuned_file or f"harness/tuned/{scale.profile}.json"
    if cfg.base != "preset":
        try:
            tuned = tuned_configs(scale.preset, cfg.tuned_file or None, scale.profile)
        except (FileNotFoundError, ValueError) as exc:
            if cfg.base == "tuned":
                raise ValueError(f"limitations --base tuned: {str(exc).splitlines()[0]}") from None
    runs, configs, source = {}, {}, {}
    for method in scale.methods:
        if cfg.base == "tuned" and method not in tuned:
            raise ValueError(f"limitations --base tuned: {where} has no {scale.preset} config for '{method}'")
        base = tuned.get(method) or preset.method_config(method)
        configs[method] = dataclasses.replace(base, **scale.method_changes.get(method, {}))
        source[method] = f"tuned ({where})" if method in tuned else f"preset {scale.preset}"
        runs[method] = preset.run_for(method).replace(method=method, test_split="test", test_seeds=scale.test_seeds,
                                                      **scale.run)
    return Resolved(runs, configs, source)


def _with_base(values: tuple, base: Any) -> tuple:
    return tuple(sorted(set(values) | {base}, key=lambda v: (isinstance(v, str), v)))


def sweep_points(scale: Scale, res: Resolved, factors: tuple[str, ...]) -> list[Point]:
    """The base point and every factor's points (each sweep includes the base's own value)."""
    run0, drpo = res.runs["drpo"], res.configs["drpo"]
    points = [Point("base", "base", "drpo", run0, drpo)]
    for factor in factors:
        if factor == "bandwidth":
            for s in _with_base(scale.bandwidth, 1.0):
                radii = drpo.radii if s == 1.0 else tuple(r * s for r in drpo.radii)
                points.append(Point(factor, f"{s:g}", "drpo", run0, dataclasses.replace(drpo, radii=radii)))
        elif factor in ("k-images", "k-prompts"):
            for kp in k_points(run0.k, run0.prompts_per_step, run0.grad_accum, _with_base(scale.k, run0.k), factor,
                               drpo.m):
                run = run0.replace(k=kp.k, prompts_per_step=kp.prompts) if kp.prompts else run0
                points.append(Point(factor, str(kp.k), "drpo", run, drpo, kp.note))
        elif factor == "m":
            for m in _with_base(scale.m, drpo.m):
                note = "" if 2 * m <= run0.k else f"M={m} needs K >= {2 * m} (K = {run0.k})"
                points.append(Point(factor, str(m), "drpo", run0, dataclasses.replace(drpo, m=m if not note else drpo.m),
                                    note))
        elif factor == "lambda":
            for lam in _with_base(scale.lam, drpo.lam):
                points.append(Point(factor, f"{lam:g}", "drpo", run0, dataclasses.replace(drpo, lam=lam)))
        elif factor == "reference":
            for objective in _with_base(scale.reference, drpo.reference):
                points.append(Point(factor, objective, "drpo", run0, dataclasses.replace(drpo, reference=objective)))
        elif factor == "features":
            for space in _with_base(scale.features, drpo.features):
                grouping = "position" if space == "latent-tokens" else "prompt"
                changed = drpo if space == drpo.features else dataclasses.replace(drpo, features=space, grouping=grouping)
                points.append(Point(factor, space, "drpo", run0, changed))
    return points


def plan_points(cfg: LimitationsConfig, scale: Scale, res: Resolved) -> list[Point]:
    """Every point the chosen parts need (the base and the baselines are shared by the parts)."""
    points = sweep_points(scale, res, tuple(cfg.factors) if "sweeps" in cfg.parts else ())
    if {"prompts", "best-of-k"} & set(cfg.parts):
        points += [Point("baseline", m, m, res.runs[m], res.configs[m]) for m in scale.methods if m != "drpo"]
    if "offline" in cfg.parts:
        run0, drpo = res.runs["drpo"], res.configs["drpo"]
        points.append(Point("offline", "offline", "drpo", run0.replace(offline_data=True, updates=scale.offline_updates),
                            dataclasses.replace(drpo, anchors="offline")))
        points.append(Point("online", "online", "drpo", run0, drpo))  # init_from: the seed's offline run
        # The control that tells an offline start from more updates: online from scratch for as many updates as
        # the offline and the online run together.
        points.append(Point("long", "long", "drpo", run0.replace(updates=run0.updates + scale.offline_updates), drpo))
    return points


def point_run(point: Point, seed: int, out: str, sources: dict[int, str] | None = None) -> RunConfig:
    """The RunConfig of ``point`` at ``seed``: an "online" point starts from ``sources[seed]`` (the seed's offline
    run)."""
    run = point.run.replace(seed=seed, out=out)
    return run.replace(init_from=(sources or {})[seed]) if point.part == "online" else run


def best_of_k_values(cfg: LimitationsConfig, scale: Scale, res: Resolved) -> tuple[int, ...]:
    """K of every best-of-K reference: K = 1 (the base's per-image scores) whenever DrPO is compared with the
    base, and the scale's values plus the run's K (the matched reward calls) for the best-of-K part."""
    ks = {1} if "prompts" in cfg.parts else set()
    if "best-of-k" in cfg.parts:
        ks |= set(scale.best_of_k) | {1, res.runs["drpo"].k}
    return tuple(sorted(ks))


@dataclass(frozen=True)
class Plan:
    """What one call resolved and ran: the report reads every number from the store through these ids."""

    cfg: LimitationsConfig
    scale: Scale
    resolved: Resolved
    points: list[Point]
    runs: dict[int, dict[int, str]]
    """Point index -> {seed: run id} (points with a note have none)."""
    refs: dict[int, str]
    """K -> best-of-K reference id (under <out>/references)."""
    root: str = ""
    """The store root the report reads runs and references from (empty: ``cfg.out``; with ``--source record`` the
    unpacked record)."""

    @property
    def store_root(self) -> str:
        return self.root or self.cfg.out

    @property
    def gold(self) -> str:
        """The gold reward: the one checkpoints are selected on (the section's verifier)."""
        return self.resolved.runs["drpo"].select_metric.split("/")[0]

    @property
    def at(self) -> str:
        """Which weights the test numbers are of, in words."""
        return "the selected checkpoint" if self.scale.split == "test_selected" else "the final weights"

    @property
    def proxy(self) -> str:
        return self.resolved.runs["drpo"].reward

    def index(self, part: str, value: str | None = None) -> int | None:
        """The first point of ``part`` (with ``value``), or None."""
        return next((i for i, p in enumerate(self.points) if p.part == part and (value is None or p.value == value)),
                    None)
