"""The HPDv3 benchmark scored with HPSv3 (Ma et al., ICCV 2025; MizzenAI/HPSv3 ``evaluate/benchmark.py``).

    driftbench evaluate hpdv3 --run RUN_ID --prompts /data/hpdv3/prompts --reward remote:http://127.0.0.1:8001

HPSv3's protocol scores one image per prompt in each of 12 categories (Characters, Arts, Design, Architecture,
Animals, Natural Scenery, Transportation, Products, Plants, Food, Science, Others) and reports, per category, the
mean, standard deviation, minimum and maximum of the score, and **overall = the unweighted mean of the category
means**. The score is HPSv3's mu; any reward name works (default ``hpsv3``, which lives in its own environment,
so normally ``remote:URL`` to a server started by ``nox -s reward_env-hpsv3``).

**Prompt folder layout** (``--prompts DIR``; categories are sorted by name, names are kept as written):

* ``DIR/<category>/`` sub-folders: every ``*.txt`` file inside is **one** prompt (its whole text, stripped), the
  layout of HPSv3's benchmark folders, where each prompt file sits next to its image (images are ignored);
* ``DIR/<category>.txt``: one prompt per non-empty line;
* ``DIR/<category>.json``: a list of prompt strings or of objects with a ``prompt`` (or ``caption``) key;
* ``DIR/<category>.jsonl``: one prompt string or object per line;
* or ``--prompts FILE`` (``.json``, ``.jsonl``, ``.csv``, ``.tsv``) whose rows carry ``prompt`` and ``category``.

Files whose name starts with "." or "_" are skipped. **Seeds**: image j of the i-th prompt of a category uses the
harness's fixed evaluation seed ``EVAL_SEED_BASE + 1000 i + j``, the same for every method and for the base.
Outputs in ``<run>/hpdv3/``: ``scores.jsonl`` (category, index, prompt, seed, score per image) and
``summary.json`` (``scores``: per-category mean/std/min/max/n, ``overall``; plus the configuration).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from evals.bench import (
    PROMPT_COLUMNS,
    _table_rows,
    build_reward,
    heldout_seeds,
    read_prompts,
    record,
    save_png,
    score_prompts,
)
from harness.store import write_json
from harness.validate import Bound, at_least, check, nonnegative
from rewards import parse_options

CATEGORIES = ("Characters", "Arts", "Design", "Architecture", "Animals", "Natural Scenery", "Transportation",
              "Products", "Plants", "Food", "Science", "Others")
"""HPDv3's 12 categories (README order); folders are matched by name, so any set of names works."""
CATEGORY_KEYS = ("category", "Category", "class")


def _skip(path: Path) -> bool:
    return path.name.startswith((".", "_"))


def read_categories(path: str | Path) -> dict[str, list[str]]:
    """{category: [prompt, ...]} from a prompt folder or file in one of the accepted layouts (module doc)."""
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise ValueError("hpdv3 needs --prompts PATH: a folder with one sub-folder or file per category")
    if not path.exists():
        raise FileNotFoundError(f"HPDv3 prompt folder '{path}' does not exist")
    if path.is_file():
        return _from_table(path)
    out: dict[str, list[str]] = {}
    for entry in sorted(p for p in path.iterdir() if not _skip(p)):
        if entry.is_dir():
            files = sorted(p for p in entry.glob("*.txt") if p.is_file() and not _skip(p))
            prompts = [p.read_text(encoding="utf-8").strip() for p in files]
            prompts = [p for p in prompts if p]
            if not prompts:
                raise ValueError(f"HPDv3 category folder '{entry}' holds no .txt prompt files")
            out[entry.name] = prompts
        elif entry.suffix.lower() in (".txt", ".json", ".jsonl"):
            out[entry.stem] = read_prompts(entry, f"HPDv3 category '{entry.stem}'")
    if not out:
        raise ValueError(f"no HPDv3 categories in '{path}': expected <category>/ folders of .txt prompts or "
                         "<category>.txt/.json/.jsonl files")
    return out


def _from_table(path: Path) -> dict[str, list[str]]:
    """A single file whose rows carry a prompt and a category."""

    suffix = path.suffix.lower()
    rows: list[tuple[Any, Any]] = []
    if suffix in (".csv", ".tsv"):
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
        key = next((k for k in CATEGORY_KEYS if k in header), None)
        if key is None:
            raise ValueError(f"{path}: no category column; expected one of {list(CATEGORY_KEYS)}, found {header}")
        rows = list(_table_rows(path, "\t" if suffix == ".tsv" else ",", "hpdv3", extra=key))
    elif suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        try:
            items = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                raise ValueError(f"{path}: row {i} is not an object with a prompt and a category")
            category = next((item[k] for k in CATEGORY_KEYS if k in item), None)
            prompt = next((item[k] for k in PROMPT_COLUMNS if isinstance(item.get(k), str)), None)
            rows.append((category, prompt))
    else:
        raise ValueError(f"{path}: a single HPDv3 prompt file must be .json, .jsonl, .csv or .tsv with prompt and "
                         "category fields (or pass a folder)")
    out: dict[str, list[str]] = {}
    for i, (category, prompt) in enumerate(rows):
        if not category or not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: row {i} lacks a category or a prompt")
        out.setdefault(str(category), []).append(prompt.strip())
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return dict(sorted(out.items()))


