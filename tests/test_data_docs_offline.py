"""Data Docs read offline: no page, nor the CSS/JS it loads, fetches anything from a host, and every
local link resolves inside the docs folder (tasks/data/data_docs_offline.py)."""
from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from tasks.data.data_docs_offline import CDN_FILES, NODE_MODULES, make_offline
from tasks.validate import run
from tests.conftest import make_params, write_image_set

pytestmark = pytest.mark.data

HOST = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+?)['\"]?\s*\)")
ATTR_URL = re.compile(r"\b(?:src|href)\s*=\s*['\"]([^'\"]*)['\"]")


class Links(HTMLParser):
    """A page's src/href values as (tag, value)."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.found += [(tag, value) for name, value in attrs if name in ("src", "href") and value]


def references(file: Path) -> list[tuple[str, str]]:
    """What a page or a stylesheet/script names: (tag, value); url() and script text count as 'load'."""
    text = file.read_text(errors="replace")
    found = [("load", ref) for ref in CSS_URL.findall(text)]
    if file.suffix == ".html":
        parser = Links()
        parser.feed(text)
        return found + parser.found
    return found + [("load", ref) for ref in ATTR_URL.findall(text)]


def local_target(file: Path, ref: str) -> Path | None:
    """The file a relative reference points at; None for in-page anchors and data: URIs."""
    path = unquote(re.split(r"[?#]", ref, maxsplit=1)[0])
    if not path or ref.startswith(("data:", "javascript:", "mailto:")):
        return None
    return (file.parent / path).resolve()


def loaded_files(docs: Path) -> list[Path]:
    """The pages, and the stylesheets and scripts in the docs folder that they load, transitively."""
    todo, seen = list(docs.rglob("*.html")), set()
    while todo:
        file = todo.pop()
        if file in seen or not file.is_file():
            continue
        seen.add(file)
        for tag, ref in references(file):
            target = None if HOST.match(ref) or tag == "a" else local_target(file, ref)
            if target and target.suffix in (".css", ".js") and target.is_relative_to(docs):
                todo.append(target)
    return sorted(seen)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """Data Docs built by the validate stage on a tiny three-class image set."""
    if not (NODE_MODULES / next(iter(CDN_FILES.values()))).is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm not found (make install fetches the Data Docs assets with it): sudo apt-get install npm, "
                        "then make install")
        pytest.fail("Data Docs assets missing: run make install")
    work = tmp_path_factory.mktemp("validate")
    write_image_set(work / "images", {"cat": 6, "dog": 6, "fox": 6})
    run(make_params(data={"root": str(work / "images")}), work)
    return (work / "reports/validate/data_docs").resolve()


def test_nothing_is_loaded_from_a_host(docs: Path):
    files = loaded_files(docs)
    remote = [f"{f.relative_to(docs)}: {ref}" for f in files for tag, ref in references(f)
              if HOST.match(ref) and tag != "a"]  # a link the reader follows is not loaded
    assert remote == []
    assert len([f for f in files if f.suffix == ".html"]) >= 5  # index, 2 suites, 2 validation results
    assert {f.suffix for f in files} >= {".css", ".js"}


def test_every_local_link_exists(docs: Path):
    pages = [f for f in loaded_files(docs) if f.suffix != ".js"]  # minified code has url( that is no link
    broken = [f"{f.relative_to(docs)}: {ref}" for f in pages for _, ref in references(f)
              if not HOST.match(ref) and (target := local_target(f, ref)) and not target.exists()]
    assert broken == []


def test_missing_assets_leave_cdn_links_and_say_how_to_install(tmp_path: Path, capsys):
    url = next(iter(CDN_FILES))
    page = tmp_path / "index.html"
    page.write_text(f'<script src="{url}"></script>')

    assert make_offline(tmp_path, node_modules=tmp_path / "node_modules") is False
    assert page.read_text() == f'<script src="{url}"></script>'
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and "make install" in warning
