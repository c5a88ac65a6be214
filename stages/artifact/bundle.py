"""The code an artifact ships, and the importer that runs it straight from the artifact.

``collect_sources`` starts at the runtime module and follows its relative imports, so the bundle
holds exactly the modules eval executes. Shipped modules may import each other only relatively;
an absolute ``stages`` import would silently run installed code instead, so it is refused.
``bundle_id`` is the bundle's sha256 (the header's ``bundle_sha256``). ``load_bundle`` imports the
bundle under a fresh package name, from the shipped bytes alone; whether eval may do so is
``verify.py``'s decision. This module ships inside the artifact too (the loader is counted):
stdlib only.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGE = "stages"


def collect_sources(root: Path, entries: list[str], follow=None) -> dict[str, str]:
    """{relative path: source} of ``entries`` and every module they import relatively, plus package __init__s.

    ``follow(root, rel, source)`` lists the files a module imports (default: its relative imports,
    refusing absolute ``stages`` ones, as shipped code must)."""
    follow = follow or _relative_imports
    files: dict[str, str] = {}
    todo = list(entries)
    while todo:
        rel = todo.pop()
        if rel in files:
            continue
        source = (root / rel).read_text(encoding="utf-8")
        files[rel] = source
        parts = Path(rel).parts
        for depth in range(1, len(parts)):
            todo.append(str(Path(*parts[:depth], "__init__.py")))
        todo.extend(follow(root, rel, source))
    return dict(sorted(files.items()))


def _relative_imports(root: Path, rel: str, source: str) -> list[str]:
    package = list(Path(rel).parent.parts)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            raise ValueError(f"{rel}: absolute import of {node.module!r} in shipped code; use a relative import")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{rel}: absolute import of {PACKAGE} in shipped code; use a relative import")
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[: len(package) - (node.level - 1)]
        module = base + (node.module.split(".") if node.module else [])
        candidates = [module] if node.module else []
        candidates += [module + [alias.name] for alias in node.names]
        for parts in candidates:
            for path in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
                if (root / path).is_file():
                    found.append(str(path))
    return found


def bundle_id(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for rel, source in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves modules named ``<root>.<dotted path>`` from the shipped sources."""

    def __init__(self, root: str, files: dict[str, str]):
        self.modules: dict[str, tuple[str, str, bool]] = {}
        for rel, source in files.items():
            parts = list(Path(rel).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([root, *parts[1:]])
            self.modules[name] = (rel, source, is_package)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        rel, _, is_package = self.modules[fullname]
        spec = importlib.util.spec_from_loader(fullname, self, origin=f"artifact:{rel}", is_package=is_package)
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        rel, source, _ = self.modules[module.__name__]
        exec(compile(source, f"<artifact>/{rel}", "exec"), module.__dict__)


def load_bundle(files: dict[str, str], entry: str):
    """Import ``entry`` (a path like 'stages/runtime.py', or a package's __init__.py) from the shipped
    files; return the module."""
    root = f"golf_artifact_{bundle_id(files)[:16]}"
    if root not in sys.modules:
        sys.meta_path.insert(0, _BundleImporter(root, files))
    parts = Path(entry).with_suffix("").parts[1:]
    if parts and parts[-1] == "__init__":  # a package's entry is the package itself
        parts = parts[:-1]
    return importlib.import_module(".".join([root, *parts]))
