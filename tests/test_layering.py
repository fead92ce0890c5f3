"""The package's layering, read from its imports: lower layers never reach up into train/, plan/ or a CLI."""

import ast
from pathlib import Path

import housevox

PACKAGE = Path(housevox.__file__).parent
LOWER = ("housevox.lora", "housevox.acestep", "housevox.data", "housevox.audio", "housevox.eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every housevox module `path` imports, at the top or inside a function (relative imports resolved)."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "housevox" or m.startswith("housevox.")}


def is_cli(path: Path) -> bool:
    """A module run as a program: `__main__.py` or one with an `if __name__ == "__main__":` block."""
    return path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
CLIS = {name for name, path in MODULES.items() if is_cli(path)}


def under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def upward_imports(importers, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {target}" for name in importers for target in sorted(imports(MODULES[name]))
            if under(target, *forbidden) or target in CLIS]


def test_the_import_reader_sees_top_level_function_level_and_relative_imports():
    assert "housevox.train.synthetic" in imports(MODULES["housevox.plan.memory"])
    assert "housevox.fit" in imports(MODULES["housevox.lora.__main__"])  # imported inside cmd_lint
    sample = PACKAGE / "lora" / "__init__.py"
    assert "housevox.lora.formats" in imports(sample)
    assert {"housevox.fit", "housevox.lora.__main__", "housevox.eval.__main__", "housevox.prep"} <= CLIS
    assert "housevox.plan.memory" not in CLIS and "housevox.train.module" not in CLIS


def test_lower_layers_never_import_train_plan_or_a_cli():
    lower = [name for name in MODULES if under(name, *LOWER) and name not in CLIS]
    assert len(lower) > 20
    assert upward_imports(lower, ("housevox.train", "housevox.plan")) == []


def test_train_never_imports_plan_or_a_cli_and_plan_no_cli():
    train = [name for name in MODULES if under(name, "housevox.train") and name not in CLIS]
    plan = [name for name in MODULES if under(name, "housevox.plan")]
    assert train and plan
    assert upward_imports(train, ("housevox.plan",)) == []
    assert upward_imports(plan, ()) == []
