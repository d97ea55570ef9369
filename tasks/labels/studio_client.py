"""A review project in Label Studio through its REST API: the project, its tasks, the finished reviews.

Plain httpx against the documented REST API, not label-studio-sdk: the SDK pulls
opencv-python-headless, which would downgrade the project's numpy. Every call sends the admin's
legacy API token (`Authorization: Token <key>`, studio.py enables it); every failure a user can cause
(server down, wrong key, bad item) ends in one UserError line.

A task's image is a path relative to the server's document root, shown through
`/data/local-files/?d=<path>`. Label Studio serves such a file only to projects with a local-files
storage whose folder holds it, so each top-level folder of the images gets one storage (never
synced: the tasks are imported here, with the model's prediction as a pre-annotation).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import httpx

from tasks.common.config import UserError

NONE_OF_THESE = "none of these"  # the image shows something, but none of the classes
UNUSABLE = "unusable"  # the image cannot be judged (blank, corrupt, cut off): reject it
EXTRA_CHOICES = (NONE_OF_THESE, UNUSABLE)
FROM_NAME, TO_NAME = "label", "image"
KINDS = ("suspect", "uncertain", "audit")
PAGE = 500


def label_config(classes: list[str]) -> str:
    """Single-choice image classification over the classes plus the two reject choices; the header
    tells the reviewer why the image is asked about."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in [*classes, *EXTRA_CHOICES])
    return (f'<View><Header value="$note"/><Image name="{TO_NAME}" value="$image" zoom="true"/>'
            f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" required="true" showInLine="true">'
            f"{choices}</Choices></View>")


def project_classes(config: str) -> list[str]:
    """The classes of a labelling config made by label_config, in order."""
    choices = ET.fromstring(config).find(f".//Choices[@name='{FROM_NAME}']")
    values = [] if choices is None else [c.get("value") for c in choices.iter("Choice")]
    return [v for v in values if v not in EXTRA_CHOICES]


