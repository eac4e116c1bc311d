"""Public seams, not reach-ins: no module of the package uses another module's private names.

A module may use its own ``_names`` freely. It may not import a ``_name`` from another module,
read ``module._name`` through an imported module, or import a ``_private`` module of another
package; whatever a second module needs becomes public where it lives (or moves there).

`ALLOWED` lists the reach-ins that remain, each with its reason. It may only shrink: an entry
that no longer matches anything fails the test too, so a fixed reach-in leaves the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prefect_neurodata

PACKAGE_ROOT = Path(prefect_neurodata.__file__).parent
PACKAGE = "prefect_neurodata"

# "importing module -> used module:name": why it is still allowed.
ALLOWED: dict[str, str] = {}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(parts)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The imported module relative to the package root (None outside the package)."""
    if node.level:
        base = module.split(".") if module else []
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join([*base, node.module] if node.module else base)
        return target
    name = node.module or ""
    if name == PACKAGE:
        return ""
    if name.startswith(PACKAGE + "."):
        return name[len(PACKAGE) + 1 :]
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_module_outside_its_package(importer: str, target: str) -> bool:
    """``target`` has a ``_private`` part whose package does not contain ``importer``."""
    parts = target.split(".")
    for index, part in enumerate(parts):
        if _is_private(part):
            owner = ".".join(parts[:index])
            if not (importer == owner or importer.startswith(owner + ".") if owner else True):
                return True
    return False


def _module_exists(dotted: str) -> bool:
    path = PACKAGE_ROOT.joinpath(*dotted.split(".")) if dotted else PACKAGE_ROOT
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_definitions(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, variables, attributes set."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return {name for name in names if _is_private(name)}


def _trees() -> dict[str, tuple[Path, ast.AST]]:
    return {
        _module_name(path): (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
    }


def object_reach_ins() -> set[str]:
    """``obj._name`` reads of a private name that another module of the package defines (a
    method or attribute of one of our classes, used from outside its module)."""
    trees = _trees()
    defined = {module: _private_definitions(tree) for module, (_, tree) in trees.items()}
    found: set[str] = set()
    for module, (_, tree) in trees.items():
        elsewhere = set().union(*(names for other, names in defined.items() if other != module))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and node.attr not in defined[module]
                and node.attr in elsewhere
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.add(f"{module} -> ..{node.attr}")
    return found


def reach_ins() -> set[str]:
    """Every ``importer -> module:name``, ``importer -> private.module`` or
    ``importer -> ..name`` (an object's private attribute) in the package."""
    found: set[str] = object_reach_ins()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, path.name == "__init__.py")
                if target is None:
                    continue
                if _private_module_outside_its_package(module, target):
                    found.add(f"{module} -> {target}")
                for alias in node.names:
                    submodule = f"{target}.{alias.name}" if target else alias.name
                    if _module_exists(submodule):
                        module_aliases[alias.asname or alias.name] = submodule
                        if _private_module_outside_its_package(module, submodule):
                            found.add(f"{module} -> {submodule}")
                    elif _is_private(alias.name) and target != module:
                        found.add(f"{module} -> {target}:{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE + "."):
                        target = alias.name[len(PACKAGE) + 1 :]
                        if _private_module_outside_its_package(module, target):
                            found.add(f"{module} -> {target}")
                        if alias.asname:
                            module_aliases[alias.asname] = target
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and _is_private(node.attr)
                and module_aliases[node.value.id] != module
            ):
                found.add(f"{module} -> {module_aliases[node.value.id]}:{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    unexpected = sorted(reach_ins() - set(ALLOWED))
    assert not unexpected, "private names used across modules (make them public):\n" + "\n".join(
        unexpected
    )


def test_allow_list_only_names_reach_ins_that_still_exist() -> None:
    stale = sorted(set(ALLOWED) - reach_ins())
    assert not stale, "fixed reach-ins still allowed (remove them from ALLOWED):\n" + "\n".join(
        stale
    )


def test_the_scan_recognises_reach_ins() -> None:
    """The scan's rules themselves: private modules, relative imports, module checks."""
    tree = ast.parse("from ..http import dumps\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _absolute("clients.cave.base", node, False) == "clients.http"
    assert _module_exists("clients.http") and not _module_exists("clients.nope")
    assert _private_module_outside_its_package("flows.registration", "tasks._storage")
    assert not _private_module_outside_its_package("tasks.cave", "tasks._storage")
    assert _private_definitions(ast.parse("class A:\n    def _f(self): self._x = 1\n")) == {
        "_f",
        "_x",
    }
