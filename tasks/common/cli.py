"""The `python -m tasks.<stage>` entry point that DVC calls: params in, one line out."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from tasks.common.config import Params, UserError, load_params

# When set, a failing stage also writes its one-line reason here, so the flow can report it.
ERROR_FILE_ENV = "PIPELINE_STAGE_ERROR_FILE"


def run_stage(name: str, run: Callable[[Params, Path], dict]) -> None:
    """Load params.yaml, run the stage in the current folder, print its summary.

    A UserError (bad params, bad data, bad path) ends in one line on stderr and exit code 2.
    """
    try:
        result = run(load_params(), Path("."))
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        if os.environ.get(ERROR_FILE_ENV):
            Path(os.environ[ERROR_FILE_ENV]).write_text(str(err))
        sys.exit(2)
    print(f"{name}: " + json.dumps(result, default=str))
