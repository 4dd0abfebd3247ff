"""Import directions between the packages, read from the source with ``ast`` (nothing is imported).

    metrics   -> no train, analysis, launch, bench, tests
    train     -> no analysis, launch, bench, tests        (train/*.py scripts and train/common/)
    train/common -> no train scripts (train.pretrain, train.finetune_*)
    analysis  -> no launch, bench, tests, train scripts    (train.common and metrics are fine)

Every ``import x`` and ``from x import y`` counts, at any depth (inside functions, ``if`` blocks, ``try``), relative
imports resolved against the file's package, and so does ``importlib.import_module("x")`` with a literal name.
``from train import pretrain`` counts as an import of ``train.pretrain``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPTS = ("train.pretrain", "train.finetune_*")

# (folder, forbidden module patterns): a pattern "x" matches x and x.anything; "x_*" matches names starting so.
RULES = {
    "metrics": ("train", "analysis", "launch", "bench", "tests"),
    "train": ("analysis", "launch", "bench", "tests"),
    "train/common": TRAIN_SCRIPTS,
    "analysis": ("launch", "bench", "tests", *TRAIN_SCRIPTS),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(path: Path, module: str | None, level: int) -> str:
    """The absolute module of ``from <level dots><module> import ...`` in ``path``."""
    if level == 0:
        return module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's own package
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


def imports_of(path: Path) -> list[tuple[int, str, str]]:
    """(line number, imported module, that source line) for every import in ``path``.

    ``from x import y`` yields both ``x`` and ``x.y`` (y may be a module: ``from train import pretrain``).
    """
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node.module, node.level)
            names = [module] + [f"{module}.{alias.name}" if module else alias.name
                                for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_import_module(node.func)):
            names = [node.args[0].value]
        else:
            continue
        found += [(node.lineno, name, lines[node.lineno - 1].strip()) for name in names]
    return found


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module" and isinstance(func.value, ast.Name) and func.value.id == "importlib"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return module.startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        seen = set()
        for line, module, text in imports_of(path):
            bad = [p for p in forbidden if _matches(module, p)]
            if bad and (line, text) not in seen:
                seen.add((line, text))
                out.append(f"{path.relative_to(REPO)}:{line}: {text!r} imports {module} "
                           f"({folder}/ must not import {', '.join(bad)})")
    return out


@pytest.mark.parametrize("folder", list(RULES))
def test_import_directions(folder):
    assert (REPO / folder).is_dir(), folder
    found = violations(folder, RULES[folder])
    assert not found, "imports against the package layout:\n" + "\n".join(found)


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: nested, relative and from-imports of a forbidden module are all reported."""
    root = tmp_path / "repo"
    (root / "train" / "common").mkdir(parents=True)
    (root / "train" / "__init__.py").write_text("")
    (root / "train" / "common" / "__init__.py").write_text("")
    (root / "train" / "common" / "bad.py").write_text(
        "import os\n"
        "from .. import pretrain\n"              # train.pretrain, relative
        "def f():\n"
        "    from train import finetune_qa\n"     # inside a function
        "    import analysis.squad as s\n"
        "    importlib.import_module('bench.common')\n"
        "from ..common import args\n"            # train.common.args: allowed
    )
    monkeypatch.setitem(globals(), "REPO", root)  # the checker reads the module-level REPO
    common = violations("train/common", TRAIN_SCRIPTS)
    train = violations("train", RULES["train"])
    assert [v.split(":")[1] for v in common] == ["2", "4"], common
    assert [v.split(":")[1] for v in train] == ["5", "6"], train
    assert common[0].startswith("train/common/bad.py:2: 'from .. import pretrain' imports train.pretrain")
