"""The `python -m tasks.<stage>` entry point that DVC calls: params in, one line out."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from tasks.common.config import Params, UserError, load_params
from tasks.common.reads import stage_view
from tasks.common.threads import use_cores

# When set, a failing stage also writes its one-line reason here, so the flow can report it.
ERROR_FILE_ENV = "PIPELINE_STAGE_ERROR_FILE"


def run_stage(name: str, run: Callable[[Params, Path], dict], argv: list[str] | None = None) -> None:
    """Parse the command line (`-h` only), load params.yaml, run the stage in the current folder, print its summary.

    The help describes the stage with the first line of its module's docstring. A UserError (bad params,
    bad data, bad path) ends in one line on stderr and exit code 2.
    """
    module = sys.modules[run.__module__]
    argparse.ArgumentParser(
        prog=f"python -m tasks.{name}", description=module.__doc__.splitlines()[0],
        epilog="Reads params.yaml in the current folder; `dvc repro` runs it as the dvc.yaml stage of that name.",
    ).parse_args(argv)
    try:
        use_cores()  # never PyTorch's default of every core: processes side by side share them
        result = run(stage_view(load_params(), module.PARAMS, name), Path("."))  # only what PARAMS lists
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        if os.environ.get(ERROR_FILE_ENV):
            Path(os.environ[ERROR_FILE_ENV]).write_text(str(err))
        sys.exit(2)
    print(f"{name}: " + json.dumps(result, default=str))