class LabelStudio:
    """One Label Studio server, reached at url with an API key; images are paths under document_root."""

    def __init__(self, url: str, api_key: str, document_root: Path, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.document_root = Path(document_root).resolve()
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {api_key}"}, timeout=timeout)

    def __enter__(self) -> "LabelStudio":
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def ensure_project(self, title: str, classes: list[str]) -> int:
        """The id of the project titled `title`, created on first use; its config is brought up to date
        when the classes changed (Label Studio refuses to drop a class that reviews already chose)."""
        if not classes or len(set(classes)) != len(classes) or set(classes) & set(EXTRA_CHOICES) or not all(classes):
            raise UserError(f"the review classes must be distinct non-empty names other than "
                            f"{' and '.join(EXTRA_CHOICES)} (got {classes})")
        config = label_config(classes)
        found = [p for p in self._pages("/api/projects", {"title": title}) if p["title"] == title]
        if not found:
            return self._call("POST", "/api/projects", json={"title": title, "label_config": config})["id"]
        project = min(found, key=lambda p: p["id"])
        if project["label_config"] != config:
            self._call("PATCH", f"/api/projects/{project['id']}", json={"label_config": config})
        return project["id"]

    def sync_tasks(self, project_id: int, items: Iterable[dict]) -> int:
        """Adds a task, with the model's prediction as its pre-annotation, for each item whose key the
        project does not have yet; returns how many were added. Calling it again adds nothing."""
        classes = self._classes(project_id)
        known = {t["data"].get("key") for t in self._tasks(project_id, "task_only")}
        new: dict[str, dict] = {}
        for item in items:
            if item["key"] not in known:
                new.setdefault(item["key"], item)
        tasks = [self._task(item, classes) for item in new.values()]
        if tasks:
            self._ensure_storages(project_id, {PurePosixPath(t["data"]["path"]).parts[0] for t in tasks})
        for start in range(0, len(tasks), PAGE):  # each batch is one transaction; a rerun resumes by key
            self._call("POST", f"/api/projects/{project_id}/import", json=tasks[start:start + PAGE])
        return len(tasks)

    def finished_reviews(self, project_id: int) -> list[dict]:
        """One row per task with a submitted (not skipped) review; the latest review wins.

        A choice outside the project's classes and the two reject choices (a config edited in the UI)
        is not raised: the row says so in `problem` (None when the review is usable), so one odd review
        does not block the others.
        """
        allowed = {*self._classes(project_id), *EXTRA_CHOICES}
        users = self._call("GET", "/api/users")
        emails = {u["id"]: u["email"] for u in (users["results"] if isinstance(users, dict) else users)}
        reviews = []
        for task in self._tasks(project_id, "all"):
            done = [a for a in task["annotations"] if not a["was_cancelled"]]
            if not done or "key" not in task["data"]:
                continue
            latest = max(done, key=lambda a: (a["updated_at"], a["id"]))
            picked = [c for r in latest["result"] if r.get("from_name") == FROM_NAME
                      for c in r.get("value", {}).get("choices", [])]
            choice = picked[0] if len(picked) == 1 else None
            problem = (None if choice in allowed else
                       f"review {latest['id']} chose {picked} instead of one of the project's choices")
            data = task["data"]
            reviews.append({"key": data["key"], "image": data["path"], "kind": data["kind"],
                            "given_label": data["given_label"], "choice": choice,
                            "reviewer": emails.get(latest["completed_by"]), "reviewed_at": latest["updated_at"],
                            "model_version": data["model_version"], "score": data["score"], "problem": problem,
                            "prediction": data.get("prediction"), "served_at": data.get("served_at", "")})
        return reviews

    def _task(self, item: dict, classes: list[str]) -> dict:
        key, kind, prediction = item["key"], item["kind"], item["prediction"]
        if kind not in KINDS or prediction not in classes:
            raise UserError(f"review item {key!r}: kind must be one of {KINDS} and prediction one of the project's "
                            f"classes {classes} (got {kind!r}, {prediction!r})")
        path = PurePosixPath(item["image"])
        if path.is_absolute() or ".." in path.parts or len(path.parts) < 2 or not (self.document_root / path).is_file():
            raise UserError(f"review item {key!r}: image {item['image']!r} must be a file in a folder under the "
                            f"Label Studio document root {self.document_root}, given relative to it")
        given, score = item.get("given_label"), float(item["score"])
        note = f"{kind}: labelled {given!r}, model says {prediction!r} ({score:.2f})" if given else \
            f"{kind}: model says {prediction!r} ({score:.2f})"
        data = {"image": f"/data/local-files/?d={quote(str(path))}", "path": str(path), "key": key, "kind": kind,
                "given_label": given, "prediction": prediction, "score": score,
                "model_version": item["model_version"], "note": note}
        if item.get("probabilities") is not None:
            data["probabilities"] = item["probabilities"]
        if item.get("served_at"):
            data["served_at"] = item["served_at"]
        result = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [prediction]}}]
        return {"data": data, "predictions": [{"model_version": item["model_version"], "score": score,
                                               "result": result}]}

    def _ensure_storages(self, project_id: int, folders: set[str]) -> None:
        """A local-files storage for each top-level image folder not yet covered (the document root
        itself is refused by Label Studio)."""
        have = [Path(s["path"]) for s in self._call("GET", "/api/storages/localfiles", params={"project": project_id})]
        for folder in sorted(folders):
            path = self.document_root / folder
            if not any(path == p or p in path.parents for p in have):
                self._call("POST", "/api/storages/localfiles",
                           json={"project": project_id, "path": str(path), "title": f"images: {folder}"})

    def _classes(self, project_id: int) -> list[str]:
        return project_classes(self._call("GET", f"/api/projects/{project_id}")["label_config"])

    def _tasks(self, project_id: int, fields: str) -> Iterator[dict]:
        """Every task of the project, page by page (fields: task_only, or all for reviews and predictions)."""
        page, seen = 1, 0
        while True:
            reply = self._call("GET", "/api/tasks", params={"project": project_id, "fields": fields,
                                                             "page": page, "page_size": PAGE})
            yield from reply["tasks"]
            seen += len(reply["tasks"])
            if not reply["tasks"] or seen >= reply["total"]:
                return
            page += 1

    def _pages(self, path: str, params: dict) -> Iterator[dict]:
        page = 1
        while True:
            reply = self._call("GET", path, params={**params, "page": page, "page_size": 100})
            yield from reply["results"]
            if not reply.get("next"):
                return
            page += 1

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise UserError(f"Label Studio is not reachable at {self.url} ({type(err).__name__}): "
                            "start it, or fix the URL") from None
        if reply.status_code in (401, 403):
            detail = _detail(reply)
            fix = ("turn legacy API tokens on in Label Studio (Organization > API Tokens Settings)"
                   if "legacy" in detail else "use the key the server's admin was created with "
                   "(LABEL_STUDIO_API_KEY, or credentials.json in its home)")
            raise UserError(f"Label Studio at {self.url} refused the API key "
                            f"(HTTP {reply.status_code}: {detail}): {fix}")
        if reply.is_error:
            raise UserError(f"Label Studio at {self.url}: {method} {path} failed "
                            f"(HTTP {reply.status_code}: {_detail(reply)})")
        return reply.json() if reply.content else None


def _detail(reply: httpx.Response) -> str:
    """Label Studio's own words about a failed call, on one line."""
    try:
        body = reply.json()
        text = str(body.get("validation_errors") or body.get("detail") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        text = reply.text
    return " ".join(text.split())[:300]
