"""Shapes-world prompts in GenEval's wording, their GenEval-format metadata, splits, parsing and validation.

Vocabulary: an edition's (``harness.shapes.editions``; the module constants are edition 1's). Edition 1 has 126
prompts: single_object 3, two_object 6 (ordered, distinct shapes), counting 9 (2-4 of a shape), colors 12,
position 24 (ordered distinct shapes x 4 relations), color_attr 72 (ordered distinct shapes x ordered distinct
colours). color_attr requires distinct shapes because GenEval's rule cannot be satisfied otherwise.

Splits (edition 1; edition 2 splits by canonical task, see ``split``): per tag, a seeded 25% of the prompts is held
out and never appears in training ("heldout"); the held-out prompts of each tag are split again into a validation half ("val": tuning, early stopping, every choice
made while developing) and a test half ("test": read only by the final table). single_object has only three
prompts, so it is not split: its prompts are in every split (``SHARED_TAGS``), and held-out figures for that tag
measure training prompts. Decisions therefore use ``overall_disjoint`` (GenEval's overall without the shared
tags; ``DISJOINT_TAGS``). The generator, encoders and reward were pretrained on "train" only, so every val and
test prompt is unseen by them. Metadata dicts stay byte-compatible with GenEval's files, so the flag lives in
``SHARED_TAGS`` / ``is_shared`` rather than in the dicts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.registry import unknown
from harness.shapes.editions import BACKGROUND as BACKGROUND  # re-exported: the world's background colour
from harness.shapes.editions import EDITIONS as EDITIONS_BY_NUMBER
from harness.shapes.editions import FIRST, PLURAL_FORMS, Edition

SHAPES = FIRST.shapes
"""Edition 1's shapes; ``harness.shapes.editions`` holds every edition's vocabulary."""
COLORS: dict[str, tuple[int, int, int]] = FIRST.palette
"""Edition 1's colours (RGB)."""
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = FIRST.numbers
PLURALS = FIRST.plurals
SPLITS = ("train", "val", "test", "heldout")
"""``heldout`` is val + test (the pretraining-era split: ``measure`` reads it)."""
SHARED_TAGS = ("single_object",)
DISJOINT_TAGS = tuple(t for t in TAGS if t not in SHARED_TAGS)
"""Tags whose train, val and test prompts are disjoint; ``overall_disjoint`` averages these."""
HELDOUT_FRACTION = 0.25
TASKS_PER_SPLIT = 24
"""Edition 2: canonical tasks per disjoint tag in val and in test."""