def summarize_scores(scores: Mapping[str, list[float]]) -> dict[str, Any]:
    """Per category mean, std (population, as numpy's default), min, max and n; ``overall`` = the unweighted mean of
    the category means."""
    out: dict[str, Any] = {"categories": {}}
    for category, values in scores.items():
        n = len(values)
        mu = sum(values) / n
        out["categories"][category] = {"mean": mu, "std": math.sqrt(sum((v - mu) ** 2 for v in values) / n),
                                       "min": min(values), "max": max(values), "n": n}
    means = [c["mean"] for c in out["categories"].values()]
    out["overall"] = sum(means) / len(means)
    return out


@dataclass(frozen=True)
class Config:
    """``driftbench evaluate hpdv3`` options."""

    prompts: str = ""
    """The HPDv3 prompt folder (one sub-folder or file per category) or one file with prompt and category fields."""
    reward: str = "hpsv3"
    """Reward that scores the images: hpsv3 in its own environment, normally remote:http://HOST:PORT."""
    reward_options: tuple[str, ...] = ()
    """Reward options REWARD.KEY=VALUE (e.g. remote:http://127.0.0.1:8001.token=T)."""
    categories: tuple[str, ...] = ()
    """Only these categories (default: every category found)."""
    per_category: int = 0
    """Use the first N prompts of each category (0: all; 100 is a cheap subset)."""
    images_per_prompt: int = 1
    """Images per prompt (HPSv3's benchmark: 1)."""
    save_images: bool = False
    """Also write images/<category>/<i:05d>_<j>.png with the prompt in a .txt beside it (HPSv3's layout)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"per_category": nonnegative(), "images_per_prompt": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


class HPDv3Benchmark:
    """HPDv3/HPSv3: mean score per category and overall = unweighted mean of the category means."""

    name = "hpdv3"
    version = 1
    Config = Config

    def __init__(self, cfg: Config):
        check(cfg, "hpdv3")  # bounds, for callers that build the config in Python
        self.cfg = cfg
        found = read_categories(cfg.prompts)
        missing = [c for c in cfg.categories if c not in found]
        if missing:
            raise ValueError(f"hpdv3: categories {missing} are not in '{cfg.prompts}'; found: {', '.join(found)}")
        self.prompts = {c: p[: cfg.per_category or None] for c, p in found.items()
                        if not cfg.categories or c in cfg.categories}
        self.reward = build_reward(cfg.reward, parse_options(cfg.reward_options), "hpdv3")

    def run(self, gen: Any, dest: Path, *, reference: bool = False, batch_size: int = 16,
            info: Mapping[str, Any] | None = None) -> dict[str, Any]:

        info = dict(info or {})
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        n = self.cfg.images_per_prompt
        scores: dict[str, list[float]] = {}
        rows = []
        for category, prompts in self.prompts.items():
            def save(i: int, images: Any, category: str = category, prompts: list[str] = prompts) -> None:
                for j, image in enumerate(images):
                    stem = dest / "images" / category / f"{i:05d}_{j}"
                    save_png(image, stem.with_suffix(".png"))
                    stem.with_suffix(".txt").write_text(prompts[i], encoding="utf-8")

            per_prompt = score_prompts(gen, prompts, lambda i: heldout_seeds(i, n), {"score": self.reward},
                                       reference=reference, batch_size=batch_size,
                                       on_images=save if self.cfg.save_images else None)["score"]
            for i, values in enumerate(per_prompt):
                scores.setdefault(category, []).extend(values)
                rows += [{"category": category, "index": i, "prompt": prompts[i], "seed": seed, "score": value}
                         for value, seed in zip(values, heldout_seeds(i, n))]
        with open(dest / "scores.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        summary = {**record(self.name, self.version, self.cfg, run_id=info.get("run_id", ""), reference=reference,
                            weights=info.get("weights", ""), profile=info.get("profile", "")),
                   "scores": summarize_scores(scores), "reward": self.reward.name,
                   "reward_version": getattr(self.reward, "version", None), "dest": str(dest)}
        write_json(dest / "summary.json", summary)
        return summary
