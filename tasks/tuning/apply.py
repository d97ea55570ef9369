"""Putting a study's best recipe to use (`adopt`): run as a DVC experiment beside the workspace, or its
values written back into params.yaml; and the `dvc exp run -S` arguments that set them.

params.yaml is documentation as much as configuration, so the file is edited line by line rather than
re-dumped: a YAML round-trip (even ruamel.yaml's) rewrites `null` and moves end-of-line comments when a
value's width changes. Only the scalar text of each changed key is replaced; its comment keeps its column.
"""
from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tasks.common.config import PARAMS_FILE, UserError

EXPERIMENT_TARGET = "gate"

# A key's scalar on its line: quoted, or plain (spaces inside, but none before a `#`), then an optional comment.
SCALAR = re.compile(r"""(?P<value>'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|[^\s'"\[\]{}|>&*!#%@`,](?:\S|\s+(?=[^\s#]))*)"""
                    r"(?P<gap>\s*)(?P<comment>#.*)?$")


def format_value(value: object) -> tuple[str, object]:
    """The YAML text of a scalar and the value it reads back as. Floats keep 4 significant digits (a
    study's 0.0012345678 is noise past those); an exponent gets a dot, as PyYAML reads `1e-05` as a string."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"only scalars can be written back, not {value!r}")
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.4g}")
        text = re.sub(r"^(-?\d+)(e)", r"\1.0\2", repr(value))
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("...\n").strip()
    return text, value


def _key_line(lines: list[str], dotted: str) -> int:
    """The index of the line holding `dotted`, found by walking the nested block mappings by indentation."""
    found, parent_indent = -1, -1
    for key in dotted.split("."):
        child_indent, hit = None, None
        for i in range(found + 1, len(lines)):
            stripped = lines[i].lstrip(" ")
            if not stripped.strip() or stripped.startswith("#"):
                continue
            indent = len(lines[i]) - len(stripped)
            if indent <= parent_indent:
                break
            child_indent = indent if child_indent is None else child_indent
            if indent == child_indent and re.match(rf"{re.escape(key)}\s*:(\s|$)", stripped):
                hit = i
                break
        if hit is None:
            raise ValueError(f"{dotted}: no block-mapping key {key!r} in the file")
        found, parent_indent = hit, child_indent
    return found


def _replace_scalar(line: str, key: str, text: str) -> tuple[str, str]:
    """The line with its scalar replaced (comment kept at its column when it fits), and the old scalar."""
    body = line.rstrip("\r\n")
    head = re.match(rf"\s*{re.escape(key)}\s*:[ \t]*", body).group(0)
    scalar = SCALAR.match(body, len(head))
    if scalar is None:
        raise ValueError(f"{key}: {body[len(head):]!r} is not a scalar on its key's line")
    old, comment = scalar.group("value"), scalar.group("comment")
    if comment is None:
        return head + text + line[len(body):], old
    column = scalar.start("comment")
    return head + text + " " * max(1, column - len(head) - len(text)) + comment + line[len(body):], old


def _lookup(data: dict, dotted: str) -> object:
    for key in dotted.split("."):
        data = data[key]
    return data


def apply_values(path: Path, values: dict[str, object]) -> list[str]:
    """Write values into the YAML file at path, keeping every comment, blank line, key order and the
    formatting of every other line; returns lines like 'train.lr: 0.001 -> 0.00123' for what changed
    (nothing for a value already equal). The file is replaced whole, and only once the edited text has
    been re-read as exactly the old document with these values: never half-written, never subtly wrong."""
    original = path.read_bytes().decode("utf-8")  # as is: CRLF line endings stay
    before = yaml.safe_load(original)
    lines, changes = original.splitlines(keepends=True), []
    expected = copy.deepcopy(before)
    for dotted, value in values.items():
        text, value = format_value(value)
        current = _lookup(before, dotted)
        if current == value and type(current) is type(value):
            continue
        index = _key_line(lines, dotted)
        lines[index], old = _replace_scalar(lines[index], dotted.rsplit(".", 1)[-1], text)
        *parents, last = dotted.split(".")
        (_lookup(expected, ".".join(parents)) if parents else expected)[last] = value
        changes.append(f"{dotted}: {old} -> {text}")
    if not changes:
        return []
    edited = "".join(lines)
    after = yaml.safe_load(edited)
    if after != expected or any(type(_lookup(after, k)) is not type(_lookup(expected, k)) for k in values):
        raise ValueError(f"{path}: the edited file would not read back as the values asked for; left unchanged")
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(edited)
        shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return changes


def set_arguments(values: dict[str, object]) -> list[str]:
    """The `dvc exp run` arguments that set these values: ['-S', 'train.lr=0.00123', ...]. DVC reads them
    with Hydra's override grammar, which reads this YAML scalar text as the same values."""
    return [arg for key, value in values.items() for arg in ("-S", f"{key}={format_value(value)[0]}")]


def adopt(summary: dict, workdir: Path, how: str) -> str:
    """Put the best recipe of a search's summary to use: a DVC experiment beside the baseline
    (how="experiment": dvc exp show lists it; dvc exp apply adopts it), or written into params.yaml
    (how="apply"). Never promotes: the pipeline and its gate do."""
    best = summary["best"]
    if best is None:
        return "no completed trial yet: nothing to adopt"
    if best["recipe"] == "params.yaml":
        return "the best trial is params.yaml's own recipe: nothing to change"
    if how == "apply":
        changes = apply_values(workdir / PARAMS_FILE, best["params"])
        return f"{PARAMS_FILE}: " + ("; ".join(changes) or "already the best recipe")
    name = f"{summary['study']}-trial-{best['number']}"
    # --temp: in a copy, so the workspace (and the next retrain) keeps params.yaml's recipe until adopted;
    # up to the gate: its metrics and decision are what `dvc exp show` compares (packaging adds nothing).
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name,
               *set_arguments(best["params"]), EXPERIMENT_TARGET]
    shown = " ".join(["dvc", *command[3:]])
    print(f"tune: {shown}", flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if subprocess.run(command, cwd=workdir, env=env).returncode != 0:
        raise UserError(f"dvc exp run of trial {best['number']} failed (its output is above); rerun it: {shown}")
    return f"DVC experiment {name}: compare with `dvc exp show`, adopt with `dvc exp apply {name}`"
