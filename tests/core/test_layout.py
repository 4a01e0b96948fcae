"""The parts keep to themselves: a module of one part (``_batch``, ``_pool``, ``_store``,
``_cli``) uses another part only through the names its package exports, uses the core
(``_run``, ``_result``, ``_supervisor``, ``_errors``...) only through names without a leading
underscore, never imports the top ``pardo`` package, and the core imports no part at all
(``__main__``, ``python -m pardo``, counts as the CLI's).
Read from the source, so a reach-in fails here before a review has to find it."""

import ast
from pathlib import Path

import pardo

SRC = Path(pardo.__file__).parent
PARTS = sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def _module_name(path):
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(name):
    """"_batch" for pardo._batch and its modules, "core" for the core modules, "pardo"
    for the top package itself."""
    bits = name.split(".")
    if len(bits) == 1:
        return "pardo"
    if bits[1] == "__main__":  # python -m pardo: the command's other door
        return "_cli"
    return bits[1] if bits[1] in PARTS else "core"


def _is_module(name):
    base = SRC.parent / name.replace(".", "/")
    return (base.with_suffix(".py").exists() or base.with_suffix(".pyi").exists()
            or (base / "__init__.py").exists())


def _resolve(importer, is_package, level, module):
    if not level:
        return module
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _violations(importer, is_package, source, label):
    """What the module ``importer`` (whose text is ``source``) does against the rules."""
    mine = _part(importer)
    tree = ast.parse(source, label)
    found = []
    foreign_modules = {}  # local name -> module of another part or of the core

    def where(node):
        return f"{label}:{node.lineno}"

    def check_module(node, module, local):
        theirs = _part(module)
        if theirs == mine:
            return
        if mine == "core" and theirs in PARTS:
            found.append(f"{where(node)}: the core imports the part {module}")
        elif theirs == "pardo":
            found.append(f"{where(node)}: imports the top package {module}")
        elif theirs in PARTS and module != f"pardo.{theirs}":
            found.append(f"{where(node)}: imports {module}, inside another part")
        elif local is not None:
            foreign_modules[local] = module

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pardo":
                    check_module(node, alias.name, alias.asname)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(importer, is_package, node.level, node.module)
            if target is None or target.split(".")[0] != "pardo":
                continue
            theirs = _part(target)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if _is_module(full):
                    check_module(node, full, alias.asname or alias.name)
                elif theirs == mine:
                    continue
                elif mine == "core" and theirs in PARTS:
                    found.append(f"{where(node)}: the core imports {alias.name} from {target}")
                elif theirs == "pardo" and alias.name != "__version__":
                    found.append(f"{where(node)}: imports {alias.name} from the top package")
                elif theirs in PARTS and target != f"pardo.{theirs}":
                    found.append(f"{where(node)}: imports {alias.name} from {target}, inside "
                                 f"another part")
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{where(node)}: imports the private {alias.name} of {target}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in foreign_modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{where(node)}: uses {foreign_modules[node.value.id]}.{node.attr}")
    return found


def test_the_parts_are_the_folders_the_design_names():
    assert {"_batch", "_pool", "_store", "_cli"} <= set(PARTS)


def test_no_part_reaches_into_another():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += _violations(_module_name(path), path.name == "__init__.py", path.read_text(),
                             str(path.relative_to(SRC)))
    assert not found, "\n".join(found)


def test_the_checker_sees_a_reach_in():
    """The scan itself can fail: a CLI module written the old ways is caught every way."""
    source = ("import pardo\n"
              "from .. import _supervisor\n"
              "from .._batch.scheduler import Batch\n"
              "from .._run import _checked\n"
              "from .. import INHERIT\n"
              "x = _supervisor._isolation\n")
    found = _violations("pardo._cli.probe", False, source, "probe")
    assert len(found) == 5, found
    core = _violations("pardo._run", False, "from ._batch import Batch\n", "probe")
    assert core == ["probe:1: the core imports Batch from pardo._batch"], core
    assert any("top package pardo" in v for v in found)
    assert any("pardo._batch.scheduler, inside another part" in v for v in found)
    assert any("private _checked" in v for v in found)
    assert any("INHERIT from the top package" in v for v in found)
    assert any("pardo._supervisor._isolation" in v for v in found)
