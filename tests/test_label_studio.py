"""Label Studio for human review, against a real server on loopback started as the pipeline starts it
(tasks/labels/studio.py), through the REST API as a reviewer's browser would use it."""
from __future__ import annotations

import json
import stat
from datetime import datetime

import httpx
import pytest

from tasks.common.config import UserError
from tasks.labels.studio import credentials, is_running, running
from tasks.labels.studio_client import EXTRA_CHOICES, LabelStudio, project_classes
from tests.browser import CHROMIUM, chromium
from tests.conftest import free_port, write_image_set

# One worker under pytest-xdist runs them all, so the module's server starts once.
pytestmark = [pytest.mark.labelling, pytest.mark.slow(reason="starts a real Label Studio server"),
              pytest.mark.xdist_group("label_studio")]

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A Label Studio serving a tiny PNG folder (root/images/<class>/), its home beside it."""
    base = tmp_path_factory.mktemp("label_studio")
    write_image_set(base / "root" / "images", {c: 3 for c in CLASSES})
    with running(base / "home", base / "root", port=free_port()) as server:
        yield server


@pytest.fixture
def client(studio):
    with LabelStudio(studio.url, credentials(studio.home).api_key, studio.document_root) as ls:
        yield ls


@pytest.fixture
def api(studio):
    """The REST API with the admin's token, as a reviewer's browser or script reaches it."""
    token = credentials(studio.home).api_key
    with httpx.Client(base_url=studio.url, headers={"Authorization": f"Token {token}"}, timeout=30) as http:
        yield http


def items(kind="suspect", n=3):
    """n review items per class, each predicted as the next class; uncertain ones have no given label."""
    return [dict(key=f"{kind}-{c}-{i}", image=f"images/{c}/img_{i:03d}.png", kind=kind,
                 given_label=c if kind == "suspect" else None, prediction=CLASSES[(k + 1) % 3],
                 score=0.5 + i / 10, model_version="m1", probabilities={p: round(1 / 3, 3) for p in CLASSES})
            for k, c in enumerate(CLASSES) for i in range(n)]


def tasks_of(api, project_id):
    reply = api.get("/api/tasks", params={"project": project_id, "fields": "all", "page_size": 100})
    reply.raise_for_status()
    return reply.json()


def choose(api, task_id, *choices, cancelled=False):
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": list(choices)}}]
    reply = api.post(f"/api/tasks/{task_id}/annotations", json={"result": [] if cancelled else result,
                                                                 "was_cancelled": cancelled})
    assert reply.status_code == 201, reply.text


def test_server_credentials_and_health(studio):
    assert is_running(studio.url) and not is_running(f"http://127.0.0.1:{free_port()}")
    secrets_file = studio.home / "credentials.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    stored = json.loads(secrets_file.read_text())
    log = studio.log.read_text()
    assert stored["password"] not in log and stored["api_key"] not in log
    assert stored["password"] not in repr(credentials(studio.home))


def test_project_and_tasks_with_predictions_once(client, api):
    project = client.ensure_project("Review: sync", CLASSES)
    assert client.ensure_project("Review: sync", CLASSES) == project
    assert client.sync_tasks(project, items()) == 9
    assert client.sync_tasks(project, items()) == 0
    assert client.sync_tasks(project, items() + items("uncertain", 1)) == 3  # incremental: only the new keys

    listed = tasks_of(api, project)
    assert listed["total"] == 12 and listed["total_predictions"] == 12
    task = next(t for t in listed["tasks"] if t["data"]["key"] == "suspect-cat-2")
    (prediction,) = task["predictions"]
    assert prediction["result"][0]["value"] == {"choices": ["dog"]}
    assert prediction["score"] == pytest.approx(0.7) and prediction["model_version"] == "m1"
    storages = api.get("/api/storages/localfiles", params={"project": project}).json()
    assert len(storages) == 1

    config = api.get(f"/api/projects/{project}").json()["label_config"]
    assert project_classes(config) == CLASSES and all(f'"{c}"' in config for c in EXTRA_CHOICES)
    assert client.ensure_project("Review: sync", [*CLASSES, "owl"]) == project  # classes changed: config updated
    assert project_classes(api.get(f"/api/projects/{project}").json()["label_config"]) == [*CLASSES, "owl"]


def test_task_image_is_served(client, api, studio):
    project = client.ensure_project("Review: images", CLASSES)
    client.sync_tasks(project, items(n=1))
    task = tasks_of(api, project)["tasks"][0]
    reply = api.get(task["data"]["image"])
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.content == (studio.document_root / task["data"]["path"]).read_bytes()


def test_reviews_come_back(client, api, studio):
    project = client.ensure_project("Review: reviews", CLASSES)
    client.sync_tasks(project, items(n=1))
    ids = {t["data"]["key"]: t["id"] for t in tasks_of(api, project)["tasks"]}
    choose(api, ids["suspect-cat-0"], "dog")
    choose(api, ids["suspect-cat-0"], "cat")  # the latest review wins
    choose(api, ids["suspect-dog-0"], cancelled=True)  # skipped: no review
    choose(api, ids["suspect-fox-0"], "wolf")  # not a class: reported on the row, not raised

    reviews = {r["key"]: r for r in client.finished_reviews(project)}
    assert set(reviews) == {"suspect-cat-0", "suspect-fox-0"}
    cat = reviews["suspect-cat-0"]
    assert cat["choice"] == "cat" and cat["problem"] is None
    assert cat["image"] == "images/cat/img_000.png" and cat["kind"] == "suspect" and cat["given_label"] == "cat"
    assert cat["reviewer"] == credentials(studio.home).username and cat["model_version"] == "m1"
    assert cat["score"] == pytest.approx(0.5) and datetime.fromisoformat(cat["reviewed_at"])
    assert "wolf" in reviews["suspect-fox-0"]["problem"]


def test_bad_items_fail_in_one_line(client):
    project = client.ensure_project("Review: bad items", CLASSES)
    with pytest.raises(UserError, match="prediction one of the project's classes"):
        client.sync_tasks(project, [{**items(n=1)[0], "prediction": "owl"}])
    with pytest.raises(UserError, match="under the Label Studio document root"):
        client.sync_tasks(project, [{**items(n=1)[0], "image": "images/cat/missing.png"}])


def test_unreachable_server_and_wrong_key(studio):
    with LabelStudio(f"http://127.0.0.1:{free_port()}", "x" * 40, studio.document_root) as down:
        with pytest.raises(UserError, match="Label Studio is not reachable at http://127.0.0.1"):
            down.ensure_project("Review: down", CLASSES)
    with LabelStudio(studio.url, "0" * 40, studio.document_root) as wrong:
        with pytest.raises(UserError, match=r"refused the API key \(HTTP 401: Invalid token.\)"):
            wrong.finished_reviews(1)


def test_a_reviewer_sees_the_image_and_the_pre_annotated_class(client, api, studio, tmp_path):
    """The task page in headless Chromium, after logging in as the admin: the image is drawn and the
    model's class is already chosen. The screenshot is kept in the test's folder."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: sudo apt-get install chromium (.ci/run installs it)")
    project = client.ensure_project("Review: browser", CLASSES)
    client.sync_tasks(project, items(n=1))
    task = next(t for t in tasks_of(api, project)["tasks"] if t["data"]["key"] == "suspect-cat-0")
    creds = credentials(studio.home)
    with chromium() as page:
        page.goto(f"{studio.url}/user/login/")
        page.evaluate(f"""(() => {{
            document.querySelector('input[name=email]').value = {json.dumps(creds.username)};
            document.querySelector('input[name=password]').value = {json.dumps(creds.password)};
            document.querySelector('form').submit(); }})()""")
        page.wait_for("!location.pathname.startsWith('/user/login')")
        page.goto(f"{studio.url}/projects/{project}/data?task={task['id']}")
        drawn = page.wait_for("""(() => { const img = [...document.images].find(i => i.src.includes('local-files'));
                                  return img && img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0; })()""")
        checked = page.wait_for("""(() => [...document.querySelectorAll('input:checked')]
                                   .map(i => i.closest('label') ? i.closest('label').innerText.trim() : '')
                                   .filter(Boolean).join(','))()""")
        page.screenshot(tmp_path / "task.png")
    assert drawn == 16  # the 16 px PNG of images/cat/img_000.png
    assert checked.split("[")[0] == "dog", checked  # the prediction, pre-annotated ("dog[2]": 2 is its hotkey)
