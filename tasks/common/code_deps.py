"""The project files a piece of code runs: its imports, followed through the project, as files.

Read from the source with `ast`, never by importing, so it takes milliseconds and also sees imports
made inside functions. Three things rest on it:

- the code dependencies of every stage in dvc.yaml: the stage module and every project module it
  imports, directly or through others, so that editing any of them makes `dvc status` report the
  stage (and no other) as changed;
- the params dependencies of every stage: the keys its module lists in PARAMS, which the stage
  CLI holds it to (tasks/common/reads.py). Check both, or write both after changing imports or PARAMS:

      python -m tasks.common.code_deps            # exit 1 and a list of differences when out of date
      python -m tasks.common.code_deps --write    # rewrite each stage's code deps and params (make deps)

- the train stage's checkpoint fingerprint, which hashes the code training runs
  (tasks/training/checkpoint.py): a run is not resumed by a different program.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "service", "flows")  # the project's own top-level packages
DVC_YAML = "dvc.yaml"


def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The file of a project module or package (`tasks.data` -> tasks/data/__init__.py), else None."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(file: Path, root: Path = PROJECT_ROOT) -> str:
    parts = file.resolve().relative_to(root.resolve()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_packages(name: str, root: Path) -> set[str]:
    """A module and the packages above it: importing a.b.c runs a/__init__.py and a/b/__init__.py too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]), root)}


def direct_imports(file: Path, root: Path = PROJECT_ROOT) -> set[str]:
    """Project modules that one file imports anywhere in it (functions included), with their packages."""
    own = module_name(file, root)
    package = own if file.name == "__init__.py" else own.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    found: set[str] = set()
    for name in names:
        found |= with_packages(name, root)
    return found - {own}


def import_graph(root: Path = PROJECT_ROOT) -> dict[str, set[str]]:
    """Every project module -> the project modules it imports directly."""
    files = [f for package in PACKAGES for f in sorted((root / package).rglob("*.py")) if "__pycache__" not in f.parts]
    return {module_name(f, root): direct_imports(f, root) for f in files}


def import_closure(files: list[Path], root: Path = PROJECT_ROOT) -> list[Path]:
    """The files and every project file they import, directly or not, sorted."""
    todo = set()
    for file in files:
        todo |= with_packages(module_name(file, root), root)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        todo |= direct_imports(module_file(name, root), root) - seen
    return sorted(module_file(name, root) for name in seen)


# --- dvc.yaml ------------------------------------------------------------------------------------


def is_code(dep: str, root: Path) -> bool:
    """A dependency that is one of the project's Python files."""
    return dep.endswith(".py") and dep.split("/")[0] in PACKAGES and (root / dep).is_file()


def stage_code(stage: dict, root: Path = PROJECT_ROOT) -> list[str]:
    """The code a stage runs: `python -m <module>` of its cmd, and every project .py file under a folder
    it depends on (the package stage builds service/ into a Bento), with all they import.

    Files inside a folder dependency are left out: the folder already covers them.
    """
    entries = [stage_module(stage, root)]
    folders = [d for d in map(str, stage.get("deps", [])) if d.split("/")[0] in PACKAGES and (root / d).is_dir()]
    for folder in folders:
        entries += sorted((root / folder).rglob("*.py"))
    deps = [f.relative_to(root).as_posix() for f in import_closure([e for e in entries if e], root)]
    return [d for d in deps if not any(d.startswith(folder.rstrip("/") + "/") for folder in folders)]


def stage_module(stage: dict, root: Path = PROJECT_ROOT) -> Path | None:
    """The file of the module a stage runs (`python -m <module>`), if any."""
    words = str(stage["cmd"]).split()
    return module_file(words[words.index("-m") + 1], root) if "-m" in words else None


def declared_params(module: Path) -> list[str] | None:
    """The module's PARAMS: the params.yaml keys it reads (a literal list), or None without one."""
    for node in ast.parse(module.read_text(), str(module)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARAMS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def stage_params(stage: dict, root: Path = PROJECT_ROOT) -> list[str] | None:
    module = stage_module(stage, root)
    return declared_params(module) if module else None


def _load(root: Path):
    from ruamel.yaml import YAML  # DVC's own YAML library: keeps comments and order when writing

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml, yaml.load((root / DVC_YAML).read_text())


def stale_code_deps(root: Path = PROJECT_ROOT) -> dict[str, dict[str, list[str]]]:
    """Per stage whose listed code deps or params differ from what it imports or declares:
    {"missing": [...], "extra": [...]} (params as "params.yaml:<key>")."""
    _, doc = _load(root)
    stale = {}
    for name, stage in doc["stages"].items():
        listed = {str(d) for d in stage.get("deps", []) if is_code(str(d), root)}
        wanted = set(stage_code(stage, root))
        declared = stage_params(stage, root)
        if declared is not None:
            listed |= {f"params.yaml:{key}" for key in map(str, stage.get("params", []))}
            wanted |= {f"params.yaml:{key}" for key in declared}
        if listed != wanted:
            stale[name] = {"missing": sorted(wanted - listed), "extra": sorted(listed - wanted)}
    return stale


def write_code_deps(root: Path = PROJECT_ROOT) -> list[str]:
    """Rewrite each stage's code deps (its other deps as they are, then its code) and its params (from
    its module's PARAMS); returns the stages changed."""
    yaml, doc = _load(root)
    changed = []
    for name, stage in doc["stages"].items():
        deps = stage.get("deps", [])
        code, declared = stage_code(stage, root), stage_params(stage, root)
        params_stale = declared is not None and [str(p) for p in stage.get("params", [])] != declared
        if [str(d) for d in deps if is_code(str(d), root)] == code and not params_stale:
            continue
        for i in reversed(range(len(deps))):
            if is_code(str(deps[i]), root):
                del deps[i]
        deps.extend(code)
        if params_stale:
            stage["params"] = declared
        changed.append(name)
    if changed:
        with open(root / DVC_YAML, "w") as out:
            yaml.dump(doc, out)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.common.code_deps", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml's stages")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_code_deps()
        print(f"dvc.yaml: code deps and params rewritten for {', '.join(changed)}" if changed
              else "dvc.yaml: code deps and params up to date")
        return 0
    stale = stale_code_deps()
    for name, diff in stale.items():
        for kind, files in diff.items():
            if files:
                print(f"{name}: {kind} {', '.join(files)}")
    if stale:
        print("dvc.yaml code deps or params are out of date; fix them with: python -m tasks.common.code_deps --write")
        return 1
    print("dvc.yaml: code deps and params up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
