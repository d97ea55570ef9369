"""What a stage may read of params.yaml: the keys its module lists in PARAMS, and no other.

dvc.yaml's `params:` of each stage are written from those lists (tasks/common/code_deps.py), so a
stage that read a key it does not list would not re-run when that key changes. The stage CLI
therefore hands a stage a view of its params that refuses every other key: such a read fails the
first time the stage runs, with the fix, instead of going silently stale.
"""
from __future__ import annotations

from pydantic import BaseModel

from tasks.common.config import UserError


class UndeclaredRead(UserError):
    """A stage read a params key that its PARAMS do not list: whoever edited the stage fixes it."""


class StageView:
    """Attribute access to a params model (or one of its sections) limited to `allowed` keys.

    A listed key gives the real value, a whole section included; a section with only some keys
    listed gives another view; any other key raises UndeclaredRead.
    """

    __slots__ = ("_model", "_allowed", "_stage", "_path")

    def __init__(self, model: BaseModel, allowed: frozenset[str], stage: str, path: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str):
        field = type(self._model).model_fields.get(name)
        if field is None:  # a method: only those that cannot read past the view
            if name == "model_copy":
                return self._copy
            raise self._refused(self._path or "the whole params", f".{name}()")
        key = ".".join(filter(None, [self._path, field.alias or name]))
        value = getattr(self._model, name)
        if any(key == a or key.startswith(a + ".") for a in self._allowed):
            return value
        if any(a.startswith(key + ".") for a in self._allowed):
            return StageView(value, self._allowed, self._stage, key)
        raise self._refused(key)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("params are read-only")

    def _copy(self, update: dict | None = None, deep: bool = False) -> StageView:
        """model_copy, still limited: the keys it sets are the copy's own, not params.yaml's."""
        copied = self._model.model_copy(update=update, deep=deep)
        own = {".".join(filter(None, [self._path, key])) for key in update or {}}
        return StageView(copied, self._allowed | own, self._stage, self._path)

    def _refused(self, key: str, how: str = "") -> UndeclaredRead:
        return UndeclaredRead(f"{self._stage} reads {key}{how} of params.yaml, which its PARAMS (tasks/{self._stage}.py) "
                              "do not list: add it there, then run `make deps` so that dvc.yaml re-runs the stage "
                              "when it changes")

    def __repr__(self) -> str:
        return f"StageView({self._path or 'params'}, allowed={sorted(self._allowed)})"


def stage_view(params: BaseModel, declared: list[str], stage: str) -> StageView:
    return StageView(params, frozenset(declared), stage)