_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_CLAUSE_KEYS = {"class", "count", "color", "position"}
_META_KEYS = {"tag", "include", "exclude", "prompt"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" or word.startswith("hour") else "a"


def _obj(shape: str, color: str | None = None) -> str:
    """'a circle' / 'a red circle'."""
    head = f"{color} {shape}" if color else shape
    return f"{_article(head)} {head}"


def _meta(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    """A metadata dict with GenEval's key order: tag, include, [exclude], prompt."""
    meta: dict[str, Any] = {"tag": tag, "include": include}
    if exclude:
        meta["exclude"] = exclude
    meta["prompt"] = prompt
    return meta


def make_prompt(tag: str, shapes: tuple[str, ...], colors: tuple[str, ...] = (), *, count: int = 1,
                relation: str | None = None) -> dict:
    """Metadata for one composition. ``shapes`` has 1 entry (single_object, counting, colors) or 2 (two_object,
    position, color_attr, first-named first); ``colors`` matches ``shapes`` for colors/color_attr."""
    if tag == "single_object":
        return _meta(tag, [{"class": shapes[0], "count": 1}], f"a photo of {_obj(shapes[0])}")
    if tag == "two_object":
        a, b = shapes
        return _meta(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}],
                     f"a photo of {_obj(a)} and {_obj(b)}")
    if tag == "counting":
        s = shapes[0]
        return _meta(tag, [{"class": s, "count": count}], f"a photo of {_WORDS[count]} {PLURAL_FORMS[s]}",
                     exclude=[{"class": s, "count": count + 1}])
    if tag == "colors":
        return _meta(tag, [{"class": shapes[0], "count": 1, "color": colors[0]}],
                     f"a photo of {_obj(shapes[0], colors[0])}")
    if tag == "position":
        # GenEval: the second-named object is group 0; the first-named must stand in `relation` to it.
        a, b = shapes
        return _meta(tag, [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                     f"a photo of {_obj(a)} {relation} {_obj(b)}")
    if tag == "color_attr":
        (a, b), (ca, cb) = shapes, colors
        return _meta(tag, [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                     f"a photo of {_obj(a, ca)} and {_obj(b, cb)}")
    raise ValueError(f"unknown tag '{tag}'; valid tags: {', '.join(TAGS)}")


def all_prompts(ed: Edition = FIRST) -> list[dict]:
    """Every prompt's metadata of edition ``ed``, grouped by tag in ``TAGS`` order (edition 1: 126 dicts, edition
    2: 6,360); a fresh list on each call."""
    pairs = list(itertools.permutations(ed.shapes, 2))
    color_pairs = list(itertools.permutations(ed.colors, 2))
    out = [make_prompt("single_object", (s,)) for s in ed.shapes]
    out += [make_prompt("two_object", p) for p in pairs]
    out += [make_prompt("counting", (s,), count=n) for s in ed.shapes for n in ed.counts]
    out += [make_prompt("colors", (s,), (c,)) for s in ed.shapes for c in ed.colors]
    out += [make_prompt("position", p, relation=r) for p in pairs for r in RELATIONS]
    out += [make_prompt("color_attr", p, c) for p in pairs for c in color_pairs]
    return out


def is_shared(meta: dict) -> bool:
    """True for prompts that sit in both splits (their tag has too few compositions to hold any out)."""
    return meta["tag"] in SHARED_TAGS


def split(name: str, seed: int = 0, ed: Edition = FIRST) -> list[dict]:
    """The "train", "val", "test" or "heldout" (val + test) prompts of edition ``ed``, in ``all_prompts`` order.

    Edition 1 (``split_rule`` "prompt"): per tag, a seeded round(25%) of the prompts is held out, and the held-out
    prompts are split again into val (the first half, rounded down) and test; the splits are disjoint as prompt
    strings (not as canonical tasks: a restated prompt may sit in another split, see ``task_overlaps``) except for
    ``SHARED_TAGS`` (single_object), whose prompts are in all of them. "train" and "heldout" are unchanged from
    the two-split layout the edition-1 assets were pretrained on.

    Edition 2 (``split_rule`` "task"): see ``_task_layout``; no canonical task is in two splits.
    Deterministic given ``seed``.
    """
    if name not in SPLITS:
        raise unknown("split", name, list(SPLITS))
    prompts = all_prompts(ed)
    if ed.split_rule == "task":
        val, test, held = _task_layout(ed.number, seed)
    else:
        (val, test), held = _prompt_split(prompts, seed), frozenset()
    held_out = val | test
    chosen = {"val": val, "test": test, "heldout": held_out}.get(name)
    if chosen is None:  # train: everything not held out (edition 2: no wording of a held-out task either)
        return [m for m in prompts if is_shared(m) or
                (m["prompt"] not in held_out and (not held or canonical_task(m) not in held))]
    return [m for m in prompts if m["prompt"] in chosen or is_shared(m)]


def _prompt_split(prompts: list[dict], seed: int) -> tuple[set[str], set[str]]:
    """Edition 1's (val, test) prompt sets: a seeded 25% of each disjoint tag held out, halved."""
    val: set[str] = set()
    test: set[str] = set()
    for t, tag in enumerate(TAGS):
        if tag in SHARED_TAGS:
            continue
        group = [m["prompt"] for m in prompts if m["tag"] == tag]
        n = int(len(group) * HELDOUT_FRACTION + 0.5)
        # Seed per tag so adding a tag never reshuffles another tag's hold-out.
        order = np.random.default_rng([seed, t]).permutation(len(group))
        held = [group[i] for i in order[:n]]
        # A second seeded draw splits the held-out prompts; the hold-out itself stays as pretrained.
        halves = np.random.default_rng([seed, t, 1]).permutation(n)
        val.update(held[i] for i in halves[: n // 2])
        test.update(held[i] for i in halves[n // 2:])
    return val, test


def _stratum(meta: dict) -> tuple:
    """What a held-out draw balances within a tag: the count (counting), the canonical relation (position)."""
    if meta["tag"] == "counting":
        return (meta["include"][0]["count"],)
    if meta["tag"] == "position":
        return canonical_task(meta)[1][0][1:2]
    return ()


@lru_cache(maxsize=8)
def _task_layout(number: int, seed: int) -> tuple[frozenset[str], frozenset[str], frozenset[tuple]]:
    """Edition 2's (val prompts, test prompts, held-out canonical tasks) for ``seed``.

    Per disjoint tag: the canonical tasks are grouped by stratum (``_stratum``), each group shuffled (seeded per
    tag and stratum) and dealt round-robin into one sequence, so counts and relations spread evenly; the first
    ``TASKS_PER_SPLIT`` tasks go to val, the next ``TASKS_PER_SPLIT`` to test, the rest to train. A held-out task
    is asked in one wording, drawn at random among its restatements ("a circle and a square" or "a square and a
    circle"); train keeps every wording of its tasks.
    """
    ed = EDITIONS_BY_NUMBER[number]
    val: set[str] = set()
    test: set[str] = set()
    held: set[tuple] = set()
    prompts = all_prompts(ed)
    for t, tag in enumerate(TAGS):
        if tag in SHARED_TAGS:
            continue
        wordings: dict[tuple, list[str]] = {}
        strata: dict[tuple, list[tuple]] = {}
        for m in (m for m in prompts if m["tag"] == tag):
            task = canonical_task(m)
            if task not in wordings:
                strata.setdefault(_stratum(m), []).append(task)
            wordings.setdefault(task, []).append(m["prompt"])
        rng = np.random.default_rng([seed, t, 2])
        groups = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(strata.items())]
        dealt = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        if len(dealt) < 2 * TASKS_PER_SPLIT + 1:
            raise ValueError(f"edition {number} has {len(dealt)} {tag} tasks; a task split needs more than "
                             f"{2 * TASKS_PER_SPLIT}")
        for target, tasks in ((val, dealt[:TASKS_PER_SPLIT]), (test, dealt[TASKS_PER_SPLIT:2 * TASKS_PER_SPLIT])):
            for task in tasks:
                options = wordings[task]
                target.add(options[rng.integers(len(options))])
                held.add(task)
    return frozenset(val), frozenset(test), frozenset(held)


# -- canonical tasks ------------------------------------------------------------------------------------------

_INVERSE = {"right of": "left of", "below": "above"}
"""Relations stated the other way round: "A right of B" is "B left of A" under GenEval's ``relative_position``
(its offset and shrinkage are antisymmetric in the two boxes)."""


def canonical_task(meta: dict) -> tuple:
    """The constraints a prompt's metadata states, in a form equal for every wording of them.

    Objects are a sorted multiset of (shape, count, colour) whatever their order in the prompt; a relation is
    (object, relation, object) with "right of" / "below" turned into "left of" / "above" by swapping the
    objects; exclude clauses are sorted. The tag is left out: it follows from the constraints. So "a triangle
    and a circle" = "a circle and a triangle", and "a circle right of a square" = "a square left of a circle".
    """
    include = meta["include"]
    objects = [(c["class"], c["count"], c.get("color", "")) for c in include]
    relations = []
    for c, obj in zip(include, objects):
        if "position" in c:
            rel, target = c["position"]
            a, b = obj, objects[target]
            relations.append((b, _INVERSE[rel], a) if rel in _INVERSE else (a, rel, b))
    exclude = sorted((c["class"], c["count"]) for c in meta.get("exclude", []))
    return tuple(sorted(objects)), tuple(sorted(relations)), tuple(exclude)


def task_overlaps(splits: dict[str, Iterable[dict | str]], ignore_tags: Iterable[str] = SHARED_TAGS
                  ) -> list[tuple[str, str, str, str]]:
    """Every (split a, prompt a, split b, prompt b) whose canonical tasks coincide across two named splits (prompt
    lists, as metadata dicts or prompt texts); tags in ``ignore_tags`` (shared by design) are left out."""
    ignore = set(ignore_tags)
    seen: dict[tuple, list[tuple[str, str]]] = {}
    for name, prompts in splits.items():
        for meta in prompts:
            meta = parse_prompt(meta) if isinstance(meta, str) else meta
            if meta["tag"] not in ignore:
                seen.setdefault(canonical_task(meta), []).append((name, meta["prompt"]))
    return [(sa, pa, sb, pb) for holders in seen.values() for i, (sa, pa) in enumerate(holders)
            for sb, pb in holders[i + 1:] if sa != sb]


def check_disjoint_tasks(splits: dict[str, Iterable[dict | str]], ignore_tags: Iterable[str] = SHARED_TAGS) -> None:
    """Raise a one-line ValueError naming both prompts of the first canonical task found in two splits."""
    found = task_overlaps(splits, ignore_tags)
    if found:
        sa, pa, sb, pb = found[0]
        more = f" (and {len(found) - 1} more overlaps)" if len(found) > 1 else ""
        raise ValueError(f"{sa} prompt '{pa}' and {sb} prompt '{pb}' state the same task; splits must be disjoint "
                         f"in canonical task{more}")


# -- parsing ----------------------------------------------------------------------------------------------


class _Tokens:
    """A cursor over a prompt's words, raising one-line errors that name the bad token and the choices."""

    def __init__(self, text: str):
        self.text, self.words, self.i = text, text.lower().split(), 0

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, choices: Iterable[str], what: str) -> str:
        choices = list(choices)
        word = self.peek()
        if word not in choices:
            got = f"unknown token '{word}'" if word is not None else "prompt ends early"
            raise ValueError(f"{got} in prompt '{self.text}'; expected {what}: {', '.join(choices)}")
        self.i += 1
        return word

    def relation(self) -> str | None:
        """Consume a relation if one starts here ("left of" is two words)."""
        for rel in RELATIONS:
            parts = rel.split()
            if self.words[self.i:self.i + len(parts)] == parts:
                self.i += len(parts)
                return rel
        return None


def _parse_obj(tok: _Tokens, ed: Edition) -> tuple[str, str | None]:
    """'a [colour] shape' -> (shape, colour or None)."""
    tok.take(("a", "an"), "an article")
    word = tok.take([*ed.colors, *ed.shapes], "a colour or a shape")
    if word in ed.colors:
        return tok.take(ed.shapes, "a shape"), word
    return word, None


def parse_prompt(text: str, ed: Edition = FIRST) -> dict:
    """The metadata of a Shapes prompt of edition ``ed`` (the inverse of ``make_prompt``); raises ValueError on
    text outside the edition's grammar, naming the bad token and the valid choices."""
    tok = _Tokens(text)
    numbers = ed.numbers
    for word in ("a", "photo", "of"):
        tok.take((word,), "the opening 'a photo of'")
    if tok.peek() not in ("a", "an", *numbers):
        tok.take(("a", "an", *numbers), "an article or a number")
    if tok.peek() in numbers:
        count = numbers[tok.take(numbers, "a number")]
        singular = {p: s for s, p in ed.plurals.items()}
        plural = tok.take(singular, "a plural shape")
        meta = make_prompt("counting", (singular[plural],), count=count)
    else:
        shape, color = _parse_obj(tok, ed)
        rel = tok.relation()
        if rel is None and tok.peek() is None:
            meta = make_prompt("colors", (shape,), (color,)) if color else make_prompt("single_object", (shape,))
        else:
            if rel is None:
                tok.take(("and", *RELATIONS), "'and' or a relation")
            other, other_color = _parse_obj(tok, ed)
            if (color is None) != (other_color is None):
                raise ValueError(f"prompt '{text}' colours one object but not the other; colour both or neither")
            if rel is not None:
                if color:
                    raise ValueError(f"prompt '{text}' colours a position prompt; position prompts name no colours")
                meta = make_prompt("position", (shape, other), relation=rel)
            elif color:
                meta = make_prompt("color_attr", (shape, other), (color, other_color))
            else:
                meta = make_prompt("two_object", (shape, other))
    if tok.peek() is not None:
        raise ValueError(f"unexpected token '{tok.peek()}' after the end of prompt '{text}'")
    return validate_metadata(meta, ed)


# -- metadata validation and JSONL --------------------------------------------------------------------------


def _check_choice(value: Any, valid: Iterable[str], what: str) -> None:
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")


def _check_clause(clause: Any, where: str, index: int, *, include: bool, ed: Edition = FIRST) -> None:
    """One include/exclude clause: keys, class, count, colour and a position that points at an earlier group."""
    if not isinstance(clause, dict):
        raise TypeError(f"{where} must be an object, got {type(clause).__name__}")
    allowed = _CLAUSE_KEYS if include else {"class", "count"}
    for key in ("class", "count"):
        if key not in clause:
            raise ValueError(f"{where} is missing key '{key}'; required keys: class, count")
    extra = sorted(set(clause) - allowed)
    if extra:
        raise ValueError(f"{where} has unknown key '{extra[0]}'; valid keys: {', '.join(sorted(allowed))}")
    _check_choice(clause["class"], ed.shapes, "shape")
    count = clause["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where} has count {count!r}; counts are integers >= 1")
    if "color" in clause:
        _check_choice(clause["color"], ed.colors, "colour")
    if "position" in clause:
        pos = clause["position"]
        if not (isinstance(pos, (list, tuple)) and len(pos) == 2):
            raise ValueError(f"{where} has position {pos!r}; expected [relation, group_index]")
        _check_choice(pos[0], RELATIONS, "relation")
        group = pos[1]
        if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < index:
            raise ValueError(f"{where} position points at group {group!r}, which is not an earlier include "
                             f"group; valid groups: 0..{index - 1}" if index else
                             f"{where} has a position but no earlier include group to be relative to")


def validate_metadata(meta: Any, ed: Edition = FIRST) -> dict:
    """Check one GenEval-format metadata dict against edition ``ed``'s vocabulary and return it unchanged.

    Raises a one-line ValueError for a missing or unknown key, an unknown tag/shape/colour/relation, a bad count,
    or a position clause pointing at a missing or later group; TypeError where a value has the wrong JSON type.
    """
    if not isinstance(meta, dict):
        raise TypeError(f"metadata must be a JSON object, got {type(meta).__name__}")
    for key in ("tag", "include", "prompt"):
        if key not in meta:
            raise ValueError(f"metadata is missing key '{key}'; required keys: tag, include, prompt")
    extra = sorted(set(meta) - _META_KEYS)
    if extra:
        raise ValueError(f"metadata has unknown key '{extra[0]}'; valid keys: {', '.join(sorted(_META_KEYS))}")
    _check_choice(meta["tag"], TAGS, "tag")
    if not isinstance(meta["prompt"], str):
        raise TypeError(f"metadata prompt must be a string, got {type(meta['prompt']).__name__}")
    for part in ("include", "exclude"):
        clauses = meta.get(part, [])
        if not isinstance(clauses, list) or (part == "include" and not clauses):
            raise ValueError(f"metadata '{part}' must be a {'non-empty ' if part == 'include' else ''}list")
        for i, clause in enumerate(clauses):
            _check_clause(clause, f"{part}[{i}]", i, include=part == "include", ed=ed)
    return meta


def load_metadata_jsonl(path: str | Path, ed: Edition = FIRST) -> list[dict]:
    """Read a GenEval ``evaluation_metadata.jsonl``-style file (one JSON object per line, blank lines skipped)
    and validate each line; errors name the file and line number."""
    metas = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                metas.append(validate_metadata(json.loads(line), ed))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return metas


def write_metadata_jsonl(path: str | Path, metas: Iterable[dict], ed: Edition = FIRST) -> None:
    """Write metadata dicts one per line, as GenEval's file does, after validating every one."""
    lines = [json.dumps(validate_metadata(m, ed)) for m in metas]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
