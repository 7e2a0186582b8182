"""The package layout of DESIGN.md, checked on the source: imports point one way
(leaves <- geometry <- headmodel <- io, metrics <- tracking, avatar, flametalk <- eval, demo subject <- pipeline <- CLI),
no stage imports another stage, and there is no cycle between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import gaussian_flametalk

ROOT = Path(gaussian_flametalk.__file__).parent

#: package -> its layer; a package may import packages of a lower layer only (and itself)
LAYERS = {
    "errors": -1,  # the error classes: every module may raise them
    "atomic": 0, "config": 0, "registry": 0,
    "geometry": 1,
    "headmodel": 2,
    "io": 3, "metrics": 3,
    "tracking": 4, "avatar": 4, "flametalk": 4,
    "eval": 5, "demo_subject": 5, "interop": 5,
    "pipeline": 6,
    "scripts": 7,
}


def _package_imports() -> dict[str, set[str]]:
    """package -> the other packages of gaussian_flametalk its modules import (absolute or relative, any depth)."""
    deps: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        pkg = rel.parts[0].removesuffix(".py")
        if pkg == "__init__":
            continue
        mod_parts = list(rel.with_suffix("").parts)
        if mod_parts[-1] == "__init__":
            mod_parts = mod_parts[:-1]
            is_pkg = True
        else:
            is_pkg = False
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod_parts if is_pkg else mod_parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    parts = base + (node.module.split(".") if node.module else [])
                    if not node.module:
                        targets += [parts + [a.name] for a in node.names]
                    else:
                        targets.append(parts)
                elif node.module and node.module.startswith("gaussian_flametalk."):
                    targets.append(node.module.split(".")[1:])
            elif isinstance(node, ast.Import):
                targets += [a.name.split(".")[1:] for a in node.names if a.name.startswith("gaussian_flametalk.")]
            for t in targets:
                if t and t[0] != pkg:
                    deps.setdefault(pkg, set()).add(t[0])
    return deps


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert packages == set(LAYERS), f"layers to update: {packages ^ set(LAYERS)}"


def test_imports_point_down_the_layers_with_no_cycle():
    deps = _package_imports()
    wrong = sorted(f"{a} -> {b}" for a, bs in deps.items() for b in bs if LAYERS[b] >= LAYERS[a])
    assert not wrong, f"imports against the layer order (or between stages): {wrong}"
    # with every edge pointing to a strictly lower layer there can be no cycle; check it directly all the same
    seen: dict[str, int] = {}

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import cycle {' -> '.join(stack + (node,))}"
        if seen.get(node):
            return
        for nxt in deps.get(node, ()):
            visit(nxt, stack + (node,))
        seen[node] = 1

    for pkg in LAYERS:
        visit(pkg, ())
