"""One layout for two modalities: what may import what (read from the source, nothing imported).

* The pure cores (``rayproc/bcdi``, ``rayproc/labdct``, ``rayproc/stitching``, ``rayproc/models``)
  never import Ray, zarr, xarray, fsspec, s3fs, typer, nor rayproc's storage, runtime, pipeline
  or CLI layers: anywhere in a module, inside functions too.
* A pipeline module never reaches into another pipeline module's private names (``_x``): what
  two shells share lives in a shared layer, under a public name.
* The marker tables of ``tests/conftest.py`` name tests that exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rayproc"
CORES = ("bcdi", "labdct", "stitching", "models")
FORBIDDEN = (
    "ray", "zarr", "xarray", "fsspec", "s3fs", "typer",
    "rayproc.storage", "rayproc.runtime", "rayproc.pipelines", "rayproc.cli",
)
IMPORTERS = {"import_module", "__import__", "lazy_exports"}  # import_module("ray") counts too


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def absolute(module: str, node: ast.ImportFrom, root: Path = REPO) -> str:
    """The absolute module of ``from ... import`` in ``module`` (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = (root / Path(*package) / "__init__.py").is_file()
    base = package[: len(package) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported(path: Path, root: Path = REPO) -> list[tuple[int, str, str]]:
    """Every (line, module, name) ``path`` imports: ``import a.b`` gives ("a.b", ""),
    ``from a import b`` gives ("a", "b") and ("a.b", "") (b may be a module), and
    ``import_module("a")`` with a constant string gives ("a", "")."""
    module = module_name(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node, root)
            for alias in node.names:
                found += [(node.lineno, source, alias.name), (node.lineno, f"{source}.{alias.name}", "")]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in IMPORTERS and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, ""))
    return found


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_walker_sees_every_form(tmp_path):
    """The checker itself: plain, from, relative, in-function and import_module imports."""
    package = tmp_path / "rayproc" / "bcdi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from . import probe\n")
    (package / "probe.py").write_text(
        "import numpy\n"
        "from ..storage import dataset\n"
        "def f():\n"
        "    import ray.train\n"
        "    from rayproc import runtime\n"
        "    return importlib.import_module('zarr')\n"
    )
    modules = {m for _, m, _ in imported(package / "probe.py", tmp_path)}
    assert {"numpy", "rayproc.storage", "rayproc.storage.dataset", "ray.train", "rayproc.runtime", "zarr"} <= modules
    assert "rayproc.bcdi.probe" in {m for _, m, _ in imported(package / "__init__.py", tmp_path)}
    offending = {m for _, m, _ in imported(package / "probe.py", tmp_path) if any(is_within(m, f) for f in FORBIDDEN)}
    assert offending == {"rayproc.storage", "rayproc.storage.dataset", "ray.train", "rayproc.runtime", "zarr"}


@pytest.mark.parametrize("core", CORES)
def test_pure_cores_import_no_ray_storage_or_cli(core):
    offences = []
    for path in modules_under(PACKAGE / core):
        for line, module, _ in imported(path):
            hit = next((f for f in FORBIDDEN if is_within(module, f)), None)
            if hit:
                offences.append(f"{path.relative_to(REPO)}:{line} imports {module} ({hit})")
    assert not offences, "the pure core imports a shell layer:\n" + "\n".join(sorted(set(offences)))


def test_pipeline_modules_use_no_private_names_of_other_pipeline_modules():
    offences = []
    for path in modules_under(PACKAGE / "pipelines"):
        own = module_name(path)
        aliases = {}  # local name -> another pipeline module bound to it
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = absolute(own, node)
                if not is_within(source, "rayproc.pipelines") or source == own:
                    continue
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    file = REPO / Path(*target.split("."))
                    if file.with_suffix(".py").is_file() or (file / "__init__.py").is_file():
                        aliases[alias.asname or alias.name] = target  # a module (a shared _module too)
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name} from {source}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if is_within(alias.name, "rayproc.pipelines") and alias.name != own and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):  # module._private through an alias
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{path.relative_to(REPO)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not offences, "private names shared between pipeline modules:\n" + "\n".join(sorted(set(offences)))


def test_marker_tables_name_existing_tests():
    from tests import conftest

    functions = {}
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        functions[path.name] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert conftest.SLOW_MODULES <= set(functions)
    for entry in conftest.SLOW_TESTS | conftest.RAY_TESTS | conftest.S3_TESTS:
        module, test = entry.split("::")
        assert test.split("[")[0] in functions.get(module, ()), f"{entry}: no such test"
