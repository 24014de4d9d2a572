"""Pick-a-Pic v2 test and Parti-Prompts, scored like the DrPO paper's tables (drpo-method.md section 2.4).

    driftbench evaluate pickapic-parti --run RUN_ID --pickapic /data/pickapic_v2_test_unique.txt \\
        --parti /data/PartiPrompts.tsv --reward-options pickscore.model=/data/PickScore_v1 \\
        --imagereward remote:http://127.0.0.1:8003 --hpsv2 remote:http://127.0.0.1:8004

Columns, each the mean over images of one reward times a fixed scale (the paper's convention):

* ``PS``: PickScore x 100. The ``pickscore`` reward already returns ``logit_scale.exp() * cos`` = 100 cos for
  PickScore_v1 (about 22), so its scale is 1.
* ``AES``: the LAION aesthetic predictor (``aesthetic``), scale 1.
* ``IR``: ImageReward x 10 (``imagereward``, its standardised score; own environment, so normally ``remote:URL``).
* ``HPSv2``: HPSv2.1 x 100 (``hpsv2`` returns the cosine; own environment, normally ``remote:URL``).

Each column's reward is any registered name, in-process or ``remote:URL``; ``--imagereward ""`` drops a column.
Every reward is built (and every prompt file read) before anything is generated, so a missing file, an unknown
reward or one that cannot load here fails at once with the column it belongs to. Prompt files: ``.txt`` (one per
line), ``.tsv``/``.csv`` with a ``Prompt``/``prompt`` column (``PartiPrompts.tsv`` as published), ``.json`` or
``.jsonl``. **Seeds**: image j of prompt i of a set uses ``EVAL_SEED_BASE + 1000 i + j`` (the harness's fixed
evaluation seeds), the same for every method and for the base. Outputs in ``<run>/pickapic-parti/``:
``scores.jsonl`` (set, index, prompt, seed and each column's scaled score per image) and ``summary.json``
(``scores``: {set: {column: mean}}, ``stats`` with standard errors and counts, and the column definitions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from evals.bench import build_reward, heldout_seeds, read_prompts, record, score_prompts
from harness.config import parse_kv
from harness.store import write_json
from harness.validate import Bound, at_least, check, nonnegative
from rewards import parse_options


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    scale: float
    field: str
    """The Config field (and CLI flag) that names this column's reward."""
    reward: str = ""
    """The reward name, once a Config has chosen it."""


COLUMNS = (
    Column("PS", "PickScore x100", 1.0, "pickscore"),
    Column("AES", "LAION aesthetic", 1.0, "aesthetic"),
    Column("IR", "ImageReward x10", 10.0, "imagereward"),
    Column("HPSv2", "HPSv2.1 x100", 100.0, "hpsv2"),
)
SETS = (("pickapic", "Pick-a-Pic v2 test"), ("parti", "Parti-Prompts"))


@dataclass(frozen=True)
class Config:
    """``driftbench evaluate pickapic-parti`` options."""

    pickapic: str = ""
    """Pick-a-Pic v2 test prompts (e.g. the unique test captions, one per line); empty skips the set."""
    parti: str = ""
    """Parti-Prompts (PartiPrompts.tsv, column Prompt); empty skips the set."""
    pickscore: str = "pickscore"
    """Reward of the PS column (PickScore x100); empty drops the column."""
    aesthetic: str = "aesthetic"
    """Reward of the AES column (LAION aesthetic); empty drops the column."""
    imagereward: str = "imagereward"
    """Reward of the IR column (ImageReward x10; normally remote:URL); empty drops the column."""
    hpsv2: str = "hpsv2"
    """Reward of the HPSv2 column (HPSv2.1 x100; normally remote:URL); empty drops the column."""
    reward_options: tuple[str, ...] = ()
    """Reward options REWARD.KEY=VALUE, e.g. pickscore.model=/data/PickScore_v1 aesthetic.head=/data/sac.pth."""
    scales: tuple[str, ...] = ()
    """Override a column's scale, COLUMN=FACTOR (e.g. PS=100 for a reward that returns the plain cosine)."""
    images_per_prompt: int = 1
    """Images per prompt."""
    limit: int = 0
    """Use the first N prompts of each set (0: all)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"images_per_prompt": at_least(1), "limit": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


class PickapicPartiBenchmark:
    """Pick-a-Pic v2 test and Parti-Prompts: PickScore x100, aesthetic, ImageReward x10 and HPSv2 x100 means."""

    name = "pickapic-parti"
    version = 1
    Config = Config

    def __init__(self, cfg: Config):
        check(cfg, "pickapic-parti")  # bounds, for callers that build the config in Python
        self.cfg = cfg
        self.sets = {key: read_prompts(getattr(cfg, key), f"pickapic-parti --{key} ({title})")[: cfg.limit or None]
                     for key, title in SETS if getattr(cfg, key)}
        if not self.sets:
            raise ValueError("pickapic-parti needs --pickapic FILE and/or --parti FILE (prompt files)")
        overrides = parse_kv(cfg.scales)
        unknown = sorted(set(overrides) - {c.key for c in COLUMNS})
        if unknown:
            raise ValueError(f"unknown column(s) {unknown} in --scales; columns: {', '.join(c.key for c in COLUMNS)}")
        self.columns = [Column(c.key, c.title, float(overrides.get(c.key, c.scale)), c.field, getattr(cfg, c.field))
                        for c in COLUMNS if getattr(cfg, c.field)]
        if not self.columns:
            raise ValueError("pickapic-parti: every column is disabled; name at least one reward")
        options = parse_options(cfg.reward_options)
        self.rewards = {c.key: build_reward(c.reward, options, f"pickapic-parti column {c.key} ({c.title}; choose "
                                            f"its reward with --{c.field} NAME, or drop it with --{c.field} '')")
                        for c in self.columns}

    def run(self, gen: Any, dest: Path, *, reference: bool = False, batch_size: int = 16,
            info: Mapping[str, Any] | None = None) -> dict[str, Any]:

        info = dict(info or {})
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        n = self.cfg.images_per_prompt
        scale = {c.key: c.scale for c in self.columns}
        scores: dict[str, dict[str, float]] = {}
        stats: dict[str, dict[str, dict[str, float]]] = {}
        rows = []
        for key, prompts in self.sets.items():
            per_prompt = score_prompts(gen, prompts, lambda i: heldout_seeds(i, n), self.rewards, reference=reference,
                                       batch_size=batch_size)
            for i, prompt in enumerate(prompts):
                for j, seed in enumerate(heldout_seeds(i, n)):
                    rows.append({"set": key, "index": i, "prompt": prompt, "seed": seed,
                                 **{c: per_prompt[c][i][j] * scale[c] for c in self.rewards}})
            stats[key] = {c: _stats([v * scale[c] for vs in per_prompt[c] for v in vs]) for c in self.rewards}
            scores[key] = {c: s["mean"] for c, s in stats[key].items()}
        with open(dest / "scores.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        columns = {c.key: {"title": c.title, "reward": self.rewards[c.key].name, "requested": c.reward,
                           "version": getattr(self.rewards[c.key], "version", None), "scale": c.scale}
                   for c in self.columns}
        summary = {**record(self.name, self.version, self.cfg, run_id=info.get("run_id", ""), reference=reference,
                            weights=info.get("weights", ""), profile=info.get("profile", "")),
                   "scores": scores, "stats": stats, "columns": columns,
                   "prompts": {k: len(v) for k, v in self.sets.items()}, "dest": str(dest)}
        write_json(dest / "summary.json", summary)
        return summary


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mu = sum(values) / n
    sem = math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean": mu, "sem": sem, "n": n}
