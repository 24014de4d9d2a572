"""``driftbench train``'s parser: the run's fields in groups, the common ones first, each method's only on request.

``RunConfig`` stays one flat dataclass; for the command line its fields are split into the groups below
(generated dataclasses with the same types, defaults and docstrings, flags without a prefix), so
``driftbench train --help`` leads with the flags people use and ends without any method's fields, which
``driftbench train --method NAME --help`` adds as a group of their own. Parsing is the same either way:
a method's flags (``--drpo.m 2``) are accepted whenever that method is the run's.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Annotated, Any

from harness.config import RunConfig

GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run": ("The flags most runs set", (
        "method", "profile", "reward", "evals", "updates", "k", "prompts_per_step", "seed", "select_metric",
        "out", "run_id", "device", "mixed_precision", "log_with")),
    "budget": ("Batch and budget (the run stops at the first limit reached)", (
        "grad_accum", "max_images", "max_reward_calls", "max_seconds", "max_flops")),
    "evaluation": ("Evaluation during training and the test split read once after it", (
        "eval_split", "eval_at", "eval_seeds", "eval_prompt_limit", "eval_seed_base", "test_split", "test_seeds",
        "test_seed_base")),
    "data": ("Model, reward and data", (
        "model", "features_path", "reward_economy", "reward_options", "prompts", "split_seed", "lora_rank",
        "weight_decay", "grad_clip", "offline_data")),
}
"""Group name -> (its heading, the RunConfig fields in it); fields in none of them go to "record"."""

REST = ("record", "Checkpoints and the record")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (the house style: one per field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            out[node.target.id] = " ".join(after.value.value.split())
    return out


def groups() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every group with its fields, the catch-all last; each RunConfig field in exactly one."""
    names = [f.name for f in dataclasses.fields(RunConfig)]
    listed = {n for _, fields in GROUPS.values() for n in fields}
    unknown = listed - set(names)
    if unknown:
        raise RuntimeError(f"train_args.GROUPS names fields RunConfig lacks: {sorted(unknown)}")
    return {**GROUPS, REST[0]: (REST[1], tuple(n for n in names if n not in listed))}


def parser_class(run_default: RunConfig, options: type, options_default: Any, method: str | None,
                 method_default: Any) -> type:
    """The dataclass tyro parses: the common run flags, the command's own options, the other run groups, then
    (when ``method`` is given) the method's fields under ``--METHOD.FIELD``."""
    import tyro  # CLI only

    hints, docs = typing.get_type_hints(RunConfig, include_extras=True), field_docs(RunConfig)
    members: list[tuple[str, Any, Any]] = []
    for index, (name, (heading, names)) in enumerate(groups().items()):
        group = dataclasses.make_dataclass(
            f"Train_{name}", [(n, Annotated[hints[n], tyro.conf.arg(help=docs.get(n, ""))],
                             dataclasses.field(default=getattr(run_default, n))) for n in names], frozen=True)
        group.__doc__ = heading
        members.append((name, tyro.conf.OmitArgPrefixes[group], dataclasses.field(default=group())))
        if index == 0:
            members.append(("command", tyro.conf.OmitArgPrefixes[options], dataclasses.field(default=options_default)))
    if method is not None:
        members.append((method, type(method_default), dataclasses.field(default=method_default)))
    return dataclasses.make_dataclass("TrainArgs", members, frozen=True)


def run_config(args: Any, run_default: RunConfig) -> RunConfig:
    """The RunConfig the parsed groups describe."""
    values = {n: getattr(getattr(args, name), n) for name, (_, names) in groups().items() for n in names}
    return run_default.replace(**values)
