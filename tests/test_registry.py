"""Registries: lazy, complete without import side effects, near-miss errors, and the method contract."""

import ast
from pathlib import Path

import pytest

from harness.registry import Registry, UnknownName

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def test_unknown_name_suggests_the_nearest_match():
    reg = Registry("method", {"drpo": "methods.drpo", "draft": "methods.draft"})
    with pytest.raises(UnknownName, match=r"unknown method 'drp0'; did you mean 'drpo'\? valid methods: drpo, draft"):
        reg.get("drp0")


def test_lookup_is_lazy_and_patterns_pass_their_argument():
    reg = Registry("thing", {"a": "no.such.module"}, patterns={"json:": "json:loads"})
    assert "a" in reg and reg.names() == ["a"]  # nothing imported yet
    factory, arg = reg.get("json:[1]")
    assert factory(arg) == [1]
    with pytest.raises(ModuleNotFoundError):
        reg.get("a")


@pytest.mark.parametrize("package,name", [("methods", "METHODS"), ("rewards", "REWARDS"), ("evals", "EVALS"),
                                          ("harness.profiles", "PROFILES")])
def test_registry_literals_have_no_duplicate_keys(package, name):
    path = ROOT / (package.replace(".", "/") + (".py" if "." in package else "/__init__.py"))
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Registry"]
    keys = [k.value for c in calls for k in c.args[1].keys]
    assert len(keys) == len(set(keys)), f"duplicate keys in {name}"


def test_every_method_follows_the_contract():
    from methods import METHODS

    for key in METHODS:
        module = METHODS.get(key)
        assert module.NAME == key == Path(module.__file__).stem
        for attr in ("VERSION", "REWARD_GRADIENT", "Config", "space", "needs", "init", "step"):
            assert hasattr(module, attr), f"{key} lacks {attr}"
        assert module.Config.__dataclass_params__.frozen
        assert "lr" in module.Config.__dataclass_fields__
        assert module.__doc__ and "arXiv" in module.__doc__, f"{key}'s docstring must cite its paper"


def test_no_method_imports_another_method():
    from methods import METHODS

    names = set(METHODS)
    for key in METHODS:
        tree = ast.parse((ROOT / "methods" / f"{key}.py").read_text())
        imported = {a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not (imported & (names - {key})), f"{key} imports another method"


def test_every_registered_target_resolves():
    from evals import EVALS
    from harness.profiles import PROFILES
    from harness.registry import load
    from rewards import REWARDS

    for reg in (EVALS, PROFILES, REWARDS):
        for key in reg:
            assert load(reg.target(key)) is not None


def test_packages_import_without_heavy_dependencies():
    import subprocess
    import sys

    code = ("import sys, harness, methods, rewards, evals, harness.registry, harness.config;"
            "heavy = [m for m in ('diffusers', 'transformers', 'peft', 'optuna', 'matplotlib') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
