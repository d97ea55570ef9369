"""The suite's rules (an area marker per test, a reason per slow test, --fail-on-skip) and its shared
fixtures: tiny image folders made in the test, params pointing at them, and the expensive real things
built once per session (a Prefect server, the trained project, a packaged Bento). docs/testing.md."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from flows.settings import FlowParams
from service.settings import ServiceParams
from tasks.common.config import parse_params
from tasks.common.threads import THREADS_ENV, cores, use_cores

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The test workers run side by side: each computes on its share of the cores, in its own process and
# in every process it starts (they inherit the variable), never on all of them.
os.environ[THREADS_ENV] = os.environ["OMP_NUM_THREADS"] = str(cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
import torch  # noqa: E402, F401  (loaded after tasks, which sets OMP_WAIT_POLICY first; use_cores sizes it)

use_cores()

# Every test belongs to one area (`pytest -m serving` runs one); pyproject.toml describes each.
AREAS = ("data", "labelling", "training", "evaluation", "serving", "monitoring", "ops", "pipeline")
SLOW_SECONDS = 60  # a test slower than this says why, in its slow marker's reason
# Under pytest-xdist (make test-all), the tests sharing a session fixture run in one worker, which builds
# it once: the trained project and the Prefect server it runs on; the packaged Bento.
XDIST_GROUPS = {"trained": "prefect", "prefect_server": "prefect", "packaged": "bento"}


def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true",
                     help="exit non-zero if any test was skipped (make test-all: every check must run)")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group markers added here
def pytest_collection_modifyitems(config, items):
    """Refuse a test without an area marker, or a slow marker without its reason; group the tests
    that share a session fixture."""
    problems = []
    for item in items:
        areas = [m.name for m in item.iter_markers() if m.name in AREAS]
        if len(set(areas)) != 1:
            problems.append(f"{item.nodeid}: needs exactly one area marker of {', '.join(AREAS)} (has {areas})")
        slow = item.get_closest_marker("slow")
        if slow is not None and not slow.kwargs.get("reason"):
            problems.append(f"{item.nodeid}: @pytest.mark.slow needs reason=\"what makes it slow\"")
        group = next((XDIST_GROUPS[f] for f in item.fixturenames if f in XDIST_GROUPS), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if problems:
        raise pytest.UsageError("\n".join(problems))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name the tests over SLOW_SECONDS that are not marked slow with a reason."""
    unmarked = [(report.duration, report.nodeid) for report in terminalreporter.stats.get("passed", [])
                if report.when == "call" and report.duration > SLOW_SECONDS
                and "slow" not in report.keywords]
    if unmarked:
        terminalreporter.section(f"over {SLOW_SECONDS} s without @pytest.mark.slow(reason=...)")
        for duration, nodeid in sorted(unmarked, reverse=True):
            terminalreporter.line(f"{duration:6.1f} s  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    """With --fail-on-skip, a skipped test fails the run (a missing program must be installed, not lost)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not session.config.getoption("--fail-on-skip") or reporter is None or hasattr(session.config, "workerinput"):
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"--fail-on-skip: {len(skipped)} test(s) skipped; install what their reasons name",
                            red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def write_image_set(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0) -> list[Path]:
    """Write `count` PNGs per class under root/<class>/; each class has its own colour pattern.

    Images of one class share a mean colour and differ by noise, so a model can learn them
    and no two files are byte-identical.
    """
    rng = np.random.default_rng(seed)
    written = []
    for k, (label, count) in enumerate(classes.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), dtype=np.float32)
        base[..., k % 3] = 200.0
        base[: size // 2, :, (k + 1) % 3] = 120.0 if k >= 3 else 0.0
        for i in range(count):
            noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            path = root / label / f"img_{i:03d}.png"
            Image.fromarray(noisy).save(path)
            written.append(path)
    return written


class AllParams(FlowParams, ServiceParams):
    """Every section of params.yaml: what the stages, the flows, the search and the service read."""


def make_params(**sections) -> AllParams:
    """Project params.yaml with the given sections overridden (dicts merge one level deep)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_params(raw, model=AllParams)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A three-class folder of 12 distinct 16x16 PNGs each, under tmp_path/images."""
    root = tmp_path / "images"
    write_image_set(root, {"cat": 12, "dog": 12, "fox": 12})
    return root


def write_splits(workdir: Path, counts: dict[str, int], classes=("cat", "dog", "fox"), size: int = 16) -> None:
    """Distinct images per split under workdir/images/<split>/<class>/, and data/split/<split>.csv
    (path, label, file) as the split stage writes them."""
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    for seed, (split, per_class) in enumerate(counts.items()):
        paths = write_image_set(workdir / "images" / split, {c: per_class for c in classes}, size=size, seed=seed)
        rows = [{"path": f"{p.parent.name}/{p.name}", "label": p.parent.name, "file": str(p.relative_to(workdir))}
                for p in paths]
        pd.DataFrame(rows).to_csv(workdir / f"data/split/{split}.csv", index=False)


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_prefect_server(home: Path):
    """A real Prefect server on a free loopback port with its own SQLite database under `home`, started
    the way the operations command starts it; this process's Prefect settings point at it meanwhile."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ops import environment, wait_for_api
    from flows.supervise import start, stop

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = start("prefect-server", [str(Path(sys.executable).parent / "prefect"), "server", "start",
                                      "--host", "127.0.0.1", "--port", str(port)], environment(home, url), home)
    try:
        wait_for_api(url, 120, server, home / "prefect-server.log")
        EventsWorker.drain_all()  # an events client made for another API must not be reused
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            EventsWorker.drain_all()
    finally:
        stop(server)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One server per session: tests that read back what they made filter by their own flow run,
    event time or deployment."""
    with running_prefect_server(tmp_path_factory.mktemp("ops")) as url:
        yield url


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prefect_server):
    """The real flow run once over the real dvc.yaml on a tiny image folder, with a local DVC remote and
    its own BentoML store (tests/projects.py). Read-only: tests that change it take a copy_trained()."""
    from flows.pipeline import pipeline
    from tests.projects import Trained, new_project

    base = tmp_path_factory.mktemp("trained")
    repo, store, remote = new_project(base / "repo"), base / "bentoml", base / "storage"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-q", "-d", "storage", str(remote)], cwd=repo,
                   check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(store))
        state = pipeline(repo_dir=str(repo), return_state=True)
    if not state.is_completed():
        pytest.fail(f"the flow failed on the tiny project: {state.message}")
    return Trained(repo, store, remote, state.result(), str(state.state_details.flow_run_id))


@pytest.fixture(scope="session")
def packaged(tmp_path_factory) -> dict:
    """The package stage run once on a fitted two-class bundle, in its own BentoML store (tests/serving.py).
    The serving tests add models to that store; none removes what another relies on."""
    from tests.serving import package_once

    return package_once(tmp_path_factory.mktemp("packaged"))


def photo(seed: int, size=(96, 64)) -> Image.Image:
    """A smooth random colour image: photo-like at the scale a perceptual hash looks at."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def near_copy(img: Image.Image) -> bytes:
    """Resized to half and re-encoded as JPEG: the commonest near-duplicate."""
    out = io.BytesIO()
    img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(out, "JPEG", quality=70)
    return out.getvalue()


def prefect_cli(api_url: str, *args: str, auth: str | None = None) -> subprocess.CompletedProcess:
    """The `prefect` command a user types, against api_url (with the API's basic auth when given)."""
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_AUTH_STRING"}
    env.update({"PREFECT_API_URL": api_url, "COLUMNS": "200", **({"PREFECT_API_AUTH_STRING": auth} if auth else {})})
    return subprocess.run([str(Path(sys.executable).parent / "prefect"), *args], capture_output=True, text=True,
                          env=env, timeout=120)
