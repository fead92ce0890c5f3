"""The package's layering, read from its imports: lower layers never reach up into train/, plan/ or a CLI."""

import ast
from pathlib import Path

import housevox

PACKAGE = Path(housevox.__file__).parent


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


def test_the_import_reader_sees_top_level_function_level_and_relative_imports():
    assert "housevox.train.synthetic" in imports(MODULES["housevox.plan.memory"])
    assert "housevox.fit" in imports(MODULES["housevox.lora.__main__"])  # imported inside cmd_lint
    sample = PACKAGE / "lora" / "__init__.py"
    assert "housevox.lora.formats" in imports(sample)
    assert {"housevox.fit", "housevox.lora.__main__", "housevox.eval.__main__", "housevox.prep"} <= CLIS
    assert "housevox.plan.memory" not in CLIS and "housevox.train.module" not in CLIS
    assert layer("housevox.lora.targets") < layer("housevox.eval.render") < layer("housevox.train.module")
    assert layer("housevox.train.module") < layer("housevox.plan.memory") < layer("housevox.lora.__main__")


# Lowest first; a module may import its own layer and those below. The CLIs (and demo.py, which runs prep
# to build the demo's data, and demo_base.py, which trains the demo base with the LoRA step's loss) sit on
# top and may import anything.
LAYERS = (
    ("housevox", "housevox.atomic", "housevox.errors", "housevox.jsonfile", "housevox.seeding", "housevox.lyrics",
     "housevox.audio", "housevox.accelerator"),
    ("housevox.acestep",),
    ("housevox.lora", "housevox.data", "housevox.generate"),
    ("housevox.eval", "housevox.report"),
    ("housevox.train",),
    ("housevox.plan",),
)
TOP = ("housevox.demo", "housevox.demo_base")


def layer(name: str) -> int:
    """The layer of `name`, by the longest package prefix that places it."""
    if name in CLIS or under(name, *TOP):
        return len(LAYERS)
    placed = [(len(p), i) for i, packages in enumerate(LAYERS) for p in packages if name == p or name.startswith(p + ".")]
    assert placed, f"{name} is in no layer: place it in LAYERS"
    return max(placed)[1]


def test_every_module_has_a_layer_and_lower_layers_never_import_upward():
    upward = [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
              for name, path in MODULES.items() for target in sorted(imports(path))
              if target in MODULES and layer(target) > layer(name)]
    assert upward == []
    for lower in ("housevox.lora.targets", "housevox.acestep.modules", "housevox.data.cache", "housevox.audio.io",
                  "housevox.eval.render"):  # the rule: none of these reaches train/, plan/ or a CLI
        assert layer(lower) < layer("housevox.train.module")
