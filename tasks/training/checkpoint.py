"""Training checkpoints: `checkpoints/last.pt` after every epoch, `checkpoints/best.pt` at the best.

last.pt holds everything a run needs to go on (weights, optimizer, schedule, EMA, early stopping,
history) and a fingerprint of what defines the run: train params, the split files and the code the
train stage runs. A run that was killed resumes from it when started again with the same
fingerprint; other params, data or code start afresh. Random streams need no saving: each epoch
seeds its own from (seed, epoch, process). Files are plain tensors and lists, loaded with
`weights_only=True`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from tasks.common.code_deps import PROJECT_ROOT, import_closure
from tasks.common.files import atomic_path, digest, sha256

CHECKPOINT_DIR = Path("checkpoints")
LAST = "last.pt"
BEST = "best.pt"
TRAIN_STAGE = PROJECT_ROOT / "tasks" / "train.py"


def fingerprint(train_params: dict, split_files: list[Path]) -> str:
    """A digest of everything that makes two runs the same run: params, split files and the code
    (the train stage and every project module it imports: a resumed run must not mix two programs)."""
    code = [sha256(path) for path in import_closure([TRAIN_STAGE])]
    return digest([train_params] + [sha256(path) for path in split_files] + code)


def save(state: dict, directory: Path, name: str) -> None:
    """Write atomically: a run killed while saving leaves the previous checkpoint intact."""
    with atomic_path(directory / name) as partial:
        torch.save(state, partial)


def resumable(directory: Path, run_fingerprint: str) -> dict | None:
    """The last state of a run with this fingerprint, or None.

    A finished one is returned too: a run killed while writing the bundle then only redoes that.
    A file that cannot be read is reported and then ignored: the run starts afresh and replaces it.
    """
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  truncated, not a checkpoint, or from an incompatible version
        reason = (str(err).splitlines() or [""])[0].split(". ")[0][:160]  # the first sentence says what is wrong
        print(f"train: {path} cannot be read ({type(err).__name__}: {reason}); starting afresh", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != run_fingerprint:
        return None
    return state
